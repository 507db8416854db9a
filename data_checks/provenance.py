"""Provenance of the batches offered to training: what each was, where it came from, what validation said.

The records live in the driftloop core (core/batches.py) so that the registry can read them; this module
builds them from a validated batch and writes them through it. Nothing here stores a data value: the record
holds counts, column names, times, paths and the validation's reasons, which never quote a PII column.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from driftloop.batches import note_model, record_offer
from driftloop.config import Config
from driftloop.data import time_range
from driftloop.data_checks.report_html import GX_PAGE_SUFFIX
from driftloop.data_checks.validate import ValidationReport, batch_fingerprint
from driftloop.errors import DataError

# How many failure reasons the Prefect artifact lists; the rest are in the report.
REASONS_SHOWN = 5


def gx_page(report: Path) -> Path:
    """GX's Data Docs page of a validation, beside our report (data_checks/report_html.py names it)."""
    report = Path(report)
    return report.with_name(report.name.removesuffix(".html") + GX_PAGE_SUFFIX)


def prediction_log_source(first_id: int, last_id: int, log_path: Path | str) -> str:
    """The source of a batch cut from the prediction log: its id range and the log file."""
    return f"prediction log ids {first_id}–{last_id} ({log_path})"


def validation_summary(report: ValidationReport) -> dict:
    """The verdict as a record holds it: success, summary, counts, reasons and both report pages."""
    page = gx_page(report.report)
    return {
        "success": report.success,
        "summary": report.summary(),
        "evaluated": report.evaluated,
        "failed": [{"expectation": f.expectation, "column": f.column, "unexpected": f.unexpected}
                   for f in report.failed],
        "reasons": report.reasons(),
        "report": str(report.report),
        "gx_report": str(page) if page.is_file() else None,
    }


def batch_facts(frame: pd.DataFrame, config: Config, name: str) -> dict:
    """What a batch is, independent of any offer: fingerprint, name, rows, columns and time range."""
    try:
        span = time_range(frame, config.data)
    except DataError:
        span = None  # unparseable timestamps: validation says so; the record just has no range
    return {
        "fingerprint": batch_fingerprint(frame),
        "name": name,
        "rows": len(frame),
        "columns": [str(c) for c in frame.columns],
        "time_range": {"start": span[0], "end": span[1]} if span else None,
    }


def record_batch(frame: pd.DataFrame, report: ValidationReport, config: Config, *, name: str, source: str,
                 status: str, quarantine: Path | None = None, flow_run_id: str | None = None) -> dict:
    """Record one offer of `frame` to training (accepted or quarantined) and return the batch's record.

    `frame` must be the table validated and trained on, so that the fingerprint matches the lineage tags.
    """
    offer = {
        "id": uuid.uuid4().hex[:12],
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "source": source,
        "status": status,
        "validation": validation_summary(report),
        "quarantine": str(quarantine) if quarantine else None,
        "flow_run_id": flow_run_id,
        "model": None,
    }
    return record_offer(config, batch_facts(frame, config, name), offer)


def record_model(config: Config, record: dict, name: str, version: str, run_id: str) -> dict:
    """Note on the batch's latest offer the model version trained on it."""
    offer = record["offers"][-1]["id"]
    return note_model(config, record["fingerprint"], offer, {"name": name, "version": version, "run_id": run_id})


def _link(text: str, target: str | None) -> str:
    return f"[{text}]({target})" if target else text


def validation_markdown(record: dict, model_name: str, links: list[tuple[str, str]]) -> str:
    """The validation of one offered batch as Markdown (the Prefect artifact): verdict, figures, report links.

    `links`: further (text, url) pairs, e.g. the MLflow run and the report logged in it.
    """
    validation = record["validation"]
    verdict = "passed" if validation["success"] else "FAILED"
    span = record.get("time_range") or {}
    when = f", {span['start']} – {span['end']}" if span else ""
    lines = [
        f"### Validation of batch `{record['name']}` for model `{model_name}`: {verdict}",
        "",
        "| | |",
        "|---|---|",
        f"| batch | `{record['fingerprint']}` ({record['rows']:,} rows{when}) |",
        f"| source | {record['source']} |",
        f"| status | {record['status']} |",
        f"| expectations | {validation['evaluated']} evaluated, {len(validation['failed'])} failed |",
        "",
        validation["summary"] if validation["success"] else f"{len(validation['failed'])} expectation(s) failed:",
    ]
    lines += [f"- {reason}" for reason in validation["reasons"][:REASONS_SHOWN]]
    if len(validation["reasons"]) > REASONS_SHOWN:
        lines.append(f"- … {len(validation['reasons']) - REASONS_SHOWN} more in the report")
    pages = [_link("driftloop report", Path(validation["report"]).as_uri())]
    if validation.get("gx_report"):
        pages.append(_link("Great Expectations Data Docs", Path(validation["gx_report"]).as_uri()))
    if record.get("quarantine"):
        pages.append(_link("quarantine folder", Path(record["quarantine"]).as_uri()))
    lines += ["", "Reports: " + " · ".join(pages)]
    if links:
        lines.append("MLflow: " + " · ".join(_link(text, url) for text, url in links))
    return "\n".join(lines) + "\n"
