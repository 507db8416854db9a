"""The retraining data policy (training/data_policy.py): which rows a retraining trains on and how much each weighs;
sample weights in the trainer's loss; warm start from the champion; `retraining.data: all` in the deployed
retraining flow."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from driftloop.config import RetrainingConfig
from driftloop.errors import ConfigError, DataError
from driftloop.training.data_policy import select_training_rows
from driftloop.training.features import encode, encode_target
from driftloop.training.trainer import epoch_order, train
from driftloop.training.warm_start import WarmStart
from tests.helpers import make_config

NOW = pd.Timestamp("2013-03-01", tz="UTC")


@pytest.fixture
def daily() -> pd.DataFrame:
    """100 days of one row each (x = day number), shuffled, with two rows on or after NOW."""
    times = pd.date_range("2012-11-22", periods=101, freq="D", tz="UTC")
    return pd.DataFrame({"t": times, "x": range(101)}).sample(frac=1, random_state=0).reset_index(drop=True)


def test_all_keeps_every_row_before_now_oldest_first(daily: pd.DataFrame) -> None:
    rows, weights = select_training_rows(daily, RetrainingConfig(data="all"), NOW, "t")
    assert weights is None
    assert rows["x"].tolist() == list(range(99))  # 2013-03-01 and 03-02 are not known yet
    assert rows["t"].is_monotonic_increasing and rows["t"].max() < NOW


def test_recent_keeps_max_age_and_max_rows_the_latest(daily: pd.DataFrame) -> None:
    rows, _ = select_training_rows(daily, RetrainingConfig(data="recent", max_age="28D"), NOW, "t")
    assert rows["x"].tolist() == list(range(71, 99))  # 2013-02-01 .. 02-28
    rows, _ = select_training_rows(daily, RetrainingConfig(data="recent", max_age="28D", max_rows=5), NOW, "t")
    assert rows["x"].tolist() == list(range(94, 99))
    rows, _ = select_training_rows(daily, RetrainingConfig(data="all", max_rows=10, max_age="1D"), NOW, "t")
    assert rows["x"].tolist() == list(range(89, 99))  # max_age applies to recent only


def test_recency_weights_halve_at_the_half_life_and_average_one(daily: pd.DataFrame) -> None:
    rows, weights = select_training_rows(daily, RetrainingConfig(data="all", recency_half_life="10D"), NOW, "t")
    assert weights is not None and weights.shape == (len(rows),)
    assert weights.mean() == pytest.approx(1.0)
    ages = (NOW - rows["t"]).dt.days.to_numpy()
    assert np.all(np.diff(weights) > 0)  # newer rows weigh more
    ratio = weights[ages == 11][0] / weights[ages == 1][0]
    assert ratio == pytest.approx(0.5)


def test_without_a_time_column_rows_are_taken_in_order() -> None:
    frame = pd.DataFrame({"x": range(50)})
    rows, weights = select_training_rows(frame, RetrainingConfig(data="recent", max_rows=7), NOW, None)
    assert rows["x"].tolist() == list(range(43, 50)) and weights is None
    assert len(select_training_rows(frame, RetrainingConfig(data="all"), NOW, None)[0]) == 50
    with pytest.raises(DataError, match="retraining.recency_half_life needs data.timestamp"):
        select_training_rows(frame, RetrainingConfig(recency_half_life="7D"), NOW, None)
    with pytest.raises(DataError, match="needs retraining.max_rows"):
        select_training_rows(frame, RetrainingConfig(data="recent"), NOW, None)


def test_the_config_names_a_bad_policy_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="retraining.max_age.*not a positive duration"):
        make_config(tmp_path, retraining={"max_age": "four weeks"})
    with pytest.raises(ConfigError, match="retraining.data recent needs retraining.max_age or retraining.max_rows"):
        make_config(tmp_path, retraining={"data": "recent", "max_age": None})
    assert make_config(tmp_path).retraining.data == "all"


def test_sample_weights_reach_the_training_loss(flights_jan: pd.DataFrame, tmp_path: Path) -> None:
    """The same first batch from the same weights: weights of 2 double its loss, weights of 1 change nothing."""
    config = make_config(tmp_path, training={"max_steps": 2, "baseline": False})
    frame = flights_jan.head(1500)
    plain = train(frame, config, stages=1, progress=False)
    ones = train(frame, config, stages=1, progress=False, sample_weights=np.ones(len(frame)))
    twos = train(frame, config, stages=1, progress=False, sample_weights=np.full(len(frame), 2.0))
    assert ones.losses == plain.losses and not plain.weighted and ones.weighted
    assert twos.losses[0] == pytest.approx(2 * plain.losses[0], rel=1e-6)


def test_weighted_pipeline_training_equals_one_process(flights_jan: pd.DataFrame, tmp_path: Path) -> None:
    """Weights travel with the target through every microbatch: two stages (in this process) learn what one does."""
    config = make_config(tmp_path, training={"max_steps": 4, "launcher": "single_process", "schedule": "LoopedBFS",
                                             "baseline": False})
    frame = flights_jan.head(1500)
    weights = np.linspace(0.1, 3.0, len(frame))
    one = train(frame, config, stages=1, progress=False, sample_weights=weights)
    two = train(frame, config, stages=2, progress=False, sample_weights=weights)
    assert one.losses == pytest.approx(two.losses, rel=1e-5)
    for name, tensor in one.state.items():
        torch.testing.assert_close(tensor, two.state[name], rtol=1e-5, atol=1e-6)


def test_warm_start_starts_from_the_champions_weights(flights_jan: pd.DataFrame, tmp_path: Path) -> None:
    config = make_config(tmp_path, training={"max_steps": 3, "baseline": False})
    champion = train(flights_jan, config, stages=1, progress=False, seed=1)  # it knows every category below
    later = flights_jan.iloc[800:3200].reset_index(drop=True)  # within the champion's training rows (not holdout)
    warm = train(later, config, stages=1, progress=False, warm_start=WarmStart(champion.spec, champion.state, "v1"))
    scratch = train(later, config, stages=1, progress=False)
    assert warm.start == "warm start from v1" and scratch.start == "scratch"
    # Step 0's loss is the champion's own loss on the first batch (its spec encodes the rows).
    fit = later.iloc[:warm.train_rows]
    rows = epoch_order(len(fit), config.training.seed, 0)[:config.training.batch_size]
    net = champion.model().train()
    with torch.no_grad():
        expected = torch.nn.functional.binary_cross_entropy_with_logits(
            net(encode(fit, champion.spec)[rows]), encode_target(fit, champion.spec)[rows])
    assert warm.losses[0] == pytest.approx(float(expected), rel=1e-5)
    assert abs(scratch.losses[0] - warm.losses[0]) > 1e-3
    assert warm.spec == champion.spec


def test_warm_start_falls_back_to_scratch_and_says_why(flights_jan: pd.DataFrame, tmp_path: Path) -> None:
    config = make_config(tmp_path, training={"max_steps": 1, "baseline": False})
    without_ua = flights_jan[flights_jan["carrier"] != "UA"].reset_index(drop=True)
    champion = train(without_ua, config, stages=1, progress=False)  # every carrier of January but UA
    result = train(flights_jan.head(1500), config, stages=1, progress=False,
                   warm_start=WarmStart(champion.spec, champion.state, "champion v1"))
    assert result.start.startswith("scratch: no warm start from champion v1: column carrier has 1 categor")
    assert "'UA'" in result.start and result.spec != champion.spec


@pytest.mark.slow
def test_the_deployed_retraining_trains_on_all_labelled_history(flights: pd.DataFrame, tmp_path: Path,
                                                                 prefect_api: None) -> None:
    """retraining.data all: every labelled window before the gate trains (five weeks, where the old default took
    the last four); the version's lineage and the run's params say so."""
    from driftloop.flows.deployments import retrain_from_log
    from driftloop.flows.training import training_pipeline
    from driftloop.registry.store import mlflow_client, version_tags
    from driftloop.serving.prediction_log import PredictionLog
    from driftloop.state import prediction_log_path

    config = make_config(tmp_path / "state", model={"name": "policy-test", "hidden": 16, "blocks": 2},
                         training={"stages": 1, "epochs": 2},
                         monitoring={"window": "7D", "min_labelled_rows": 100}, retraining={"data": "all"})
    times = flights["time_hour"]
    winter = flights[times < pd.Timestamp("2013-04-01", tz="UTC")].sample(6000, random_state=0).sort_values(
        "time_hour").reset_index(drop=True)
    winter.to_parquet(tmp_path / "winter.parquet", index=False)
    assert training_pipeline(config, str(tmp_path / "winter.parquet"), progress=False).model is not None
    start = pd.Timestamp("2013-04-01", tz="UTC")  # a Monday: six whole weeks
    spring = flights[(times >= start) & (times < start + pd.Timedelta(days=42))].sample(
        6000, random_state=1).sort_values("time_hour").reset_index(drop=True)
    with PredictionLog(prediction_log_path(config)) as log:
        ids = log.append(spring[config.data.features].to_dict("records"), [0.5] * len(spring), "1",
                         event_times=[t.isoformat() for t in spring["time_hour"]])
        log.attach_labels(ids, spring["arr_delayed"].astype(float).tolist())
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config.model_dump(mode="json")))

    outcome = retrain_from_log(str(config_path))

    assert outcome.model is not None, outcome
    gate_start = start + pd.Timedelta(days=35)
    trained_on = spring[spring["time_hour"] < gate_start]
    tags = version_tags(config, outcome.model.model_version)
    assert int(tags["data.rows"]) == len(trained_on)  # all five weeks before the gate week
    assert pd.Timestamp(tags["data.start"]) == trained_on["time_hour"].min()
    client = mlflow_client(config)
    params = client.get_run(outcome.model.run_id).data.params
    assert params["retraining.data"] == "all" and params["training.sample_weights"] == "False"
    total = int(params["train_rows"]) + int(params["holdout_rows"])
    assert total == len(trained_on), json.dumps(params)
