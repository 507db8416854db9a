"""The bearer tokens of the admin endpoints and of POST /labels: where they come from, checking them without leaking
timing.

Two tokens, not one: whoever labels (a labelling service) controls the training labels, but must not be able to
move the champion; an operator's admin token need not be handed to that service.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from driftloop.config import Config
from driftloop.errors import ConfigError
from driftloop.state import state_path

TOKEN_ENV = "DRIFTLOOP_ADMIN_TOKEN"
LABELS_TOKEN_ENV = "DRIFTLOOP_LABELS_TOKEN"


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
    return _token(TOKEN_ENV, "serving.admin_token_file", config.serving.admin_token_file, default_token_file(config))


def labels_token(config: Config) -> str:
    """POST /labels' token: $DRIFTLOOP_LABELS_TOKEN, else serving.labels_token_file, else
    state_dir/serving/labels.token (created, mode 0600, on first start, like the admin token)."""
    return _token(LABELS_TOKEN_ENV, "serving.labels_token_file", config.serving.labels_token_file,
                  state_path(config, "serving", "labels.token"))


def labels_auth(config: Config) -> dict[str, str]:
    """The Authorization header a client of POST /labels sends (the demo and the tests use it)."""
    return {"Authorization": f"Bearer {labels_token(config)}"}


def token_principal(name: str, token: str) -> str:
    """Who a token holder is in the label audit trail: the token's name and a short digest (never the token), so a
    rotated token shows as a different principal."""
    return f"{name}:{hashlib.sha256(token.encode()).hexdigest()[:12]}"


def _token(env: str, key: str, configured: Path | None, default: Path) -> str:
    """A token from the environment, a configured file, or the default file (created when missing)."""
    from_env = os.environ.get(env, "").strip()
    if from_env:
        return from_env
    path = Path(configured) if configured is not None else default
    if configured is None:
        _create_token_file(path)
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as error:
        raise ConfigError(f"{key}: cannot read {path} ({error.strerror}); create it with a token, or set {env}"
                          ) from None
    if not token:
        raise ConfigError(f"{key}: {path} is empty; write a token into it, or set {env}")
    return token


def authorized(header: str | None, token: str) -> bool:
    """True if an Authorization header is exactly 'Bearer <token>' (compared in constant time)."""
    if not header:
        return False
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())
