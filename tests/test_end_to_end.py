"""The whole loop on a small slice of the real data, through the real `driftloop demo` command."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import yaml

from driftloop.config import demo_config_path, load_config
from driftloop.registry.store import CHAMPION, alias_version, mlflow_client
from tests.helpers import run_cli


@pytest.mark.slow
def test_demo_loop_retrains_on_drift_and_gates(tmp_path: Path) -> None:
    raw = yaml.safe_load(demo_config_path().read_text())
    raw["state_dir"] = str(tmp_path / "state")
    raw["training"].update({"epochs": 1, "batch_size": 256})
    # The demo's saved suite, as shipped: its path is relative to the shipped config's folder, not this copy's.
    raw["validation"]["suite"] = str(demo_config_path().parent / raw["validation"]["suite"])
    # Train on January, replay February to April: the weather warms up week after week. Retraining on drift
    # alone makes the retraining path certain on this small slice; the demo retrains on a performance drop.
    raw["demo"].update({"train_until": "2013-02-01", "replay_until": "2013-05-01", "sample_fraction": 0.1,
                        "max_windows": 5})
    raw["retraining"] = {"data": "recent", "max_age": "14D"}
    raw["monitoring"].update({"retrain_on_drift": True, "cooldown_windows": 1})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))

    result = run_cli("demo", "--config", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Traceback" not in result.stderr
    out = result.stderr
    assert "retrained v2" in out, out[-4000:]
    assert "vs champion" in out  # the gate's decision shows both AUCs

    config = load_config(path).model_copy(update={"state_dir": tmp_path / "state" / "demo"})
    summary = config.state_dir / "reports" / "summary" / "summary.html"
    assert summary.is_file() and "data:image/png;base64," in summary.read_text()
    assert len(list((config.state_dir / "reports" / "drift").glob("*.html"))) == 5

    versions = mlflow_client(config).search_model_versions(f"name='{config.model.name}'")
    assert len(versions) >= 2
    champion = alias_version(config, CHAMPION)
    assert champion is not None

    with sqlite3.connect(config.state_dir / "predictions.db") as db:
        total, labelled = db.execute("SELECT COUNT(*), COUNT(label) FROM predictions").fetchone()
        features = db.execute("SELECT * FROM predictions LIMIT 1").fetchone()
    assert total > 0 and labelled == total
    assert "tailnum" not in str(features)
    prom = (config.state_dir / "metrics" / "monitor.prom").read_text()
    assert "driftloop_drift_share" in prom
