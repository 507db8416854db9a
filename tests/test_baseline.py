"""The baseline of every training (training/baseline.py): HistGradientBoosting on the same rows and holdout, in
`train --json`, MLflow and `driftloop models`; and the gate key registry.max_baseline_shortfall."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from driftloop.config import DataConfig
from driftloop.registry.gate import BaselineCheck, Evidence, baseline_check, judge
from driftloop.training.baseline import fit_baseline
from driftloop.training.features import fit_spec
from tests.helpers import make_config, run_cli

WINNING = Evidence("recent", 1000, 0.72, 0.70)  # the challenger beats the champion on the recent window


def test_the_gate_refuses_a_network_trailing_its_baseline_by_more_than_the_key() -> None:
    trailing = BaselineCheck("HistGradientBoostingClassifier", "auc", network=0.690, baseline=0.717, tolerance=0.01)
    verdict = judge("auc", 0.0, 0.02, WINNING, None, [], baseline=trailing)
    assert not verdict.promoted
    assert "trails its baseline HistGradientBoostingClassifier" in verdict.reason
    assert "short by 0.027 > registry.max_baseline_shortfall 0.01" in verdict.reason
    within = BaselineCheck("HistGradientBoostingClassifier", "auc", network=0.710, baseline=0.717, tolerance=0.01)
    assert judge("auc", 0.0, 0.02, WINNING, None, [], baseline=within).promoted
    assert judge("auc", 0.0, 0.02, WINNING, None, [], baseline=None).promoted


def test_for_errors_the_shortfall_is_a_ratio() -> None:
    check = BaselineCheck("HistGradientBoostingRegressor", "rmse", network=10.5, baseline=10.0, tolerance=0.02)
    assert check.shortfall == pytest.approx(0.05)
    assert "(ratio) > registry.max_baseline_shortfall 0.02" in (check.fault() or "")
    assert BaselineCheck("HistGradientBoostingRegressor", "rmse", 10.1, 10.0, 0.02).fault() is None


def test_the_key_is_off_by_default_and_reads_the_versions_tags(tmp_path: Path) -> None:
    tags = {"baseline.model": "HistGradientBoostingClassifier", "baseline.auc": "0.717000", "holdout.auc": "0.690000"}
    assert make_config(tmp_path).registry.max_baseline_shortfall is None
    assert baseline_check(make_config(tmp_path), tags) is None  # null: reported, never judged
    check = baseline_check(make_config(tmp_path, registry={"max_baseline_shortfall": 0.01}), tags)
    assert check is not None and check.fault() is not None and check.baseline == pytest.approx(0.717)
    # a version registered without a baseline is not judged on one
    assert baseline_check(make_config(tmp_path, registry={"max_baseline_shortfall": 0.01}), {}) is None


def test_the_baseline_fits_the_task(flights_jan: pd.DataFrame, tmp_path: Path) -> None:
    fit, holdout = flights_jan.iloc[:3200], flights_jan.iloc[3200:]
    result = fit_baseline(fit, holdout, fit_spec(fit, make_config(tmp_path).data))
    assert result.model == "HistGradientBoostingClassifier" and set(result.metrics) == {"auc", "accuracy", "log_loss"}
    # late January from early January, 800 rows (AUC's standard error about 0.02): 0.597 measured, chance is 0.5
    assert 0.55 < result.metrics["auc"] < 0.9
    regression = DataConfig(target="distance", task="regression", numerical=["dep_hour"],
                            categorical=["origin", "dest"])
    result = fit_baseline(fit, holdout, fit_spec(fit, regression))
    # a flight's distance is its route's: far better than the spread of the distances
    assert result.model == "HistGradientBoostingRegressor"
    assert result.metrics["rmse"] < 0.2 * holdout["distance"].std()


@pytest.mark.slow
def test_the_baseline_appears_in_train_json_mlflow_and_models(flights_jan: pd.DataFrame, tmp_path: Path) -> None:
    from driftloop.registry.store import mlflow_client

    config = make_config(tmp_path / ".driftloop", training={"stages": 1, "epochs": 2})
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json")))
    flights_jan.to_parquet(tmp_path / "jan.parquet", index=False)

    result = run_cli("train", "--config", "config.yaml", "--data", "jan.parquet", "--json", cwd=tmp_path)

    assert result.returncode == 0, result.stderr[-3000:]
    payload = json.loads(result.stdout)
    baseline = payload["baseline"]
    assert baseline["model"] == "HistGradientBoostingClassifier"
    assert set(baseline["metrics"]) == set(payload["metrics"]) - {"holdout_loss"}
    assert 0.55 < baseline["metrics"]["auc"] < 1.0
    run = mlflow_client(config).get_run(payload["run_id"]).data
    assert run.params["baseline.model"] == "HistGradientBoostingClassifier"
    assert run.metrics["baseline.auc"] == pytest.approx(baseline["metrics"]["auc"])
    assert run.metrics["holdout_auc"] == pytest.approx(payload["metrics"]["auc"])

    models = run_cli("models", "--config", "config.yaml", "--json", cwd=tmp_path)
    assert models.returncode == 0, models.stderr[-3000:]
    (version,) = json.loads(models.stdout)["versions"]
    assert version["baseline"]["model"] == "HistGradientBoostingClassifier"
    assert version["baseline"]["metrics"]["auc"] == pytest.approx(baseline["metrics"]["auc"], abs=1e-6)
    assert version["holdout"]["auc"] == pytest.approx(payload["metrics"]["auc"], abs=1e-6)
    table = run_cli("models", "--config", "config.yaml", cwd=tmp_path)
    assert "holdout vs baseline" in table.stdout and "vs HistGBClassifier" in table.stdout, table.stdout


@pytest.mark.slow
def test_the_gate_judges_a_registered_challenger_against_its_baseline_only_when_asked(
        flights_jan: pd.DataFrame, flights_jul: pd.DataFrame, tmp_path: Path) -> None:
    """A network that barely trained (one step at a tiny learning rate) trails the HistGB fitted on its own rows:
    with registry.max_baseline_shortfall the gate refuses it naming the key; with the key null it says nothing of
    it."""
    from driftloop.registry.gate import decide
    from driftloop.registry.store import register, version_tags
    from driftloop.training.trainer import train
    from tests.helpers import lineage_for

    config = make_config(tmp_path / "state", training={"stages": 1, "epochs": 2})
    champion = register(config, train(flights_jan, config, progress=False), lineage_for(config, flights_jan),
                        flights_jan)
    weak_config = make_config(tmp_path / "state", training={"stages": 1, "max_steps": 1, "learning_rate": 1e-7})
    weak = train(flights_jan, weak_config, progress=False)
    challenger = register(config, weak, lineage_for(config, flights_jan), flights_jan)
    check = baseline_check(make_config(tmp_path / "state", registry={"max_baseline_shortfall": 0.0}),
                           version_tags(config, challenger.version))
    assert check is not None and check.shortfall > 0.02, check  # the premise: it trails its baseline

    strict = make_config(tmp_path / "state", registry={"max_baseline_shortfall": 0.01})
    refused = decide(strict, challenger.version, champion.version, flights_jul)
    assert not refused.promoted and "registry.max_baseline_shortfall 0.01" in refused.reason, refused.reason
    assert refused.baseline is not None and refused.baseline.model == "HistGradientBoostingClassifier"
    silent = decide(config, challenger.version, champion.version, flights_jul)
    assert silent.baseline is None and "baseline" not in silent.reason, silent.reason
