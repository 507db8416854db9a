"""Personal data on its way out of the raw data: declared PII columns, and PII-looking text anywhere.

Every place that logs, reports or stores rows outside the raw data (the prediction log, the registry's reference)
passes them through a `PiiPolicy`: the columns under data.pii are dropped, or (data.pii_policy: hash) each value is
replaced by its HMAC-SHA256 under a secret key, so equal values stay joinable across files and runs while a
dictionary of likely values (tail numbers, e-mail addresses) cannot reverse them without the key. The key is
$DRIFTLOOP_PII_KEY, else state_dir/secrets/pii.key, created readable by its owner only on first use.

`PII_PATTERNS` / `redact` recognise values that look like e-mail addresses or phone numbers in any text column:
validation flags such columns (data_checks) and no report ever quotes such a value.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from driftloop.config import Config
from driftloop.errors import ConfigError
from driftloop.state import state_path

PII_KEY_ENV = "DRIFTLOOP_PII_KEY"
KEY_FILE = ("secrets", "pii.key")
KEY_BYTES = 32  # of randomness in a generated key (hex-encoded in the file)
MIN_KEY_CHARS = 16  # a shorter key could be guessed along with the values

# Kinds of personal data free text must not hold unless its column is declared PII: the plural the reasons name,
# and a regular expression searched for in each value (GX runs them with pandas' str.contains). Phone numbers are
# an international number (+, country code, 7 to 14 more digits with optional separators) or the North American
# 3-3-4 form with separators; dates, times, airport and carrier codes and plain numbers do not match.
# Every repetition is bounded (RFC 5321: local part <= 64, domain labels <= 63 characters): with an unbounded
# local part, a search tries every start position to the end of the value, and a 100 kB value takes minutes.
PII_PATTERNS: dict[str, str] = {
    "e-mail addresses": r"[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})*\.[A-Za-z]{2,63}",
    "phone numbers": r"\+\d{1,3}[ .-]?\(?\d\)?(?:[ .-]?\d){6,13}\b|\(?\b\d{3}\)?[ .-]?\d{3}[ .-]\d{4}\b",
}
_COMPILED = {kind: re.compile(pattern) for kind, pattern in PII_PATTERNS.items()}
REDACTED = "[redacted: looks like {kind}]"


def pii_kind(value: object) -> str | None:
    """The PII kind (a key of PII_PATTERNS) a text value looks like, or None."""
    if not isinstance(value, str):
        return None
    return next((kind for kind, pattern in _COMPILED.items() if pattern.search(value)), None)


def redact(value: object) -> object:
    """`value`, or a placeholder naming its kind when it looks like an e-mail address or phone number."""
    kind = pii_kind(value)
    return value if kind is None else REDACTED.format(kind=kind)


@dataclass(frozen=True)
class PiiPolicy:
    """What happens to the PII columns of rows leaving the raw data: dropped (key None) or keyed-hashed."""

    columns: frozenset[str]
    key: bytes | None = None

    @classmethod
    def dropping(cls, columns: object) -> PiiPolicy:
        """Drop these columns (the policy when only column names are known)."""
        return cls(frozenset(columns))  # type: ignore[arg-type]

    def value(self, value: object) -> str | None:
        """The keyed hash of one value (hex); a missing value stays missing."""
        assert self.key is not None
        if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA or value is pd.NaT:
            return None
        return hmac.new(self.key, canonical_text(value).encode("utf-8"), hashlib.sha256).hexdigest()

    def row(self, row: Mapping[str, object]) -> dict[str, object]:
        """One row (a dict) with its PII keys dropped or hashed."""
        if self.key is None:
            return {k: v for k, v in row.items() if k not in self.columns}
        return {k: self.value(v) if k in self.columns else v for k, v in row.items()}

    def frame(self, frame: pd.DataFrame) -> pd.DataFrame:
        """A copy of `frame` with its PII columns dropped or hashed."""
        present = [c for c in frame.columns if c in self.columns]
        if self.key is None:
            return frame.drop(columns=present)
        return frame.assign(**{c: frame[c].map(self.value).astype("string") for c in present})


def canonical_text(value: object) -> str:
    """The text a value is hashed as: 7, 7.0 and "7" are one value (files and JSON type numbers differently)."""
    if hasattr(value, "item"):  # numpy scalars
        value = value.item()  # type: ignore[union-attr]
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def pii_policy(config: Config) -> PiiPolicy:
    """The config's policy for its data.pii columns (reads or creates the key when it hashes)."""
    columns = frozenset(config.data.pii)
    if config.data.pii_policy == "drop" or not columns:
        return PiiPolicy(columns)
    return PiiPolicy(columns, pii_key(config))


def pii_key(config: Config) -> bytes:
    """The hashing key: $DRIFTLOOP_PII_KEY, else state_dir/secrets/pii.key (created, mode 0600, on first use)."""
    from_env = os.environ.get(PII_KEY_ENV, "").strip()
    if from_env:
        if len(from_env) < MIN_KEY_CHARS:
            raise ConfigError(f"${PII_KEY_ENV}: the PII key must be at least {MIN_KEY_CHARS} characters long")
        return from_env.encode("utf-8")
    path = state_path(config, *KEY_FILE)
    _create_key_file(path)
    try:
        key = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read the PII key ({error}); set ${PII_KEY_ENV} instead") from None
    if len(key) < MIN_KEY_CHARS:
        raise ConfigError(f"{path}: the PII key must be at least {MIN_KEY_CHARS} characters long; delete the file "
                          "to have a new one created (hashes made with the old key no longer join)")
    return key.encode("utf-8")


def _create_key_file(path: Path) -> None:
    """Write a fresh random key readable by its owner only, unless one exists.

    Written aside and hard-linked into place: another process never reads a half-written key, and of two
    processes creating it at once, both end up with the one that was linked first.
    """
    if path.exists():
        return
    partial = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(secrets.token_hex(KEY_BYTES) + "\n")
    try:
        os.link(partial, path)
    except FileExistsError:
        pass
    finally:
        partial.unlink()
