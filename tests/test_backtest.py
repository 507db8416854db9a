"""`driftloop backtest`: four policies replayed on the same windows, each scored before the window's labels are used."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from driftloop.config import Config
from driftloop.data import Window
from driftloop.flows.backtest import POLICIES, Backtest, PolicyRun, load_replay, replay
from driftloop.flows.summary import WindowRow, loop_worth, worth_table, write_summary
from tests.helpers import assert_one_clean_error, cli_here, make_config

TRAIN_UNTIL = "2013-01-22"


@pytest.fixture(scope="module")
def table(flights: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2,400 real flights of January and February 2013 in a Parquet file: three weeks to train on, then windows."""
    times = flights["time_hour"]
    rows = flights[(times >= pd.Timestamp("2013-01-01", tz="UTC")) & (times < pd.Timestamp("2013-02-12", tz="UTC"))]
    path = tmp_path_factory.mktemp("backtest") / "flights.parquet"
    rows.sample(2400, random_state=0).sort_values("time_hour", kind="stable").to_parquet(path, index=False)
    return path


def small_config(state: Path) -> Config:
    """A small, quick network; weekly windows; the policy judges windows of a few hundred labels."""
    return make_config(state, model={"hidden": 16, "blocks": 1, "embedding_dim": 4},
                       training={"epochs": 2, "batch_size": 128},
                       monitoring={"window": "7D", "min_labelled_rows": 50, "calibration_draws": 1000})


def write_config(config: Config, folder: Path) -> Path:
    """The config as a YAML file for the command line."""
    path = folder / "config.yaml"
    path.write_text(json.dumps(config.model_dump(mode="json")))
    return path


@pytest.mark.slow
def test_backtest_json_has_all_four_policies_over_the_same_windows_and_a_page(table, tmp_path, capsys,
                                                                              restored_environ):
    config = small_config(tmp_path / "state")
    out = tmp_path / "page"
    result = cli_here(capsys, "backtest", "--config", str(write_config(config, tmp_path)), "--data", str(table),
                      "--train-until", TRAIN_UNTIL, "--out", str(out), "--json")
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert set(payload) == {"metric", "windows", "policies"} and payload["metric"] == "auc"
    windows = len(payload["windows"])
    assert windows == len(load_replay(config, table, TRAIN_UNTIL)[1]) >= 3
    assert list(payload["policies"]) == list(POLICIES)
    for name, figures in payload["policies"].items():
        reasons = {"reasons"} if name == "policy" else set()  # the deployed policy says why, window by window
        assert set(figures) == {"per_window", "mean", "min", "retrains", "promotions", "train_seconds", *reasons}
        assert len(figures["per_window"]) == windows, name
        known = [v for v in figures["per_window"] if v is not None]
        assert figures["mean"] == pytest.approx(sum(known) / len(known))
        assert figures["min"] == pytest.approx(min(known))
        assert 0 <= figures["promotions"] <= figures["retrains"] <= windows - 1
        assert figures["train_seconds"] > 0
    policies = payload["policies"]
    reasons = policies["policy"]["reasons"]
    # One decision after each window but the last (whose labels would teach a model that scores nothing).
    assert len(reasons) == windows - 1 and all("drift" in reason for reason in reasons)
    assert sum("; gate: " in reason for reason in reasons) == policies["policy"]["retrains"]
    assert policies["never"]["retrains"] == 0
    # Retrained after every window but the last (a model trained on the last would score nothing).
    assert policies["every"]["retrains"] == policies["gbdt_every"]["retrains"] == windows - 1
    # Every policy starts from the same first network (gbdt_every from its own first HistGB).
    first = {name: figures["per_window"][0] for name, figures in policies.items()}
    assert first["never"] == first["every"] == first["policy"]
    page = (out / "backtest.html").read_text()
    assert page.count('src="data:image/png;base64,') == 1 and len(page) > 10_000
    for name in POLICIES:
        assert f"<td>{name}</td>" in page


@pytest.mark.slow
def test_each_window_is_scored_before_its_labels_are_used(table, tmp_path):
    """Flipping one window's labels flips its score (AUC → 1 - AUC) and changes nothing before it: no model that
    scored it had learnt from it. Every model that scores a window learnt only from rows before the window."""
    config = small_config(tmp_path / "state")
    history, windows = load_replay(config, table, TRAIN_UNTIL)
    windows = windows[:3]
    target = config.data.target
    middle = windows[1]
    flipped = [windows[0], Window(middle.index, middle.start, middle.end,
                                  middle.frame.assign(**{target: 1 - middle.frame[target]})), windows[2]]
    plain, changed = replay(config, history, windows, POLICIES), replay(config, history, flipped, POLICIES)
    for name in POLICIES:
        ours, theirs = plain.runs[name].per_window, changed.runs[name].per_window
        assert theirs[0] == pytest.approx(ours[0], abs=1e-12), name
        assert theirs[1] == pytest.approx(1 - ours[1], abs=1e-9), name
        for window, seen in zip(windows, plain.runs[name].trained_through, strict=True):
            assert seen < window.start, (name, window.index)


@pytest.mark.parametrize(("arguments", "fragment"), [
    (["--train-until", "2020-01-01"], "outside the data"),
    (["--train-until", "2012-01-01"], "outside the data"),
    (["--train-until", "next week"], "not a date"),
    (["--train-until", TRAIN_UNTIL, "--policies", "sometimes"], "unknown policy sometimes"),
])
def test_bad_input_is_one_line_and_exit_2(table, tmp_path, capsys, restored_environ, arguments, fragment):
    config = write_config(small_config(tmp_path / "state"), tmp_path)
    result = cli_here(capsys, "backtest", "--config", str(config), "--data", str(table), *arguments)
    assert result.returncode == 2
    assert_one_clean_error(result, fragment)


def test_a_table_without_its_time_column_is_refused(table, tmp_path, capsys, restored_environ):
    rows = tmp_path / "untimed.parquet"
    pd.read_parquet(table).drop(columns=["time_hour"]).to_parquet(rows)
    config = write_config(small_config(tmp_path / "state"), tmp_path)
    result = cli_here(capsys, "backtest", "--config", str(config), "--data", str(rows), "--train-until", TRAIN_UNTIL)
    assert result.returncode == 2
    assert_one_clean_error(result, "time_hour")


def test_the_summary_shows_the_loop_beside_never_and_every(tmp_path):
    """The demo's summary (terminal table and HTML) puts the loop's mean weekly metric and its retrainings beside
    the compared policies' on the same windows."""
    starts = [pd.Timestamp("2013-04-01", tz="UTC") + pd.Timedelta(days=7 * i) for i in range(3)]
    rows = [WindowRow(f"w{i}", start, 100, 0.1, False, auc, "1", event, "")
            for i, (start, auc, event) in enumerate(zip(starts, [0.70, None, 0.74],
                                                        ["", "retrained v2, PROMOTED", "retrained v3, rejected"],
                                                        strict=True))]
    comparison = Backtest("auc", starts, {
        "never": PolicyRun("never", [0.69, 0.68, 0.67]),
        "every": PolicyRun("every", [0.69, 0.71, 0.72], retrains=[0, 1], promotions=[0, 1])})
    lines = {line.policy: line for line in loop_worth(rows, comparison)}
    loop = lines["loop (monitor, policy, gate)"]
    assert loop.mean == pytest.approx(0.72) and loop.retrains == 2
    assert lines["never"].mean == pytest.approx(0.68) and lines["never"].retrains == 0
    assert lines["every"].mean == pytest.approx(0.7067, abs=1e-4) and lines["every"].retrains == 2
    page, _ = write_summary(rows, tmp_path / "summary.html", make_config(tmp_path / "state"), comparison)
    text = page.read_text()
    assert '<table id="worth">' in text
    assert "<tr><td>loop (monitor, policy, gate)</td><td>0.7200</td><td>2</td></tr>" in text
    assert "<tr><td>every</td><td>0.7067</td><td>2</td></tr>" in text
    assert worth_table(rows, comparison, "auc").row_count == 3
