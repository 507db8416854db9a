"""Keep a batch that failed validation aside, with its reasons, so it can be inspected or replayed."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa

from data_checks.report_html import GX_PAGE_SUFFIX
from data_checks.validate import ValidationReport, batch_fingerprint, batch_label
from driftloop.config import Config
from driftloop.state import quarantine_dir

REPORT_JSON = "report.json"
REPORT_HTML = "report.html"


def quarantine(frame: pd.DataFrame, report: ValidationReport, config: Config, name: str) -> Path:
    """Write the batch, report.json and the HTML report under quarantine/<UTC time>-<name>-<fingerprint>/.

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
        "summary": report.summary(),
        "reasons": report.reasons(),
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
    """Quarantined batches, oldest first: name, path, time, rows and reasons of each."""
    entries = []
    for folder in sorted(p for p in quarantine_dir(config).iterdir() if p.is_dir()):
        try:
            record = json.loads((folder / REPORT_JSON).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue  # still being written, or not ours: report.json is written last
        entries.append({"name": record.get("name"), "path": str(folder), "time": record.get("time"),
                        "rows": record.get("rows"), "reasons": record.get("reasons", [])})
    return entries
