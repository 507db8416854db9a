"""The driftloop Grafana dashboard, built with grafana-foundation-sdk.

`python -m driftloop.dashboards.build` writes its JSON.

Every query is built from the metric names in driftloop.metrics, so a renamed metric cannot leave a stale panel.
Prometheus is the datasource with the fixed uid DATASOURCE_UID, the one provisioning/datasources/prometheus.yml
creates. Monitor and training queries follow the `model` variable; serving queries do not filter by it (one model
server serves one model).
"""

from __future__ import annotations

import json
from pathlib import Path

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dashboard_builders
from grafana_foundation_sdk.builders import prometheus, stat, statetimeline, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as models

from driftloop.metrics import (
    COLUMN_DRIFT_SCORE,
    COLUMN_DRIFT_THRESHOLD,
    DRIFT_DETECTED,
    DRIFT_SHARE,
    LAST_CHECK,
    MODEL_INFO,
    MODEL_SWAP_FAILURES,
    MODEL_SWAPS,
    PERFORMANCE_DEGRADED,
    PREDICT_LATENCY,
    PREDICT_REQUESTS,
    PREDICTION_ROWS,
    REFERENCE_PERFORMANCE,
    RETRAIN_RECOMMENDED,
    TRAINING_BUBBLE,
    TRAINING_FINISHED,
    TRAINING_INFO,
    TRAINING_LOSS,
    TRAINING_SAMPLES_PER_SECOND,
    TRAINING_STAGE_BACKWARD,
    TRAINING_STAGE_FORWARD,
    TRAINING_STEP_SECONDS,
    WINDOW_LABELLED_ROWS,
    WINDOW_PERFORMANCE,
    WINDOW_PERFORMANCE_ESTIMATED,
    WINDOW_ROWS,
)

DASHBOARD_UID = "driftloop"
DASHBOARD_TITLE = "driftloop"
DATASOURCE_UID = "driftloop-prometheus"
DATASOURCE_TYPE = "prometheus"
JSON_DIR = Path(__file__).resolve().parent / "json"
JSON_FILE = "driftloop.json"

# Grafana picks the range from the panel width and the scrape interval; `$__rate_interval` always spans
# at least four scrapes, so a rate has two points even right after a restart.
RATE = "$__rate_interval"
# A regex matcher, so that the variable's "All" value (.*) selects every model.
MODEL = 'model=~"$model"'


def datasource() -> models.DataSourceRef:
    """The provisioned Prometheus datasource, by its fixed uid."""
    return models.DataSourceRef(type_val=DATASOURCE_TYPE, uid=DATASOURCE_UID)


def monitored(metric: str) -> str:
    """`metric` restricted to the models chosen in the `model` variable."""
    return f"{metric}{{{MODEL}}}"


def tagged(expr: str, label: str, value: str) -> str:
    """`expr` with a constant `label`="value" added, so several metrics can share one query and one legend."""
    return f'label_replace({expr}, "{label}", "{value}", "", "")'


def rate(selector: str) -> str:
    """Per-second rate of a counter over the panel's rate interval."""
    return f"rate({selector}[{RATE}])"


def query(expr: str, legend: str, ref_id: str = "A") -> prometheus.Dataquery:
    """A Prometheus range query with a legend."""
    return (prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref_id).range()
            .datasource(datasource().to_json()))


def thresholds(*steps: tuple[float | None, str]) -> dashboard_builders.ThresholdsConfig:
    """Absolute thresholds: (value, colour) pairs, the first with value None as the base."""
    return (dashboard_builders.ThresholdsConfig().mode(models.ThresholdsMode.ABSOLUTE)
            .steps([models.Threshold(value=value, color=color) for value, color in steps]))


def flags(off: str, on: str) -> list[models.ValueMapping]:
    """Value mappings for a 0/1 gauge: 0 green `off`, 1 red `on`."""
    return [models.ValueMap(options={"0": models.ValueMappingResult(text=off, color="green", index=0),
                                     "1": models.ValueMappingResult(text=on, color="red", index=1)})]


def graph(title: str, description: str, unit: str, *targets: prometheus.Dataquery,
          width: int = 8, height: int = 8) -> timeseries.Panel:
    """A time series panel: lines, a list legend at the bottom, all series in the tooltip."""
    panel = (timeseries.Panel().title(title).description(description).datasource(datasource()).unit(unit)
             .span(width).height(height).line_width(1).fill_opacity(10).show_points(common.VisibilityMode.NEVER)
             .legend(common_builders.VizLegendOptions().display_mode(common.LegendDisplayMode.LIST)
                     .placement(common.LegendPlacement.BOTTOM).show_legend(True))
             .tooltip(common_builders.VizTooltipOptions().mode(common.TooltipDisplayMode.MULTI)
                      .sort(common.SortOrder.DESCENDING)))
    for target in targets:
        panel = panel.with_target(target)
    return panel


def single(title: str, description: str, unit: str, target: prometheus.Dataquery, width: int = 4,
           height: int = 8) -> stat.Panel:
    """A stat panel showing the last value of each series."""
    return (stat.Panel().title(title).description(description).datasource(datasource()).unit(unit)
            .span(width).height(height).with_target(target)
            .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
            .graph_mode(common.BigValueGraphMode.NONE).color_mode(common.BigValueColorMode.VALUE)
            .text_mode(common.BigValueTextMode.AUTO).thresholds(thresholds((None, "green"))))


def states(title: str, description: str, target: prometheus.Dataquery, mappings: list[models.ValueMapping],
           width: int = 8, height: int = 8) -> statetimeline.Panel:
    """A state timeline: one band per series, coloured by the value mappings."""
    return (statetimeline.Panel().title(title).description(description).datasource(datasource()).unit("none")
            .span(width).height(height).with_target(target).mappings(mappings)
            .show_value(common.VisibilityMode.AUTO).merge_values(True).row_height(0.9).fill_opacity(70)
            .legend(common_builders.VizLegendOptions().display_mode(common.LegendDisplayMode.LIST)
                    .placement(common.LegendPlacement.BOTTOM).show_legend(True))
            .tooltip(common_builders.VizTooltipOptions().mode(common.TooltipDisplayMode.SINGLE)
                     .sort(common.SortOrder.NONE)))


def dashed(*properties: models.DynamicConfigValue) -> list[models.DynamicConfigValue]:
    """Override properties drawing a series as a dashed line (thresholds and baselines), plus `properties`."""
    return [models.DynamicConfigValue(id_val="custom.lineStyle", value={"fill": "dash", "dash": [10, 10]}),
            models.DynamicConfigValue(id_val="custom.fillOpacity", value=0), *properties]


# Drift


def drift_share_panel() -> timeseries.Panel:
    """Share of drifted columns per window, with the drift decision."""
    return graph(
        "Drift share",
        "Share of columns whose drift test fired in the last monitored window, and the monitor's decision "
        "(drift detected: 1). The decision uses calibrated thresholds, so a share above 0 is not always drift.",
        "percentunit",
        query(monitored(DRIFT_SHARE), "{{model}} drift share", "A"),
        query(monitored(DRIFT_DETECTED), "{{model}} drift detected", "B"),
        width=16,
    ).min(0).max(1).override_by_query("B", [
        models.DynamicConfigValue(id_val="custom.drawStyle", value="bars"),
        models.DynamicConfigValue(id_val="custom.fillOpacity", value=40),
        models.DynamicConfigValue(id_val="color", value={"mode": "fixed", "fixedColor": "red"}),
    ])


def drift_detected_panel() -> stat.Panel:
    """The last drift decision per model."""
    return single(
        "Drift detected",
        "Decision of the last monitored window per model: drift means the calibrated drift rule fired.",
        "none",
        query(monitored(DRIFT_DETECTED), "{{model}}"),
    ).mappings(flags("no drift", "drift")).thresholds(thresholds((None, "green"), (1, "red")))


def last_check_panel() -> stat.Panel:
    """How long ago the monitor last checked a window."""
    return single(
        "Since last drift check",
        "Time since the monitor last checked a window; a growing value means the monitor has stopped.",
        "s",
        query(f"time() - {monitored(LAST_CHECK)}", "{{model}}"),
    )


def column_drift_panel() -> timeseries.Panel:
    """Drift score and calibrated threshold of every column."""
    return graph(
        "Per-column drift scores",
        "Drift score of each column (and of the model output) in the last window, beside its calibrated "
        "threshold (dashed). The method label says the test: p-value tests drift below the threshold, "
        "distances above it.",
        "none",
        query(monitored(COLUMN_DRIFT_SCORE), "{{column}} score ({{method}})", "A"),
        query(monitored(COLUMN_DRIFT_THRESHOLD), "{{column}} threshold", "B"),
        width=24,
        height=9,
    ).override_by_query("B", dashed())


# Performance


def performance_panel() -> timeseries.Panel:
    """Actual, estimated and reference performance per metric, in one query so one present kind is enough."""
    kinds = " or ".join(tagged(monitored(metric), "kind", kind) for metric, kind in (
        (WINDOW_PERFORMANCE, "actual"), (WINDOW_PERFORMANCE_ESTIMATED, "estimated"),
        (REFERENCE_PERFORMANCE, "reference")))
    return graph(
        "Actual vs estimated performance",
        "Per metric: performance on the last window's labelled rows (actual, once labels arrive), the label-free "
        "estimate (CBPE, estimated) and the reference baseline (dashed).",
        "none",
        query(kinds, "{{model}} {{metric}} {{kind}}"),
        width=16,
    ).decimals(3).override_by_regexp(".* reference$", dashed())


def window_rows_panel() -> timeseries.Panel:
    """Rows in each monitored window and how many of them have labels."""
    return graph(
        "Window rows",
        "Rows in the last monitored window and how many of them already have labels (actual performance "
        "needs them).",
        "short",
        query(monitored(WINDOW_ROWS), "{{model}} rows", "A"),
        query(monitored(WINDOW_LABELLED_ROWS), "{{model}} labelled rows", "B"),
    ).min(0)


# Retraining and promotion


def retraining_signals_panel() -> statetimeline.Panel:
    """The monitor's retraining signals over time."""
    signals = " or ".join(tagged(monitored(metric), "signal", signal) for metric, signal in (
        (DRIFT_DETECTED, "drift detected"), (PERFORMANCE_DEGRADED, "performance degraded"),
        (RETRAIN_RECOMMENDED, "retrain recommended")))
    return states(
        "Retraining signals",
        "Per model and window: drift detected, performance degraded (beyond the margin and beyond chance) and "
        "whether the retraining policy asked for a retrain.",
        query(signals, "{{model}} {{signal}}"),
        flags("no", "yes"),
    )


def model_swaps_panel() -> timeseries.Panel:
    """Hot swaps of the served model: each one is a promotion reaching the server."""
    return graph(
        "Model swaps",
        "Hot swaps of the served model per rate interval: a promoted champion reaching the model server.",
        "short",
        query(f"sum(increase({MODEL_SWAPS}[{RATE}]))", "swaps"),
    ).draw_style(common.GraphDrawStyle.BARS).fill_opacity(60).min(0)


def served_version_panel() -> statetimeline.Panel:
    """Which model version the server answered with, over time."""
    return states(
        "Served model version",
        "The model version the server is serving (from its model-info gauge); a new band is a promotion.",
        query(f"max by (model, version) ({MODEL_INFO})", "{{model}} v{{version}}"),
        [models.ValueMap(options={"1": models.ValueMappingResult(text="serving", color="blue", index=0)})],
    )


# Serving traffic


def request_rate_panel() -> timeseries.Panel:
    """Prediction requests per second by HTTP status."""
    return graph(
        "Request rate by status",
        "Prediction requests per second by HTTP status (422: rows rejected by validation).",
        "reqps",
        query(f"sum by (status) ({rate(PREDICT_REQUESTS)})", "{{status}}"),
    ).min(0)


def rows_rate_panel() -> timeseries.Panel:
    """Rows scored per second by model version."""
    return graph(
        "Rows scored per second",
        "Rows scored per second by the model version that scored them (a request carries many rows).",
        "suffix: rows/s",
        query(f"sum by (model_version) ({rate(PREDICTION_ROWS)})", "v{{model_version}}"),
    ).min(0)


def latency_panel() -> timeseries.Panel:
    """p50, p90 and p99 latency of /predict from the histogram buckets."""
    buckets = f"sum by (le) ({rate(PREDICT_LATENCY + '_bucket')})"
    return graph(
        "Latency percentiles",
        "p50, p90 and p99 latency of /predict, from the latency histogram over the rate interval.",
        "s",
        *(query(f"histogram_quantile({q}, {buckets})", f"p{round(q * 100)}", ref)
          for q, ref in ((0.5, "A"), (0.9, "B"), (0.99, "C"))),
    ).min(0)


# Errors


def share_of_requests(status: str) -> str:
    """Share of requests whose status matches the regex `status`; 0 (not empty) when there are none."""
    part = f'sum({rate(f"{PREDICT_REQUESTS}{{status=~{json.dumps(status)}}}")})'
    return f"({part} or vector(0)) / sum({rate(PREDICT_REQUESTS)})"


def error_share_panel() -> timeseries.Panel:
    """Share of failed (5xx) and rejected (4xx) prediction requests."""
    return graph(
        "Error share",
        "Share of prediction requests that failed in the server (5xx) or were rejected as invalid input (4xx).",
        "percentunit",
        query(share_of_requests("5.."), "5xx share", "A"),
        query(share_of_requests("4.."), "4xx share", "B"),
        width=12,
    ).min(0)


def swap_failures_panel() -> timeseries.Panel:
    """Hot swaps that failed; the old model kept serving."""
    return graph(
        "Model swap failures",
        "Hot swaps that failed per rate interval: the new champion did not load and the old model kept serving.",
        "short",
        query(f"sum(increase({MODEL_SWAP_FAILURES}[{RATE}]))", "failed swaps"),
        width=12,
    ).draw_style(common.GraphDrawStyle.BARS).fill_opacity(60).min(0)


# Training


def training_throughput_panel() -> timeseries.Panel:
    """Training rows per second."""
    return graph(
        "Training throughput",
        "Training rows per second: the latest step while a run goes, the steady-state mean once it is done.",
        "suffix: samples/s",
        query(monitored(TRAINING_SAMPLES_PER_SECOND), "{{model}}"),
    ).min(0)


def step_time_panel() -> timeseries.Panel:
    """Step wall time and per-stage forward and backward compute time."""
    return graph(
        "Step time",
        "Wall time of a training step, and the mean forward and backward compute time of each pipeline stage "
        "per step (a stage far above the others is the bottleneck).",
        "s",
        query(monitored(TRAINING_STEP_SECONDS), "{{model}} step", "A"),
        query(monitored(TRAINING_STAGE_FORWARD), "stage {{stage}} forward", "B"),
        query(monitored(TRAINING_STAGE_BACKWARD), "stage {{stage}} backward", "C"),
    ).min(0)


def bubble_panel() -> timeseries.Panel:
    """Measured pipeline bubble per rank."""
    return graph(
        "Pipeline bubble fraction",
        "Measured idle share of each rank's pipeline step (the bubble); compare it with the schedule's ideal.",
        "percentunit",
        query(monitored(TRAINING_BUBBLE), "{{model}} rank {{rank}}"),
    ).min(0).max(1)


def training_loss_panel() -> timeseries.Panel:
    """Training loss of the latest step."""
    return graph(
        "Training loss",
        "Training loss of the latest step (batch mean).",
        "none",
        query(monitored(TRAINING_LOSS), "{{model}}"),
        width=12,
    )


def pipeline_setup_panel() -> stat.Panel:
    """The pipeline set-up of the latest training run, as text."""
    return single(
        "Pipeline set-up",
        "Schedule, stages, ranks and microbatches of the latest training run.",
        "none",
        query(monitored(TRAINING_INFO), "{{schedule}}: {{stages}} stages on {{ranks}} ranks, "
              "{{microbatches}} microbatches ({{launcher}}, {{device}})"),
        width=8,
    ).text_mode(common.BigValueTextMode.NAME)


def last_training_panel() -> stat.Panel:
    """How long ago the latest training run finished."""
    return single(
        "Since last training",
        "Time since the latest training run finished.",
        "s",
        query(f"time() - {monitored(TRAINING_FINISHED)}", "{{model}}"),
    )


def model_variable() -> dashboard_builders.QueryVariable:
    """The `model` variable: models the monitor reports on, "All" by default."""
    return (dashboard_builders.QueryVariable("model").label("Model").datasource(datasource())
            .query(f"label_values({DRIFT_SHARE}, model)").refresh(models.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(models.VariableSort.ALPHABETICAL_ASC).include_all(True).all_value(".*"))


ROWS: tuple[tuple[str, tuple], ...] = (
    ("Drift", (drift_share_panel, drift_detected_panel, last_check_panel, column_drift_panel)),
    ("Performance", (performance_panel, window_rows_panel)),
    ("Retraining and promotion", (retraining_signals_panel, model_swaps_panel, served_version_panel)),
    ("Serving traffic", (request_rate_panel, rows_rate_panel, latency_panel)),
    ("Errors", (error_share_panel, swap_failures_panel)),
    ("Training", (training_throughput_panel, step_time_panel, bubble_panel, training_loss_panel,
                  pipeline_setup_panel, last_training_panel)),
)


def build_dashboard() -> models.Dashboard:
    """The driftloop dashboard: one open row per concern, each followed by its panels."""
    builder = (dashboard_builders.Dashboard(DASHBOARD_TITLE).uid(DASHBOARD_UID)
               .description("driftloop: drift, performance, retraining, serving and training of the monitored models.")
               .tags(["driftloop", "mlops"]).editable().tooltip(models.DashboardCursorSync.CROSSHAIR)
               .time("now-6h", "now").refresh("30s").timezone("browser").with_variable(model_variable()))
    for title, panels in ROWS:
        # Open rows keep their panels after them at the top level (Grafana's layout for expanded rows);
        # panels nested inside a row only show when the row is collapsed.
        builder = builder.with_row(dashboard_builders.Row(title))
        for panel in panels:
            builder = builder.with_panel(panel())
    dashboard = builder.build()
    # Stable ids, so the generated JSON does not change between builds.
    for number, panel in enumerate(dashboard.panels or [], start=1):
        panel.id_val = number
    return dashboard


def dashboard_json() -> dict:
    """The dashboard encoded as Grafana JSON (plain dicts and lists)."""
    return json.loads(json.dumps(build_dashboard(), cls=JSONEncoder))


def render(data: dict) -> str:
    """Dashboard JSON as committed: sorted keys, two-space indent, trailing newline."""
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_dashboards(folder: Path = JSON_DIR) -> list[Path]:
    """Write every dashboard's JSON into `folder`; return the files written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / JSON_FILE
    path.write_text(render(dashboard_json()), encoding="utf-8")
    return [path]


def main() -> None:
    """Regenerate dashboards/json from the builders."""
    for path in write_dashboards():
        print(path)


if __name__ == "__main__":
    main()
