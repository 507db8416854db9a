"""Batch records: what each batch offered to training was, where it came from and what became of it.

One JSON file per batch, `state_dir/batches/<fingerprint>.json`. data_checks/provenance.py builds the
records; the registry's lineage view reads them; approvals may mark one approved. A batch offered again (the
same content: the same fingerprint) gets one more entry in `offers`; earlier offers are never lost. Records
hold names, counts, times, paths and verdicts, never a data value (and so never a PII value).

The record: fingerprint, name, rows, columns, time_range ({start, end} or null), first_offered,
last_offered, and, from the latest offer, source, status (accepted, quarantined; approved once approved),
validation ({success, summary, evaluated, failed, report, gx_report}) and quarantine (folder or null);
approval (null until approved); offers (every offer, oldest first: id, at, source, status, validation,
quarantine, flow_run_id, model ({name, version, run_id} once a version was trained on it)).
"""

from __future__ import annotations

import fcntl
import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from driftloop.config import Config
from driftloop.errors import DataError
from driftloop.state import batches_dir, write_atomic

STATUSES = ("accepted", "quarantined", "approved")
# Fingerprints are hex digests (driftloop.data.fingerprint); anything else must not become a file name.
FINGERPRINT = re.compile(r"[0-9a-f]{8,64}")
# Readers and writers of every record take this lock: two offers of one batch at once both land.
LOCK_FILE = ".lock"


def batch_path(config: Config, fingerprint: str) -> Path:
    """The record file of a batch; DataError when `fingerprint` is not a fingerprint."""
    if not FINGERPRINT.fullmatch(fingerprint):
        raise DataError(f"{fingerprint!r} is not a batch fingerprint (8 to 64 lowercase hex digits)")
    return batches_dir(config) / f"{fingerprint}.json"


@contextmanager
def _locked(config: Config) -> Iterator[None]:
    """Hold the batch records' lock (an advisory flock: released when the process dies)."""
    with open(batches_dir(config) / LOCK_FILE, "a", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _load(path: Path) -> dict | None:
    """A record file's content, or None when it is missing or not a record (hand-edited, truncated)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) and "fingerprint" in record else None


def _write(config: Config, record: dict) -> None:
    """Write a record atomically: a reader sees the old record or the new one, never half of one."""
    write_atomic(batch_path(config, record["fingerprint"]), json.dumps(record, indent=2, default=str))


def read_batch(config: Config, fingerprint: str) -> dict | None:
    """The record of a batch, or None when there is none (never offered here, or the state dir was wiped)."""
    return _load(batch_path(config, fingerprint))


def list_batches(config: Config) -> list[dict]:
    """Every batch record, in the order they were first offered."""
    records = [r for r in (_load(p) for p in batches_dir(config).glob("*.json")) if r is not None]
    return sorted(records, key=lambda r: str(r.get("first_offered", "")))


def record_offer(config: Config, batch: dict, offer: dict) -> dict:
    """Add one offer to a batch's record (created on the first offer) and return the record.

    `batch`: fingerprint, name, rows, columns, time_range. `offer`: id, at, source, status, validation,
    quarantine, flow_run_id. The latest offer's source, status, validation and quarantine are copied to the top
    of the record, so that it reads without walking the offers.
    """
    if offer["status"] not in STATUSES:
        raise ValueError(f"batch status {offer['status']!r} is not one of {', '.join(STATUSES)}")
    with _locked(config):
        record = read_batch(config, batch["fingerprint"]) or {"first_offered": offer["at"], "approval": None,
                                                              "offers": []}
        record.update(batch)
        record["offers"].append(offer)
        record.update({key: offer.get(key) for key in ("source", "status", "validation", "quarantine")})
        record["last_offered"] = offer["at"]
        _write(config, record)
    return record


def update_batch(config: Config, fingerprint: str, change: Callable[[dict], None]) -> dict:
    """Apply `change` to a batch's record in place, under the lock, and write it; DataError when there is none.

    For what happens to a batch after it was offered: a version trained on it, an approval.
    """
    with _locked(config):
        record = read_batch(config, fingerprint)
        if record is None:
            raise DataError(f"no record of batch {fingerprint} under {batches_dir(config)}")
        change(record)
        _write(config, record)
    return record


def note_model(config: Config, fingerprint: str, offer_id: str, model: dict) -> dict:
    """Record on an offer the model version trained on it ({name, version, run_id})."""

    def add(record: dict) -> None:
        for offer in record["offers"]:
            if offer.get("id") == offer_id:
                offer["model"] = model

    return update_batch(config, fingerprint, add)
