"""A markdown summary of one checked window, for a Prefect artifact or a chat message."""

from __future__ import annotations

import math
from html import escape

from driftloop.monitoring.drift import ColumnDrift, DriftResult
from driftloop.monitoring.performance import Figures
from driftloop.monitoring.policy import Decision


def markdown_summary(result: DriftResult, model: str, label: str, decision: Decision | None = None) -> str:
    """Verdict, the rate it is calibrated for, each column, performance and the policy's decision."""
    verdict = "**DRIFT**" if result.drift_detected else "**no drift**"
    drifted = sum(column.drifted for column in result.columns.values())
    lines = [f"## Drift check {label} — {model}", "",
             f"{verdict}: {drifted} of {len(result.columns)} feature columns drifted (share "
             f"{result.drift_share:.2f}); {result.rows:,} rows" + _checked(result) + ".", "", _rule(result), "",
             "| column | method | score | threshold | drifted |", "|---|---|---|---|---|"]
    rows = dict(result.columns)
    if result.prediction is not None:
        rows["model output"] = result.prediction
    lines += [_column_row(name, column) for name, column in rows.items()]
    if result.performance is not None:
        performance = result.performance
        lines += ["", f"**Performance** ({performance.metric} judged):", "",
                  "| figures | rows | values |", "|---|---|---|"]
        for name, figures in (("reference", performance.reference), ("actual (labelled rows)", performance.actual),
                              ("estimated (CBPE)", performance.estimated),
                              ("reference, estimated", performance.reference_estimated)):
            if figures is not None:
                lines.append(f"| {name} | {figures.rows:,} | {_values(figures)} |")
    if decision is not None:
        lines += ["", f"**Policy**: {'RETRAIN' if decision.retrain else 'no retrain'} — {decision.reason}"]
    if result.report is not None:
        lines += ["", f"Evidently report: `{result.report}`"]
    return "\n".join(lines)


def _checked(result: DriftResult) -> str:
    """Mention the sample when the drift tests used one."""
    if result.rows_checked is not None and result.rows_checked < result.rows:
        return f" (drift tested on a sample of {result.rows_checked:,})"
    return ""


def _rule(result: DriftResult) -> str:
    """Which decision made the verdict."""
    if result.false_alarm_rate is None:
        return "Decision: Evidently's default tests and the drift-share rule (not calibrated)."
    text = (f"Decision: thresholds calibrated on the reference for at most {result.false_alarm_rate:.2%} false "
            "alarms per window (all columns together)")
    calibration = result.calibration
    if calibration is None:
        return text + "."
    return (f"{text}: {calibration.expected_rate:.2%} of {calibration.draws:,} no-drift windows of "
            f"{calibration.window_rows:,} rows drawn from the reference alarmed (95% bound "
            f"{calibration.rate_bound:.2%}).")


def _column_row(name: str, column: ColumnDrift) -> str:
    """One table row."""
    return (f"| {name} | {column.method} | {column.score:.4g} | {column.threshold:.4g} | "
            f"{'**yes**' if column.drifted else 'no'} |")


def _values(figures: Figures) -> str:
    """metric value ± standard error, ..."""
    parts = []
    for metric, value in figures.values.items():
        error = figures.errors.get(metric)
        spread = f" ± {error:.4f}" if error is not None and math.isfinite(error) else ""
        parts.append(f"{metric} {value:.4f}{spread}")
    return ", ".join(parts)


def html_summary(result: DriftResult, model: str, label: str) -> str:
    """The window's check as a small HTML page (what `driftloop monitor` writes unless asked for Evidently's
    report): the verdict and the rule, each column's score against its threshold, the performance figures."""
    verdict = "DRIFT" if result.drift_detected else "no drift"
    rows = dict(result.columns)
    if result.prediction is not None:
        rows["model output"] = result.prediction
    columns = "".join(
        f"<tr><td>{escape(name)}</td><td>{escape(column.method)}</td><td>{column.score:.4g}</td>"
        f"<td>{column.threshold:.4g}</td><td>{'<b>yes</b>' if column.drifted else 'no'}</td></tr>"
        for name, column in rows.items())
    performance = ""
    if result.performance is not None:
        figures = [(name, found) for name, found in (
            ("reference", result.performance.reference), ("actual (labelled rows)", result.performance.actual),
            ("estimated (CBPE)", result.performance.estimated),
            ("reference, estimated", result.performance.reference_estimated)) if found is not None]
        performance = (f"<h2>Performance ({escape(result.performance.metric)} judged)</h2><table><tr><th>figures"
                       "</th><th>rows</th><th>values</th></tr>"
                       + "".join(f"<tr><td>{escape(name)}</td><td>{found.rows:,}</td><td>{escape(_values(found))}"
                                 "</td></tr>" for name, found in figures) + "</table>")
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>drift check {escape(label)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}</style></head><body>
<h1>Drift check {escape(label)} — {escape(model)}</h1>
<p><b>{verdict}</b>: {sum(c.drifted for c in result.columns.values())} of {len(result.columns)} feature columns
drifted (share {result.drift_share:.2f}); {result.rows:,} rows{escape(_checked(result))}.</p>
<p>{escape(_rule(result))}</p>
<table><tr><th>column</th><th>method</th><th>score</th><th>threshold</th><th>drifted</th></tr>{columns}</table>
{performance}</body></html>"""
