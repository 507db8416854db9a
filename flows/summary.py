"""The loop's summary: a table per window and an HTML page with AUC and drift share over time."""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")  # no display on servers
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from rich.table import Table  # noqa: E402

from driftloop.config import Config  # noqa: E402

if TYPE_CHECKING:
    from driftloop.flows.backtest import Backtest


@dataclass(frozen=True)
class WindowRow:
    """One monitored window: what came in, what the monitor saw, what the loop did."""

    label: str
    start: pd.Timestamp
    rows: int
    drift_share: float
    drifted: bool
    auc: float | None
    model_version: str
    event: str
    report: str

    def line(self) -> str:
        """One line for the console."""
        auc = f"{self.auc:.3f}" if self.auc is not None else "  -  "
        drift = "DRIFT" if self.drifted else "  -  "
        return (f"{self.label}  rows {self.rows:>6,}  drift share {self.drift_share:.2f} {drift}  "
                f"AUC {auc}  model v{self.model_version}  {self.event}").rstrip()


def rich_table(rows: list[WindowRow]) -> Table:
    """The per-window table for the terminal."""
    table = Table(title="driftloop: monitored windows")
    for column in ("window", "rows", "drift share", "drift", "AUC (live)", "model", "retrain / promotion"):
        table.add_column(column)
    for row in rows:
        table.add_row(row.label, f"{row.rows:,}", f"{row.drift_share:.2f}", "yes" if row.drifted else "no",
                      f"{row.auc:.3f}" if row.auc is not None else "-", f"v{row.model_version}", row.event)
    return table


def markdown_table(rows: list[WindowRow]) -> str:
    """The per-window table as markdown (Prefect artifact)."""
    lines = ["| window | rows | drift share | drift | AUC | model | event |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        auc = f"{row.auc:.3f}" if row.auc is not None else "-"
        lines.append(f"| {row.label} | {row.rows} | {row.drift_share:.2f} | {'yes' if row.drifted else 'no'} | "
                     f"{auc} | v{row.model_version} | {row.event} |")
    return "\n".join(lines)


def plot_png(rows: list[WindowRow], drift_share: float | None) -> bytes:
    """AUC of the live model and drift share per window, with retraining events marked."""
    starts = [row.start for row in rows]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    top.plot(starts, [row.auc if row.auc is not None else float("nan") for row in rows], marker="o")
    top.set_ylabel("AUC (live model)")
    bottom.bar(starts, [row.drift_share for row in rows], width=5,
               color=["tab:red" if row.drifted else "tab:gray" for row in rows])
    if drift_share is not None:  # the share rule decides only with monitoring.decision "evidently"
        bottom.axhline(drift_share, color="black", linewidth=1, linestyle=":")
    bottom.set_ylabel("drift share (red: drifted)")
    for row in rows:
        if "retrained" in row.event:
            for axis in (top, bottom):
                axis.axvline(row.start, color="tab:green" if "PROMOTED" in row.event else "tab:orange",
                             linestyle="--", linewidth=1)
    top.set_title("green: new champion promoted · orange: retrained, kept as challenger")
    fig.autofmt_xdate()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def share_rule(config: Config) -> float | None:
    """The drift-share line to draw, when the share is what decides."""
    return config.monitoring.drift_share if config.monitoring.decision == "evidently" else None


def write_summary(rows: list[WindowRow], path: Path, config: Config,
                  comparison: Backtest | None = None) -> tuple[Path, Table]:
    """Write the HTML summary (plot, what the loop is worth beside the `comparison`'s policies, table, links to
    each window's drift report); return it and the table."""
    image = base64.b64encode(plot_png(rows, share_rule(config))).decode() if rows else ""
    body = []
    for row in rows:
        auc = f"{row.auc:.3f}" if row.auc is not None else "-"
        link = f'<a href="../drift/{html.escape(row.report)}">report</a>' if row.report else ""
        body.append(f"<tr><td>{html.escape(row.label)}</td><td>{row.rows:,}</td><td>{row.drift_share:.2f}</td>"
                    f"<td>{'yes' if row.drifted else 'no'}</td><td>{auc}</td><td>v{html.escape(row.model_version)}"
                    f"</td><td>{html.escape(row.event)}</td><td>{link}</td></tr>")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>driftloop summary</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}</style></head><body>
<h1>driftloop — {html.escape(config.model.name)}</h1>
<img alt="AUC and drift share per window" src="data:image/png;base64,{image}">
{worth_html(rows, comparison, config.gate_metric()) if rows else ''}
<h2>Monitored windows</h2>
<table><tr><th>window</th><th>rows</th><th>drift share</th><th>drift</th><th>AUC (live)</th><th>model</th>
<th>retrain / promotion</th><th>Evidently</th></tr>
{''.join(body)}</table></body></html>"""
    path.write_text(page, encoding="utf-8")
    return path, rich_table(rows)


# Line colours of the backtest's policies (matplotlib's default cycle, fixed per policy so pages compare).
POLICY_COLOURS = {"never": "tab:gray", "every": "tab:blue", "policy": "tab:green", "gbdt_every": "tab:orange"}


def backtest_plot_png(backtest: Backtest) -> bytes:
    """The metric per window, a line per policy; o: a retraining after that window, *: it then served."""
    fig, axis = plt.subplots(figsize=(10, 4.5))
    for name, run in backtest.runs.items():
        values = [value if value is not None else float("nan") for value in run.per_window]
        colour = POLICY_COLOURS.get(name)
        axis.plot(backtest.windows, values, label=name, color=colour, linewidth=1.5)
        for indices, marker, size in ((run.retrains, "o", 36), (run.promotions, "*", 90)):
            axis.scatter([backtest.windows[i] for i in indices], [values[i] for i in indices], marker=marker,
                         s=size, color=colour, zorder=3)
    axis.set_ylabel(f"{backtest.metric} per window")
    axis.set_title("o: retrained after this window · *: the new model served from the next")
    axis.legend(loc="best")
    fig.autofmt_xdate()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def backtest_table(backtest: Backtest) -> Table:
    """mean, min, retrains, promotions and training time per policy, for the terminal."""
    table = Table(title=f"driftloop backtest: {backtest.metric} over {len(backtest.windows)} windows")
    for column in ("policy", f"mean {backtest.metric}", f"min {backtest.metric}", "retrains", "promotions",
                   "train s"):
        table.add_column(column)
    for name, run in backtest.runs.items():
        figures = run.summary()
        table.add_row(name, _figure(figures["mean"]), _figure(figures["min"]), str(figures["retrains"]),
                      str(figures["promotions"]), f"{figures['train_seconds']:.0f}")
    return table


def write_backtest_page(backtest: Backtest, path: Path, title: str) -> Path:
    """The backtest's HTML page: the plot, the policies' table and every window's figures."""
    image = base64.b64encode(backtest_plot_png(backtest)).decode()
    names = list(backtest.runs)
    summary = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{_figure(f['mean'])}</td><td>{_figure(f['min'])}</td>"
        f"<td>{f['retrains']}</td><td>{f['promotions']}</td><td>{f['train_seconds']:.0f}</td></tr>"
        for name, f in ((name, run.summary()) for name, run in backtest.runs.items()))
    per_window = "".join(
        f"<tr><td>{start:%Y-%m-%d %H:%M}</td>"
        + "".join(f"<td>{_figure(backtest.runs[name].per_window[i])}"
                  f"{' ↻' if i in backtest.runs[name].retrains else ''}</td>" for name in names) + "</tr>"
        for i, start in enumerate(backtest.windows))
    metric = html.escape(backtest.metric)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>driftloop backtest</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;margin-bottom:2em}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}</style></head><body>
<h1>driftloop backtest — {html.escape(title)}</h1>
<img alt="{metric} per window and policy" src="data:image/png;base64,{image}">
<table id="policies"><tr><th>policy</th><th>mean {metric}</th><th>min {metric}</th><th>retrains</th>
<th>promotions</th><th>train s</th></tr>
{summary}</table>
<table id="windows"><tr><th>window</th>{''.join(f'<th>{html.escape(n)}</th>' for n in names)}</tr>
{per_window}</table><p>↻: retrained after this window.</p></body></html>"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


@dataclass(frozen=True)
class Worth:
    """One line of what the loop is worth: a policy's mean weekly metric and its retrainings."""

    policy: str
    mean: float | None
    retrains: int


def loop_worth(rows: list[WindowRow], comparison: Backtest | None) -> list[Worth]:
    """The loop's mean live metric and retrainings, then each compared policy's on the same windows."""
    known = [row.auc for row in rows if row.auc is not None]
    lines = [Worth("loop (monitor, policy, gate)", sum(known) / len(known) if known else None,
                   sum("retrained" in row.event for row in rows))]
    if comparison is not None:
        for name, run in comparison.runs.items():
            figures = run.summary()
            lines.append(Worth(name, figures["mean"], figures["retrains"]))
    return lines


def worth_table(rows: list[WindowRow], comparison: Backtest | None, metric: str) -> Table:
    """The terminal's table of loop_worth."""
    table = Table(title=f"what the loop is worth: mean weekly {metric} over {len(rows)} windows")
    for column in ("policy", f"mean {metric}", "retrainings"):
        table.add_column(column)
    for line in loop_worth(rows, comparison):
        table.add_row(line.policy, _figure(line.mean), str(line.retrains))
    return table


def worth_html(rows: list[WindowRow], comparison: Backtest | None, metric: str) -> str:
    """The summary page's table of loop_worth."""
    body = "".join(f"<tr><td>{html.escape(line.policy)}</td><td>{_figure(line.mean)}</td><td>{line.retrains}</td>"
                   "</tr>" for line in loop_worth(rows, comparison))
    return (f'<h2>What the loop is worth</h2><table id="worth"><tr><th>policy</th><th>mean weekly '
            f"{html.escape(metric)}</th><th>retrainings</th></tr>{body}</table>")
