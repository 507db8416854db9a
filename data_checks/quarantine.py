"""Keep a batch that failed validation or governance aside, with its reasons, so it can be inspected, replayed or
approved."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa

from driftloop.batches import update_batch
from driftloop.config import Config
from driftloop.data_checks.approvals import Approval, find_approval, save_approval
from driftloop.data_checks.findings import Finding, blocking
from driftloop.data_checks.report_html import GX_PAGE_SUFFIX
from driftloop.data_checks.validate import ValidationReport, batch_fingerprint, batch_label
from driftloop.errors import DataError
from driftloop.state import quarantine_dir

REPORT_JSON = "report.json"
REPORT_HTML = "report.html"


def quarantine(frame: pd.DataFrame, report: ValidationReport, config: Config, name: str,
               findings: Sequence[Finding] = ()) -> Path:
    """Write the batch, report.json and the HTML report under quarantine/<UTC time>-<name>-<fingerprint>/.

    `findings`: what the governance checks found (a batch that passed validation and is stopped by them); their
    reasons follow validation's in `reasons`, and report.json keeps them whole under `findings`.

    The batch is kept as it came (it is the raw data, PII included, under the state dir); the
    report files hold only what validation saw, which never includes a PII column.
    """
    when = datetime.now(UTC)
    folder = quarantine_dir(config) / batch_label(frame, name, when)
    folder.mkdir(parents=True, exist_ok=True)
    data_file = write_batch(frame, folder)
    html = copy_html(report.report, folder)
    record = {
        **report.to_json(),
        "report": str(html) if html else str(report.report),
        "name": name,
        "time": when.isoformat(),
        "fingerprint": batch_fingerprint(frame),
        "data": data_file.name,
        "summary": governance_summary(findings) if blocking(list(findings)) else report.summary(),
        "reasons": report.reasons() + [f.line() for f in findings if f.blocking],
        "findings": [f.to_json() for f in findings],
    }
    # report.json is written last and atomically: a folder with it is a complete quarantine entry.
    partial = folder / (REPORT_JSON + ".partial")
    partial.write_text(json.dumps(record, indent=2), encoding="utf-8")
    partial.replace(folder / REPORT_JSON)
    return folder


def write_batch(frame: pd.DataFrame, folder: Path) -> Path:
    """The batch as Parquet; as CSV when Parquet cannot hold it (a column mixing numbers and text)."""
    target = folder / "data.parquet"
    try:
        frame.to_parquet(target, index=False)
        return target
    except (pa.ArrowException, ValueError, TypeError):
        # Failed batches are often exactly the ones with mixed-type columns that Arrow refuses.
        target.unlink(missing_ok=True)
        target = folder / "data.csv"
        frame.to_csv(target, index=False)
        return target


def copy_html(report: Path, folder: Path) -> Path | None:
    """Copy the HTML report (and GX's page beside it, under its own name so the link works)."""
    if not report.is_file():
        return None
    copy = folder / REPORT_HTML
    shutil.copy2(report, copy)
    gx_page = report.with_name(report.name.removesuffix(".html") + GX_PAGE_SUFFIX)
    if gx_page.is_file():
        shutil.copy2(gx_page, folder / gx_page.name)
    return copy


def list_quarantine(config: Config) -> list[dict]:
    """Quarantined batches, oldest first: name, path, time, rows and reasons of each, then the batch's
    fingerprint, the governance findings (JSON) and whether a person approved the batch since."""
    entries = []
    for folder in sorted(p for p in quarantine_dir(config).iterdir() if p.is_dir()):
        try:
            record = json.loads((folder / REPORT_JSON).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue  # still being written, or not ours: report.json is written last
        fingerprint = str(record.get("fingerprint") or "")
        entries.append({"name": record.get("name"), "path": str(folder), "time": record.get("time"),
                        "rows": record.get("rows"), "reasons": record.get("reasons", []),
                        "fingerprint": fingerprint, "validation_passed": bool(record.get("success")),
                        "findings": record.get("findings", []),
                        "approved": bool(fingerprint) and find_approval(config, fingerprint) is not None})
    return entries


def governance_summary(findings: Sequence[Finding]) -> str:
    """One line: how many governance checks stop the batch, and why."""
    stopping = blocking(list(findings))
    return f"{len(stopping)} governance check(s) failed: " + "; ".join(f.line() for f in stopping)


def find_quarantined(config: Config, batch: str) -> dict:
    """The latest quarantine entry whose folder name or batch fingerprint is `batch`; DataError naming where to
    look when there is none."""
    matches = [e for e in list_quarantine(config) if batch in (Path(e["path"]).name, e["fingerprint"])]
    if not matches:
        raise DataError(f"no quarantined batch {batch!r} under {quarantine_dir(config)}: give an entry's folder name "
                        "or its batch fingerprint (`driftloop quarantine list` shows them)")
    return matches[-1]


def approve_batch(config: Config, batch: str, who: str, reason: str) -> Approval:
    """Record a person's approval of a quarantined batch: its blocking findings no longer stop it when it is offered
    again. Refused (DataError) when validation failed or a finding no approval may override stops it."""
    entry = find_quarantined(config, batch)
    name = Path(entry["path"]).name
    if not entry["validation_passed"]:
        raise DataError(f"batch {name} failed validation ({'; '.join(entry['reasons'][:3])}): an approval cannot "
                        "override a failed validation; fix the data and offer it again")
    findings = [Finding.from_json(raw) for raw in entry["findings"]]
    stopping = blocking(findings)
    fixed = [f for f in stopping if not f.overridable]
    if fixed:
        raise DataError(f"batch {name}: {'; '.join(f.line() for f in fixed)}; an approval cannot override "
                        f"{', '.join(sorted({f.check for f in fixed}))}: fix the data and offer it again")
    if not stopping:
        raise DataError(f"batch {name} has no finding an approval could override")
    approval = Approval(fingerprint=entry["fingerprint"], who=who, at=datetime.now(UTC).isoformat(timespec="seconds"),
                        reason=reason, overrides=sorted({f.check for f in stopping}), batch=name,
                        findings=[f.reason for f in stopping])
    save_approval(config, approval)
    mark_batch_record(config, approval)
    return approval


def mark_batch_record(config: Config, approval: Approval) -> None:
    """Note the approval on the batch's provenance record (core/batches.py), when it has one."""
    def note(record: dict) -> None:
        record["approval"] = approval.to_json()
        record["status"] = "approved"

    try:
        update_batch(config, approval.fingerprint, note)
    except DataError:
        pass  # no record (offered before records were kept): the approval file alone is authoritative
