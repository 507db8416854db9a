"""The admin endpoints' bearer token: where it comes from, and checking it without leaking timing."""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

from driftloop.config import Config
from driftloop.errors import ConfigError
from driftloop.state import state_path

TOKEN_ENV = "DRIFTLOOP_ADMIN_TOKEN"


def default_token_file(config: Config) -> Path:
    """state_dir/serving/admin.token: used when serving.admin_token_file is not set."""
    return state_path(config, "serving", "admin.token")


def _create_token_file(path: Path) -> None:
    """Write a fresh random token readable by its owner only; a file another process just wrote is kept."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(secrets.token_urlsafe(32) + "\n")


def admin_token(config: Config) -> str:
    """The token: $DRIFTLOOP_ADMIN_TOKEN, else serving.admin_token_file, else state_dir/serving/admin.token.

    The last one is created (mode 0600) on first start; a configured file must exist and hold a token.
    """
    from_env = os.environ.get(TOKEN_ENV, "").strip()
    if from_env:
        return from_env
    configured = config.serving.admin_token_file
    path = Path(configured) if configured is not None else default_token_file(config)
    if configured is None:
        _create_token_file(path)
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as error:
        raise ConfigError(f"serving.admin_token_file: cannot read {path} ({error.strerror}); create it with a "
                          f"token, or set {TOKEN_ENV}") from None
    if not token:
        raise ConfigError(f"serving.admin_token_file: {path} is empty; write a token into it, or set {TOKEN_ENV}")
    return token


def authorized(header: str | None, token: str) -> bool:
    """True if an Authorization header is exactly 'Bearer <token>' (compared in constant time)."""
    if not header:
        return False
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())
