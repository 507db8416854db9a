"""Dashboards as code: the committed JSON, the SDK's model, metric names, PromQL validity and provisioning."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from grafana_foundation_sdk.cog import plugins
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import Dashboard
from prometheus_client import CollectorRegistry, start_http_server

import driftloop.metrics as metrics
from driftloop.dashboards.build import DATASOURCE_UID, JSON_DIR, JSON_FILE, dashboard_json, render, write_dashboards
from driftloop.dashboards.queries import QueryError, panel_queries, query_all, resolve_variables
from tests.helpers import free_port, wait_for_http

PROVISIONING = Path(__file__).resolve().parents[1] / "dashboards" / "provisioning"
METRIC_NAME = re.compile(r"driftloop_[a-z_]+")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


@pytest.fixture(scope="module")
def dashboard() -> dict:
    """A fresh build of the dashboard JSON."""
    return dashboard_json()


def all_panels(panels: list[dict]) -> Iterator[dict]:
    """Every panel, rows' nested panels included."""
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels") or [])


def data_panels(dashboard: dict) -> list[dict]:
    """The panels that show data (not rows)."""
    return [panel for panel in all_panels(dashboard["panels"]) if panel["type"] != "row"]


def test_committed_json_matches_a_fresh_build(dashboard: dict):
    committed = JSON_DIR / JSON_FILE
    assert committed.exists(), f"{committed} is missing: run `python -m driftloop.dashboards.build`"
    assert committed.read_text(encoding="utf-8") == render(dashboard), (
        f"{committed} is out of date with dashboards/build.py: run `python -m driftloop.dashboards.build`")


def test_write_dashboards_is_deterministic(tmp_path: Path):
    first = write_dashboards(tmp_path / "a")
    second = write_dashboards(tmp_path / "b")
    assert [p.name for p in first] == [JSON_FILE]
    text = first[0].read_text(encoding="utf-8")
    assert text == second[0].read_text(encoding="utf-8")
    assert text.endswith("}\n") and json.loads(text) == dashboard_json()


def test_json_decodes_with_the_sdk_and_re_encodes_identically(dashboard: dict):
    # Without the registered plugins the SDK decodes panel options and queries as opaque dicts.
    plugins.register_default_plugins()
    model = Dashboard.from_json(dashboard)
    assert json.loads(json.dumps(model, cls=JSONEncoder)) == dashboard
    assert model.uid == "driftloop"


def test_every_panel_has_a_datasource_title_description_unit_and_query(dashboard: dict):
    panels = data_panels(dashboard)
    assert len(panels) >= 8
    for panel in panels:
        title = panel.get("title")
        assert title, panel
        assert panel.get("description"), title
        assert panel["datasource"] == {"type": "prometheus", "uid": DATASOURCE_UID}, title
        assert panel["fieldConfig"]["defaults"].get("unit"), title
        targets = panel.get("targets") or []
        assert targets, title
        assert all(target.get("expr", "").strip() for target in targets), title


def test_panel_ids_are_unique(dashboard: dict):
    ids = [panel["id"] for panel in all_panels(dashboard["panels"])]
    assert len(ids) == len(set(ids))


def test_required_panels_are_present(dashboard: dict):
    titles = {panel["title"] for panel in data_panels(dashboard)}
    required = {"Drift share", "Per-column drift scores", "Actual vs estimated performance", "Retraining signals",
                "Model swaps", "Served model version", "Request rate by status", "Rows scored per second",
                "Latency percentiles", "Error share", "Model swap failures", "Training throughput", "Step time",
                "Pipeline bubble fraction"}
    assert required <= titles, f"missing panels: {sorted(required - titles)}"


def test_units_follow_the_quantity(dashboard: dict):
    units = {panel["title"]: panel["fieldConfig"]["defaults"]["unit"] for panel in data_panels(dashboard)}
    assert units["Drift share"] == "percentunit"
    assert units["Latency percentiles"] == "s"
    assert units["Request rate by status"] == "reqps"
    assert units["Error share"] == "percentunit"
    assert units["Pipeline bubble fraction"] == "percentunit"


def test_every_metric_in_a_query_is_defined_in_driftloop_metrics(dashboard: dict):
    defined = {value for name, value in vars(metrics).items() if name.isupper() and isinstance(value, str)
               and value.startswith("driftloop_")}
    used = set()
    for _, expr in panel_queries(dashboard):
        for name in METRIC_NAME.findall(expr):
            for suffix in HISTOGRAM_SUFFIXES:
                if name.endswith(suffix) and name.removesuffix(suffix) in defined:
                    name = name.removesuffix(suffix)
            used.add(name)
    assert used, "no metric found in the queries"
    assert used <= defined, f"not in core/metrics.py: {sorted(used - defined)}"


def test_rates_use_the_rate_interval_and_monitor_queries_the_model_variable(dashboard: dict):
    for title, expr in panel_queries(dashboard):
        for window in re.findall(r"\[([^\]]+)\]", expr):
            assert window == "$__rate_interval", (title, expr)
        if any(name in expr for name in (metrics.DRIFT_SHARE, metrics.COLUMN_DRIFT_SCORE, metrics.TRAINING_LOSS)):
            assert '$model' in expr, (title, expr)


def test_the_model_variable_lists_the_monitored_models(dashboard: dict):
    [variable] = dashboard["templating"]["list"]
    assert variable["name"] == "model"
    assert variable["query"] == f"label_values({metrics.DRIFT_SHARE}, model)"
    assert variable["datasource"]["uid"] == DATASOURCE_UID


def test_panel_queries_include_panels_nested_in_rows():
    dashboard = {"panels": [
        {"type": "row", "title": "r", "panels": [{"type": "timeseries", "title": "inner", "targets": [{"expr": "a"}]}]},
        {"type": "stat", "title": "outer", "targets": [{"expr": "b"}, {"expr": "c"}]},
    ]}
    assert panel_queries(dashboard) == [("inner", "a"), ("outer", "b"), ("outer", "c")]


def test_resolve_variables_substitutes_every_form():
    values = {"model": "flights", "__rate_interval": "1m", "__interval": "30s"}
    expr = 'rate(x{model=~"$model",m="${model}",o="[[model]]",f="${model:regex}"}[$__rate_interval]) + y[$__interval]'
    assert resolve_variables(expr, values) == (
        'rate(x{model=~"flights",m="flights",o="flights",f="flights"}[1m]) + y[30s]')
    assert resolve_variables('x{s=~"5.."} and y{r=~"a$"}', {}) == 'x{s=~"5.."} and y{r=~"a$"}'
    with pytest.raises(ValueError, match=r"\$nope"):
        resolve_variables("x{a=\"$nope\"}", values)


def test_provisioning_matches_the_dashboard(dashboard: dict):
    datasources = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())
    assert datasources["apiVersion"] == 1
    [source] = datasources["datasources"]
    assert (source["name"], source["type"], source["uid"]) == ("Prometheus", "prometheus", DATASOURCE_UID)
    assert source["url"] == "http://127.0.0.1:9090"
    uids = {panel["datasource"]["uid"] for panel in data_panels(dashboard)}
    uids |= {target["datasource"]["uid"] for panel in data_panels(dashboard) for target in panel["targets"]}
    assert uids == {source["uid"]}

    providers = yaml.safe_load((PROVISIONING / "dashboards" / "driftloop.yml").read_text())
    assert providers["apiVersion"] == 1
    [provider] = providers["providers"]
    assert provider["type"] == "file"
    assert Path(provider["options"]["path"]).name == JSON_DIR.name


# PromQL validity against a real Prometheus


@contextmanager
def _prometheus(folder: Path, config: dict) -> Iterator[str]:
    """A real Prometheus with `config` on a free local port; yields its URL and stops it afterwards."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus is not installed")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = (folder / "prometheus.log").open("wb")
    process = subprocess.Popen([binary, f"--config.file={folder / 'prometheus.yml'}",
                                f"--storage.tsdb.path={folder / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                               stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/-/ready")
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.fixture(scope="module")
def prometheus_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prometheus scraping nothing."""
    with _prometheus(tmp_path_factory.mktemp("prometheus"), {"scrape_configs": []}) as url:
        yield url


@pytest.mark.slow
def test_every_panel_query_is_valid_promql(prometheus_url: str, dashboard: dict):
    counts = query_all(prometheus_url, dashboard, {"model": "flights", "__rate_interval": "1m"})
    # Parsing and evaluating is the point here: with nothing scraped, empty results are fine.
    assert set(counts) == {f"{title}: {expr}" for title, expr in panel_queries(dashboard)}


@pytest.mark.slow
def test_query_all_names_a_broken_query(prometheus_url: str):
    broken = {"panels": [
        {"type": "timeseries", "title": "Fine", "targets": [{"expr": "vector(1)"}]},
        {"type": "timeseries", "title": "Broken", "targets": [{"expr": "sum(rate(x[$__rate_interval])"}]},
    ]}
    with pytest.raises(QueryError, match=r"Broken.*sum\(rate\(x\[\$__rate_interval\]\)"):
        query_all(prometheus_url, broken)
    assert query_all(prometheus_url, {"panels": broken["panels"][:1]}) == {"Fine: vector(1)": 1}


def _serve(registry: CollectorRegistry) -> tuple[str, Callable[[], None]]:
    """Serve `registry` on a free local port; return the scrape target and a function that stops serving."""
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return f"127.0.0.1:{port}", stop


def _populated_registries() -> tuple[CollectorRegistry, CollectorRegistry]:
    """The model server's metrics after some traffic, and the monitor's and training's gauges after one window."""
    serving = metrics.serving_metrics()
    serving.requests.labels("200").inc(20)
    serving.prediction_rows.labels("1").inc(640)
    for seconds in (0.004, 0.008, 0.02, 0.06):
        serving.latency.observe(seconds)
    serving.model_info.labels("flights", "1").set(1)

    monitor = metrics.monitor_metrics()
    model = {"model": "flights"}
    monitor.drift_share.labels(**model).set(0.25)
    monitor.drift_detected.labels(**model).set(0)
    monitor.window_rows.labels(**model).set(500)
    monitor.labelled_rows.labels(**model).set(0)
    monitor.last_check.labels(**model).set_to_current_time()
    monitor.column_score.labels(column="distance", method="wasserstein", **model).set(0.05)
    monitor.column_threshold.labels(column="distance", method="wasserstein", **model).set(0.1)
    # No labels yet: the actual performance is absent, the estimate and the reference are there.
    monitor.performance_estimated.labels(metric="accuracy", **model).set(0.8)
    monitor.reference_performance.labels(metric="accuracy", **model).set(0.82)
    monitor.performance_degraded.labels(**model).set(0)
    monitor.retrain_recommended.labels(**model).set(0)
    # Training writes its own textfile, which the monitor's endpoint serves beside its gauges.
    training = metrics.training_metrics(monitor.registry)
    training.info.labels(schedule="1F1B", stages="2", stages_per_rank="1", ranks="2", microbatches="8",
                         launcher="local", device="cpu", partition="params", **model).set(1)
    training.loss.labels(**model).set(0.55)
    training.step_seconds.labels(**model).set(0.2)
    training.samples_per_second.labels(**model).set(1280)
    for stage in ("0", "1"):
        training.stage_forward.labels(stage=stage, **model).set(0.03)
        training.stage_backward.labels(stage=stage, **model).set(0.06)
        training.bubble.labels(rank=stage, **model).set(0.2)
    training.finished.labels(**model).set_to_current_time()
    return serving.registry, monitor.registry


@pytest.mark.slow
def test_every_panel_query_has_data_soon_after_a_short_run(tmp_path: Path, dashboard: dict):
    serving, monitor = _populated_registries()
    server_target, stop_server = _serve(serving)
    monitor_target, stop_monitor = _serve(monitor)
    config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
              "scrape_configs": [{"job_name": "driftloop-server", "static_configs": [{"targets": [server_target]}]},
                                 {"job_name": "driftloop-monitor", "static_configs": [{"targets": [monitor_target]}]}]}
    try:
        with _prometheus(tmp_path / "prometheus", config) as url:
            deadline = time.monotonic() + 30
            while True:
                # Rates need two scrapes inside the window: a few seconds at one scrape a second.
                counts = query_all(url, dashboard, {"model": "flights", "__rate_interval": "1m"})
                empty = sorted(key for key, count in counts.items() if count == 0)
                if not empty or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
    finally:
        stop_server()
        stop_monitor()
    assert not empty, f"queries without data: {empty}"
