"""The release gate (recent window, holdout, slices), champion history, rollback and the models/label commands."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml

from driftloop.config import Config
from driftloop.errors import DataError, RegistryError
from driftloop.registry.gate import Evidence, apply_gate, evaluate, judge, shadow_evidence
from driftloop.registry.history import champion_stack, rollback
from driftloop.registry.store import (
    CHALLENGER,
    CHAMPION,
    alias_version,
    champion_history,
    load_version,
    mlflow_client,
    promote,
    register,
    set_alias,
    version_tags,
)
from driftloop.serving.prediction_log import PredictionLog
from driftloop.state import prediction_log_path
from driftloop.training.artifacts import LoadedModel
from driftloop.training.trainer import TrainResult
from tests.helpers import (
    assert_one_clean_error,
    cli_here,
    free_port,
    lineage_for,
    make_config,
    rows_json,
    run_cli,
    scrambled,
    wait_for,
)

# --- the rule on fixed figures -------------------------------------------------------------------------------


def test_margin_refuses_a_small_win_and_passes_a_clear_one() -> None:
    small = judge("auc", 0.01, 0.02, Evidence("recent", 5000, 0.705, 0.700), None, [])
    assert not small.promoted and "not better by more than 0.01 on recent rows" in small.reason
    assert "kept as challenger" in small.reason and "5,000 recent rows" in small.reason
    clear = judge("auc", 0.01, 0.02, Evidence("recent", 5000, 0.72, 0.70), None, [])
    assert clear.promoted and clear.reason.endswith("→ promoted")
    # Lower is better for errors: a smaller rmse wins.
    assert judge("rmse", 0.0, 0.0, Evidence("recent", 10, 1.0, 2.0), None, []).promoted
    assert not judge("rmse", 0.0, 0.0, Evidence("recent", 10, 2.0, 1.0), None, []).promoted


def test_a_loss_on_the_holdout_refuses() -> None:
    verdict = judge("auc", 0.0, 0.02, Evidence("recent", 6398, 0.7236, 0.6666),
                    Evidence("holdout", 800, 0.69, 0.71), [])
    assert not verdict.promoted
    assert "0.6900 vs 0.7100 on 800 holdout rows" in verdict.reason and "on holdout rows" in verdict.reason
    undefined = judge("auc", 0.0, 0.02, Evidence("recent", 100, 0.8, 0.7), Evidence("holdout", 5, None, None), [])
    assert not undefined.promoted and "undefined on the holdout rows" in undefined.reason


def test_a_slice_worse_beyond_tolerance_refuses_and_is_named() -> None:
    recent, holdout = Evidence("recent", 6000, 0.74, 0.70), Evidence("holdout", 800, 0.73, 0.70)
    slices = [Evidence("carrier=UA", 900, 0.669, 0.700), Evidence("carrier=DL", 800, 0.75, 0.70),
              Evidence("carrier=AA", 700, 0.69, 0.70)]  # AA: worse by 0.01, within tolerance
    verdict = judge("auc", 0.0, 0.02, recent, holdout, slices)
    assert not verdict.promoted and [s.name for s in verdict.failed_slices] == ["carrier=UA"]
    assert "slice carrier=UA worse by 0.031 > 0.02" in verdict.reason
    assert judge("auc", 0.0, 0.02, recent, holdout, slices[1:]).promoted


def test_live_shadow_evidence_is_one_more_body_the_challenger_must_win() -> None:
    recent, holdout = Evidence("recent", 900, 0.70, 0.60), Evidence("holdout", 400, 0.71, 0.62)
    losing_live = Evidence("live shadow", 3000, 0.58, 0.63)
    refused = judge("auc", 0.0, 0.02, recent, holdout, [], losing_live)
    assert not refused.promoted and "not better on live shadow rows" in refused.reason
    assert "0.5800 vs 0.6300 on 3,000 live shadow rows" in refused.reason
    assert judge("auc", 0.0, 0.02, recent, holdout, [], Evidence("live shadow", 3000, 0.66, 0.63)).promoted


def test_shadow_evidence_counts_only_labelled_rows_of_that_pair(tmp_path: Path) -> None:
    config = make_config(tmp_path, registry={"min_shadow_rows": 4})
    logged = pd.DataFrame({
        "model_version": ["1"] * 6 + ["3"] * 2,
        "shadow_version": ["2", "2", "2", "2", "2", None, "2", "2"],
        "label": [1.0, 0.0, 1.0, 0.0, np.nan, 1.0, 1.0, 0.0],
        "prediction": [0.6, 0.4, 0.4, 0.6, 0.5, 0.9, 0.5, 0.5],
        "shadow_prediction": [0.9, 0.1, 0.8, 0.2, 0.5, np.nan, 0.1, 0.9],
    })
    live = shadow_evidence(config, logged, "2", "1")
    assert live is not None and live.rows == 4 and (live.challenger, live.champion) == (1.0, 0.5)
    assert shadow_evidence(config, logged, "2", "3") is None  # 2 rows < min_shadow_rows
    assert shadow_evidence(config, logged, "4", "1") is None


def test_champion_stack_pops_on_rollback() -> None:
    history = [{"version": "1", "event": "first"}, {"version": "2", "event": "promoted"},
               {"version": "3", "event": "promoted"}, {"version": "2", "event": "rollback"}]
    assert champion_stack(history, "2") == ["1", "2"]
    assert champion_stack(history + [{"version": "1", "event": "rollback"}], "1") == ["1"]
    # The alias moved by hand, outside the history: the current champion still comes last.
    assert champion_stack(history, "4") == ["1", "2", "4"]


# --- evidence from predictions (fixed scores, no MLflow) ----------------------------------------------------------


def synthetic_window(rows_per_carrier: dict[str, int], seed: int = 0) -> pd.DataFrame:
    """Labelled rows with a carrier column and two versions' predictions in columns `new` and `old`."""
    rng = np.random.default_rng(seed)
    carriers = np.concatenate([[c] * n for c, n in rows_per_carrier.items()])
    truth = rng.integers(0, 2, len(carriers))
    old = truth * 0.6 + rng.normal(0, 0.5, len(carriers))  # a fair champion everywhere
    new = truth * 1.2 + rng.normal(0, 0.5, len(carriers))  # a much better challenger ...
    return pd.DataFrame({"carrier": carriers, "arr_delayed": truth, "old": old, "new": new})


def spoil(frame: pd.DataFrame, carrier: str, seed: int = 1) -> pd.DataFrame:
    """The challenger's predictions on one carrier replaced by noise (AUC about 0.5 there)."""
    noise = np.random.default_rng(seed).normal(0, 1, len(frame))
    return frame.assign(new=np.where(frame["carrier"] == carrier, noise, frame["new"]))


def by_column(name: str):  # noqa: ANN201 - a Scorer
    return lambda frame: frame[name].to_numpy()


@pytest.fixture
def slice_config(tmp_path: Path) -> Config:
    return make_config(tmp_path / "state", registry={"gate_slices": ["carrier"], "min_slice_rows": 200,
                                                     "slice_tolerance": 0.02})


def test_slice_with_enough_rows_refuses_a_challenger_better_overall(slice_config: Config) -> None:
    window = spoil(synthetic_window({"UA": 1500, "DL": 1500, "AA": 400}), "AA")
    decision = evaluate(slice_config, "2", "1", window, None, by_column("new"), by_column("old"))
    assert decision.challenger_score > decision.champion_score + 0.05  # better overall ...
    assert not decision.promoted  # ... but not on AA
    assert [s.name for s in decision.failed_slices] == ["carrier=AA"] and decision.slices_judged == 3
    assert "slice carrier=AA worse by" in decision.reason and decision.holdout is None


def test_small_slice_is_not_judged(slice_config: Config) -> None:
    window = spoil(synthetic_window({"UA": 1500, "DL": 1500, "AA": 150}), "AA")  # AA below min_slice_rows
    decision = evaluate(slice_config, "2", "1", window, None, by_column("new"), by_column("old"))
    assert decision.promoted, decision.reason
    assert decision.slices_judged == 2 and "carrier=AA" not in {s.name for s in decision.slices}


def test_holdout_evidence_can_refuse_a_recent_winner(slice_config: Config) -> None:
    window = synthetic_window({"UA": 1000, "DL": 1000}, seed=2)
    swapped = synthetic_window({"UA": 500}, seed=3).rename(columns={"new": "old", "old": "new"})
    decision = evaluate(slice_config, "2", "1", window, swapped, by_column("new"), by_column("old"))
    assert decision.challenger_score > decision.champion_score and not decision.promoted
    assert decision.holdout is not None and decision.holdout.challenger < decision.holdout.champion
    assert "on holdout rows" in decision.reason
    same = evaluate(slice_config, "2", "1", window, window, by_column("new"), by_column("old"))
    assert same.promoted


def test_unknown_slice_column_names_the_setting(tmp_path: Path) -> None:
    config = make_config(tmp_path / "state", registry={"gate_slices": ["airline"]})
    with pytest.raises(DataError, match="registry.gate_slices.*airline"):
        evaluate(config, "2", "1", synthetic_window({"UA": 300}), None, by_column("new"), by_column("old"))


# --- the gate in MLflow ------------------------------------------------------------------------------------------


@pytest.mark.slow  # several registrations and gates: more than a quick test's CPU
def test_gate_promotes_better_refuses_worse_and_records_both(config: Config, trained: TrainResult,  # noqa: F811
                                                            flights_jan: pd.DataFrame,
                                                            flights_jul: pd.DataFrame) -> None:
    lineage = lineage_for(config, flights_jan)
    weak = register(config, scrambled(trained), lineage, flights_jan)
    assert weak.champion
    good = register(config, trained, lineage_for(config, flights_jan), flights_jan)
    assert version_tags(config, good.version)["parent.champion"] == weak.version
    promoted = apply_gate(config, good.version, flights_jul)
    assert promoted.promoted, promoted.reason
    assert alias_version(config, CHAMPION) == good.version
    # The challenger's own holdout: the last 20% of its 4,000 stored training rows, all stored.
    assert promoted.holdout is not None and promoted.holdout.rows == 800 and promoted.holdout_source == "exact"
    assert promoted.holdout.challenger > promoted.holdout.champion
    history = champion_history(config)
    assert [(e["version"], e["event"], e["previous"]) for e in history] == [
        (weak.version, "first", None), (good.version, "promoted", weak.version)]
    assert "champion.since" in version_tags(config, good.version)
    assert version_tags(config, weak.version)["champion.until"] == history[-1]["at"]

    worse = register(config, scrambled(trained), lineage, flights_jan)
    refused = apply_gate(config, worse.version, flights_jul)
    assert not refused.promoted and refused.challenger_score < refused.champion_score
    assert alias_version(config, CHAMPION) == good.version and alias_version(config, CHALLENGER) == worse.version
    assert len(champion_history(config)) == 2
    tags = version_tags(config, worse.version)
    assert tags["gate.decision"] == "rejected" and tags["gate.reason"] == refused.reason
    assert "kept as challenger" in tags["gate.reason"] and "vs champion" in tags["gate.reason"]
    assert float(tags["gate.challenger_score"]) == pytest.approx(refused.challenger_score, abs=1e-6)
    assert float(tags["gate.champion_score"]) == pytest.approx(refused.champion_score, abs=1e-6)
    assert tags["gate.champion_version"] == good.version and tags["gate.window_rows"] == str(len(flights_jul))
    assert tags["gate.holdout_rows"] == "800" and "gate.holdout_challenger_score" in tags
    details = json.loads(tags["gate.details"])
    assert details["promoted"] is False and details["holdout"]["rows"] == 800 and len(tags["gate.details"]) <= 5000
    client = mlflow_client(config)
    run_id = client.get_model_version(config.model.name, worse.version).run_id
    assert "gate/decision.json" in [a.path for a in client.list_artifacts(run_id, "gate")]


def test_gate_margin_refuses_a_small_win_on_real_evidence(tmp_path: Path) -> None:
    window = synthetic_window({"UA": 3000}, seed=4)
    slightly = window.assign(new=window["old"] + np.random.default_rng(5).normal(0, 0.05, len(window)))
    slightly = slightly.assign(new=slightly["new"] + 0.06 * slightly["arr_delayed"])
    strict = make_config(tmp_path / "strict", registry={"gate_margin": 0.05})
    refused = evaluate(strict, "2", "1", slightly, slightly, by_column("new"), by_column("old"))
    gain = refused.challenger_score - refused.champion_score
    assert 0 < gain < 0.05 and not refused.promoted, refused.reason
    assert "not better by more than 0.05 on recent rows" in refused.reason
    lenient = make_config(tmp_path / "lenient", registry={"gate_margin": 0.0})
    assert evaluate(lenient, "2", "1", slightly, slightly, by_column("new"), by_column("old")).promoted


# --- rollback ----------------------------------------------------------------------------------------------------


def three_champions(config: Config, result: TrainResult, frame: pd.DataFrame) -> list[str]:
    """Versions 1..3, each champion in turn (1 on registration, 2 and 3 promoted)."""
    versions = [register(config, result, lineage_for(config, frame), frame).version for _ in range(3)]
    promote(config, versions[1], "test")
    promote(config, versions[2], "test")
    return versions


@pytest.mark.slow  # three MLflow registrations: 6-8 s of CPU, over the quick limit
def test_rollback_goes_back_one_champion_at_a_time(config: Config, trained: TrainResult,  # noqa: F811
                                                   flights_jan: pd.DataFrame) -> None:
    v1, v2, v3 = three_champions(config, trained, flights_jan)
    first = rollback(config)
    assert (first.from_version, first.to_version) == (v3, v2) and alias_version(config, CHAMPION) == v2
    tags = version_tags(config, v2)
    assert tags["rollback.from"] == v3 and "rollback.at" in tags
    assert version_tags(config, v3)["rollback.to"] == v2
    last = champion_history(config)[-1]
    assert (last["version"], last["previous"], last["event"]) == (v2, v3, "rollback")
    second = rollback(config)  # further back, not forth to v3
    assert (second.from_version, second.to_version) == (v2, v1)
    with pytest.raises(RegistryError, match=f"no champion before version {v1}.*--to"):
        rollback(config)
    assert alias_version(config, CHAMPION) == v1
    # Forward again to a version rolled back from: allowed with --to, as it was champion before.
    assert rollback(config, v3).to_version == v3
    with pytest.raises(RegistryError, match="no version 99"):
        rollback(config, "99")
    with pytest.raises(RegistryError, match="champion already"):
        rollback(config, v3)


def test_rollback_with_one_champion_ever_is_refused(config: Config, trained: TrainResult,  # noqa: F811
                                                    flights_jan: pd.DataFrame, flights_jul: pd.DataFrame) -> None:
    with pytest.raises(RegistryError, match="no champion"):
        rollback(config)
    only = register(config, trained, lineage_for(config, flights_jan), flights_jan)
    loser = register(config, scrambled(trained), lineage_for(config, flights_jan), flights_jan)
    apply_gate(config, loser.version, flights_jul)
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        rollback(config)
    with pytest.raises(RegistryError, match=f"version {loser.version} was never champion"):
        rollback(config, loser.version)
    assert alias_version(config, CHAMPION) == only.version


# --- the commands ------------------------------------------------------------------------------------------------


def config_file(config: Config, tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    return path


@pytest.mark.slow
def test_models_and_rollback_commands(config: Config, tmp_path: Path, trained: TrainResult,  # noqa: F811
                                      flights_jan: pd.DataFrame, flights_jul: pd.DataFrame, restored_environ: None,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    path = config_file(config, tmp_path)
    empty = cli_here(capsys, "models", "--config", str(path))
    assert empty.returncode == 0 and "no version" in empty.stdout and len(empty.stdout.splitlines()) == 1
    assert json.loads(cli_here(capsys, "models", "--config", str(path), "--json").stdout)["versions"] == []

    weak = register(config, scrambled(trained), lineage_for(config, flights_jan), flights_jan)
    good = register(config, trained, lineage_for(config, flights_jan), flights_jan)
    apply_gate(config, good.version, flights_jul)
    loser = register(config, scrambled(trained), lineage_for(config, flights_jan), flights_jan)
    apply_gate(config, loser.version, flights_jul)

    listed = cli_here(capsys, "models", "--config", str(path), "--json")
    assert listed.returncode == 0, listed.stderr
    payload = json.loads(listed.stdout)
    assert payload["model"] == config.model.name
    assert (payload["champion"], payload["challenger"]) == (good.version, loser.version)
    versions = {v["version"]: v for v in payload["versions"]}
    assert versions[good.version]["aliases"] == [CHAMPION] and versions[loser.version]["aliases"] == [CHALLENGER]
    assert versions[weak.version]["gate"]["reason"] == "first model"
    gate = versions[loser.version]["gate"]
    assert gate["decision"] == "rejected" and gate["challenger_score"] < gate["champion_score"]
    assert gate["champion_version"] == good.version and gate["holdout_rows"] == 800
    lineage = versions[good.version]["lineage"]
    assert lineage["data.rows"] == str(len(flights_jan)) and lineage["parent.champion"] == weak.version
    assert lineage["config.hash"] == config.digest() and versions[good.version]["created"].startswith("20")
    assert [e["version"] for e in payload["history"]] == [weak.version, good.version]
    table = cli_here(capsys, "models", "--config", str(path))
    assert table.returncode == 0 and "rejected" in table.stdout and "champion history" in table.stdout

    back = cli_here(capsys, "rollback", "--config", str(path))
    assert back.returncode == 0, back.stderr
    assert back.stdout.strip() == f"champion: v{good.version} → v{weak.version} (rolled back)"
    assert alias_version(config, CHAMPION) == weak.version
    refused = cli_here(capsys, "rollback", "--config", str(path))
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert_one_clean_error(refused, "nothing to roll back to")


def shadow_logged(config: Config, window: pd.DataFrame, champion: LoadedModel, challenger_outputs: np.ndarray,
                  challenger: str) -> None:
    """`window` logged as the server logs it in shadow mode (champion answered, challenger scored), then labelled."""
    rows = window[config.data.features].to_dict("records")
    times = window[config.data.timestamp].map(lambda t: t.isoformat()).tolist()
    with PredictionLog(prediction_log_path(config)) as log:
        ids = log.append(rows, champion.predict(window).tolist(), champion.version, times, challenger,
                         challenger_outputs.tolist())
        log.attach_labels(ids, window[config.data.target].astype(float).tolist())


@pytest.mark.slow
@pytest.mark.parametrize("live_behaviour", ["as offline", "inverted"])
def test_gate_command_uses_live_shadow_evidence(tmp_path: Path, trained: TrainResult,  # noqa: F811
                                                flights_jan: pd.DataFrame, flights_jul: pd.DataFrame,
                                                live_behaviour: str, restored_environ: None,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    config = make_config(tmp_path / "state")
    path = config_file(config, tmp_path)
    weak = register(config, scrambled(trained), lineage_for(config, flights_jan), flights_jan).version
    good = register(config, trained, lineage_for(config, flights_jan), flights_jan).version
    set_alias(config, CHALLENGER, good)  # as if it had lost an earlier gate and been shadowed since
    outputs = load_version(config, good).predict(flights_jul)
    live = outputs if live_behaviour == "as offline" else 1.0 - outputs
    shadow_logged(config, flights_jul, load_version(config, weak), live, good)

    result = cli_here(capsys, "gate", "--config", str(path), "--json")
    assert result.returncode == 0, result.stderr
    decision = json.loads(result.stdout)
    assert decision["live"]["rows"] == len(flights_jul) and decision["challenger_version"] == good
    assert decision["challenger_score"] > decision["champion_score"]  # it wins on the recent window either way
    tags = version_tags(config, good)
    assert tags["gate.live_rows"] == str(len(flights_jul))
    if live_behaviour == "as offline":
        assert decision["promoted"] and alias_version(config, CHAMPION) == good
    else:
        assert not decision["promoted"] and "not better on live shadow rows" in decision["reason"]
        assert alias_version(config, CHAMPION) == weak and alias_version(config, CHALLENGER) == good
        again = cli_here(capsys, "gate", "--config", str(path), "--version", weak)
        assert_one_clean_error(again, "is the champion already")


@contextmanager
def served(path: Path, cwd: Path) -> Iterator[str]:
    """`driftloop serve` in a child process (its own session), until the block ends; yields its base URL."""
    port = free_port()
    env = {**os.environ, "DRIFTLOOP_ADMIN_TOKEN": "rollback-test-token"}
    child = subprocess.Popen([sys.executable, "-m", "driftloop.cli", "serve", "--config", str(path), "--port",
                              str(port)], cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             start_new_session=True)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(child.pid, signal.SIGTERM)
        child.wait(timeout=30)


def serving_version(base: str) -> str | None:
    """The version /healthz reports, None while the server is not answering."""
    try:
        return httpx.get(f"{base}/healthz", timeout=5).json().get("model_version")
    except httpx.TransportError:
        return None


@pytest.mark.slow
def test_the_server_follows_a_rollback_through_the_registry(tmp_path: Path, trained: TrainResult,  # noqa: F811
                                                            flights_jan: pd.DataFrame) -> None:
    config = make_config(tmp_path / "state", serving={"reload_interval_s": 0.2})
    path = config_file(config, tmp_path)
    first = register(config, trained, lineage_for(config, flights_jan), flights_jan).version
    second = register(config, trained, lineage_for(config, flights_jan), flights_jan).version
    promote(config, second, "test")
    rows = rows_json(flights_jan[config.data.features].head(3))
    with served(path, tmp_path) as base:
        wait_for(lambda: serving_version(base) == second, timeout=120)

        back = run_cli("rollback", "--config", str(path), cwd=tmp_path)
        assert back.returncode == 0, back.stderr
        wait_for(lambda: serving_version(base) == first, timeout=30)
        answer = httpx.post(f"{base}/predict", json={"rows": rows}, timeout=30).json()
        assert answer["model_version"] == first and len(answer["prediction_ids"]) == 3

        admin = {"Authorization": "Bearer rollback-test-token"}
        refused = httpx.post(f"{base}/admin/rollback", headers=admin, timeout=30)
        assert refused.status_code == 409 and "no champion before" in refused.json()["detail"]
        forth = httpx.post(f"{base}/admin/rollback", headers=admin, json={"to_version": second}, timeout=30)
        assert forth.status_code == 200, forth.text
        assert forth.json()["model_version"] == second and alias_version(config, CHAMPION) == second
        assert httpx.post(f"{base}/predict", json={"rows": rows}, timeout=30).json()["model_version"] == second
    assert [e["event"] for e in champion_history(config)][-2:] == ["rollback", "rollback"]


def logged_predictions(config: Config, frame: pd.DataFrame) -> list[int]:
    """Rows of `frame` written to the prediction log as the server would, without labels."""
    rows = frame[config.data.features].to_dict("records")
    with PredictionLog(prediction_log_path(config)) as log:
        return log.append(rows, [0.5] * len(rows), "1")


def labels_read_back(config: Config) -> pd.Series:
    with PredictionLog(prediction_log_path(config)) as log:
        return log.read()["label"]


@pytest.mark.slow
def test_label_command_attaches_labels_all_or_nothing(config: Config, tmp_path: Path,
                                                      flights_jan: pd.DataFrame) -> None:
    path = config_file(config, tmp_path)
    ids = logged_predictions(config, flights_jan.head(20))
    good = tmp_path / "labels.csv"
    pd.DataFrame({"prediction_id": ids[:10], "label": [1, 0] * 5}).to_csv(good, index=False)
    done = run_cli("label", "--config", str(path), "--file", str(good), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "labelled 10 predictions"
    assert labels_read_back(config).head(10).tolist() == [1.0, 0.0] * 5
    # The config's target name works as the label column too (Parquet here).
    by_target = tmp_path / "by_target.parquet"
    pd.DataFrame({"prediction_id": ids[10:12], config.data.target: [1, 1]}).to_parquet(by_target)
    assert run_cli("label", "--config", str(path), "--file", str(by_target), cwd=tmp_path).returncode == 0

    unknown = tmp_path / "unknown.csv"
    pd.DataFrame({"prediction_id": [ids[15], 99999], "label": [1, 1]}).to_csv(unknown, index=False)
    refused = run_cli("label", "--config", str(path), "--file", str(unknown), cwd=tmp_path)
    assert refused.returncode == 2
    assert_one_clean_error(refused, "99999", "no label was written")
    assert labels_read_back(config).iloc[12:].isna().all()  # ids[15] was not labelled either

    for name, frame, fragment in [
        ("no_label.csv", pd.DataFrame({"prediction_id": ids[:2], "value": [1, 0]}), "missing column(s) label"),
        ("words.csv", pd.DataFrame({"prediction_id": ids[:2], "label": ["yes", "no"]}), "column label, row 1"),
        ("not_binary.csv", pd.DataFrame({"prediction_id": ids[:2], "label": [0, 2]}), "row 2: 2 is not 0 or 1"),
    ]:
        bad = tmp_path / name
        frame.to_csv(bad, index=False)
        result = run_cli("label", "--config", str(path), "--file", str(bad), cwd=tmp_path)
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert_one_clean_error(result, str(bad), fragment)
    assert labels_read_back(config).iloc[12:].isna().all()
