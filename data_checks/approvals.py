"""A person's approval of a batch the governance checks stopped: who, when, why, and which findings it overrides.

One JSON file per batch, `state_dir/approvals/<fingerprint>.json`, written atomically. The governance gate
(flows/governance.py) honours it the next time the same batch (the same fingerprint) is offered, for the checks
it names and only those a person may override (data_checks.findings.OVERRIDABLE_CHECKS).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from driftloop.batches import FINGERPRINT
from driftloop.config import Config
from driftloop.errors import DataError
from driftloop.state import state_path, write_atomic

APPROVALS = "approvals"  # the folder under state_dir


@dataclass(frozen=True)
class Approval:
    """One approval: the batch, who approved it and when, why, and the findings it overrides."""

    fingerprint: str
    who: str
    at: str
    reason: str
    overrides: list[str]  # check names, e.g. guard.drift
    batch: str = ""  # the quarantine entry it was given for
    findings: list[str] = field(default_factory=list)  # the overridden findings' reasons, as they read then

    def to_json(self) -> dict:
        """The approval as stored and as `driftloop approve --json` prints it."""
        return asdict(self)


def approval_path(config: Config, fingerprint: str) -> Path:
    """Where a batch's approval lives (the folder is created by save_approval); DataError when `fingerprint` is not
    a fingerprint."""
    if not FINGERPRINT.fullmatch(fingerprint):
        raise DataError(f"{fingerprint!r} is not a batch fingerprint (8 to 64 lowercase hex digits)")
    return Path(config.state_dir).resolve() / APPROVALS / f"{fingerprint}.json"


def save_approval(config: Config, approval: Approval) -> Path:
    """Write the approval atomically (a reader sees the old one or the new one); a later one replaces it."""
    path = state_path(config, APPROVALS, f"{approval.fingerprint}.json")
    write_atomic(path, json.dumps(approval.to_json(), indent=2))
    return path


def find_approval(config: Config, fingerprint: str) -> Approval | None:
    """The batch's approval, or None (none given, or a file that is not an approval: it approves nothing)."""
    try:
        raw = json.loads(approval_path(config, fingerprint).read_text(encoding="utf-8"))
        return Approval(fingerprint=str(raw["fingerprint"]), who=str(raw["who"]), at=str(raw["at"]),
                        reason=str(raw.get("reason", "")), overrides=[str(c) for c in raw.get("overrides", [])],
                        batch=str(raw.get("batch", "")), findings=[str(f) for f in raw.get("findings", [])])
    except (OSError, json.JSONDecodeError, KeyError, TypeError, DataError):
        return None
