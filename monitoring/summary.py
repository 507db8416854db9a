"""A markdown summary of one checked window, for a Prefect artifact or a chat message."""

from __future__ import annotations

import math

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
