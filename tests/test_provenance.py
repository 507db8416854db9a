"""Provenance: batch records, the lineage chain of a version, validation reports in MLflow and in a Prefect
artifact, and `driftloop quarantine list`."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import yaml

from driftloop.batches import list_batches, read_batch
from driftloop.cli import main
from driftloop.config import Config
from driftloop.data import read_table, sort_by_time, time_range
from driftloop.data_checks.approvals import Approval, save_approval
from driftloop.data_checks.provenance import gx_page, prediction_log_source, record_batch
from driftloop.data_checks.quarantine import quarantine
from driftloop.data_checks.validate import batch_fingerprint, validate_frame
from driftloop.errors import DataError
from driftloop.flows.outcomes import RetrainingOutcome, Status, TrainingOutcome
from driftloop.serving.prediction_log import PredictionLog
from driftloop.state import batches_dir, prediction_log_path
from tests.helpers import make_config

PII_COLUMN = "tailnum"


def config_file(config: Config, folder: Path) -> Path:
    """The config as a YAML file, for the CLI."""
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(json.loads(config.model_dump_json())))
    return path


def cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """`driftloop …` in this process: exit code, stdout, stderr."""
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(autouse=True)
def private_prefect_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI points PREFECT_HOME at the state dir when unset: keep that out of the other tests' environment."""
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))


# --- batch records ------------------------------------------------------------------------------------------------


def test_a_batch_record_keeps_every_offer_and_no_pii_value(config: Config, flights_jan: pd.DataFrame) -> None:
    frame = sort_by_time(flights_jan.head(600), config.data)
    report = validate_frame(frame, config, name="january")
    first = record_batch(frame, report, config, name="january", source="/data/january.parquet", status="accepted")
    fingerprint = batch_fingerprint(frame)
    assert first["fingerprint"] == fingerprint and (batches_dir(config) / f"{fingerprint}.json").is_file()
    start, end = time_range(frame, config.data)
    assert first["time_range"] == {"start": start, "end": end} and first["rows"] == 600
    assert first["columns"] == list(frame.columns) and first["approval"] is None
    validation = first["validation"]
    assert validation["success"] is True and validation["summary"] == report.summary()
    assert validation["report"] == str(report.report) and Path(validation["gx_report"]) == gx_page(report.report)
    assert Path(validation["gx_report"]).is_file()
    # Offered again (a rerun): the same record, one more offer; the first is kept.
    again = record_batch(frame, report, config, name="january", source="/data/copy.parquet", status="quarantined")
    stored = read_batch(config, fingerprint)
    assert stored == again
    assert [o["source"] for o in stored["offers"]] == ["/data/january.parquet", "/data/copy.parquet"]
    assert stored["status"] == "quarantined" and stored["first_offered"] == first["first_offered"]
    assert len(list_batches(config)) == 1
    text = (batches_dir(config) / f"{fingerprint}.json").read_text()
    assert not any(str(value) in text for value in frame[PII_COLUMN].dropna().unique())
    assert read_batch(config, "0123456789abcdef") is None
    with pytest.raises(DataError, match="not a batch fingerprint"):
        read_batch(config, "../../etc/passwd")


def test_prediction_log_source_names_the_ids_and_the_log(config: Config) -> None:
    source = prediction_log_source(11, 250, prediction_log_path(config))
    assert source == f"prediction log ids 11–250 ({prediction_log_path(config)})"


# --- quarantine list ----------------------------------------------------------------------------------------------


def test_quarantine_list_shows_a_failed_batch_with_its_reason(config: Config, tmp_path: Path,
                                                              flights_jan: pd.DataFrame,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    path = config_file(config, tmp_path)
    assert cli(["quarantine", "list", "--config", str(path)], capsys) == (0, "no quarantined batch\n", "")
    assert json.loads(cli(["quarantine", "list", "--config", str(path), "--json"], capsys)[1]) == {"quarantined": []}

    broken = flights_jan.head(400).drop(columns=["distance"])
    report = validate_frame(broken, config, reference=flights_jan, name="broken")
    assert not report.success
    folder = quarantine(broken, report, config, "broken")

    code, out, err = cli(["quarantine", "list", "--config", str(path)], capsys)
    assert code == 0 and err == ""
    assert "broken" in out and "column distance is missing" in out and "│ 400 " in out and "│ no " in out
    code, out, _ = cli(["quarantine", "list", "--config", str(path), "--json"], capsys)
    (entry,) = json.loads(out)["quarantined"]
    assert code == 0 and set(entry) >= {"name", "path", "time", "rows", "reasons", "approved"}
    assert entry["name"] == "broken" and entry["path"] == str(folder) and entry["rows"] == 400
    assert entry["approved"] is False and any("column distance is missing" in r for r in entry["reasons"])
    # Once a person approved the batch (`driftloop approve`), the list says so.
    save_approval(config, Approval(fingerprint=batch_fingerprint(broken), who="ana", at="2026-11-27T12:00:00+00:00",
                                   reason="test", overrides=[]))
    assert "│ yes " in cli(["quarantine", "list", "--config", str(path)], capsys)[1]


def test_lineage_without_any_version_exits_2(config: Config, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(["lineage", "1", "--config", str(config_file(config, tmp_path))], capsys)
    assert code == 2 and out == "" and "Traceback" not in err
    assert "has no version 1" in err and "run `driftloop train`" in err


# --- the loop: a first model, a quarantined batch, a retrained version from the prediction log ------------------


@dataclass(frozen=True)
class Loop:
    """What the module's one run of the flows left behind."""

    config: Config
    config_path: Path
    first: TrainingOutcome  # training_pipeline's outcome on the first batch
    refused: TrainingOutcome  # its outcome on a broken batch
    retrained: RetrainingOutcome  # retraining_flow's outcome on logged traffic
    first_batch: pd.DataFrame  # the first batch as the flow validated it
    log_source: str


@pytest.fixture(scope="module")
def loop(flights_jan: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory, prefect_api: None) -> Iterator[Loop]:
    """Train v1 on a file, refuse a broken file, log traffic with labels, retrain v2 on it (tiny, one process)."""
    from driftloop.flows.retraining import retraining_flow
    from driftloop.flows.training import training_pipeline

    folder = tmp_path_factory.mktemp("loop")
    config = make_config(folder / "state", model={"hidden": 8, "blocks": 2}, training={"stages": 1})
    first_path, broken_path = folder / "first.parquet", folder / "broken.csv"
    flights_jan.head(1500).to_parquet(first_path, index=False)
    flights_jan.iloc[:400].drop(columns=["distance"]).to_csv(broken_path, index=False)
    first = training_pipeline(config, str(first_path), progress=False)
    refused = training_pipeline(config, str(broken_path), progress=False)
    traffic = flights_jan.iloc[1500:3500]
    with PredictionLog(prediction_log_path(config)) as log:
        ids = log.append(traffic[config.data.features].to_dict("records"), [0.5] * len(traffic),
                         first.model.model_version, event_times=[t.isoformat() for t in traffic[config.data.timestamp]])
        log.attach_labels(ids, traffic[config.data.target].astype(float).tolist())
    retrained = retraining_flow(config, ids[0], ids[999], ids[1000], ids[-1], progress=False)
    yield Loop(config, config_file(config, folder), first, refused, retrained,
               sort_by_time(read_table(first_path), config.data),
               prediction_log_source(ids[0], ids[999], prediction_log_path(config)))


@pytest.mark.slow
def test_training_records_its_batch_and_the_version_points_to_it(loop: Loop) -> None:
    from driftloop.registry.store import version_tags

    config, frame = loop.config, loop.first_batch
    assert loop.first.status is Status.TRAINED and loop.first.model.model_version == "1"
    assert loop.refused.status is Status.QUARANTINED and loop.refused.refusal.quarantine.is_dir()
    fingerprint = batch_fingerprint(frame)
    record = read_batch(config, fingerprint)
    assert record is not None and record["status"] == "accepted" and record["rows"] == 1500
    assert record["source"] == str(Path(loop.config_path.parent / "first.parquet").resolve())
    start, end = time_range(frame, config.data)
    assert record["time_range"] == {"start": start, "end": end}
    assert record["validation"]["success"] is True and Path(record["validation"]["report"]).is_file()
    assert record["offers"][-1]["model"] == {"name": config.model.name, "version": "1",
                                             "run_id": loop.first.model.run_id}
    tags = version_tags(config, "1")
    assert json.loads(tags["data.batches"]) == [fingerprint] and tags["data.fingerprint"] == fingerprint
    # The retrained version's batch came from the prediction log, and says so.
    assert loop.retrained.status is Status.TRAINED and loop.retrained.gate is not None
    (batch,) = json.loads(version_tags(config, loop.retrained.model.model_version)["data.batches"])
    retrain_record = read_batch(config, batch)
    assert retrain_record["source"] == loop.log_source and retrain_record["rows"] == 1000
    # The refused batch is recorded as quarantined, with the reason and the quarantine folder.
    refused = [r for r in list_batches(config) if r["status"] == "quarantined"]
    assert len(refused) == 1 and refused[0]["quarantine"] == str(loop.refused.refusal.quarantine)
    assert any("column distance is missing" in r for r in refused[0]["validation"]["reasons"])


@pytest.mark.slow
def test_the_run_holds_the_validation_reports_and_the_prefect_artifact_links_them(loop: Loop, tmp_path: Path) -> None:
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from driftloop.flows.training import validation_artifact_key
    from driftloop.registry.store import REPORT_URI_TAG, mlflow_client

    config = loop.config
    client = mlflow_client(config)
    run_id = loop.first.model.run_id
    report = loop.first.validation.report
    logged = sorted(a.path for a in client.list_artifacts(run_id, "validation"))
    assert logged == sorted([f"validation/{report.name}", f"validation/{gx_page(report).name}"])
    uri = client.get_run(run_id).data.tags[REPORT_URI_TAG]
    assert uri.endswith(f"/validation/{report.name}")
    assert client.get_model_version(config.model.name, "1").tags[REPORT_URI_TAG] == uri
    copy = Path(client.download_artifacts(run_id, f"validation/{report.name}", str(tmp_path)))
    assert copy.read_text() == report.read_text()

    key = validation_artifact_key(config)
    with get_client(sync_client=True) as prefect:
        artifacts = prefect.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    texts = [a.data for a in artifacts]
    assert len(texts) == 3  # v1's batch, the refused batch, v2's batch
    (trained,) = [t for t in texts if run_id in t]
    assert "passed" in trained and gx_page(report).as_uri() in trained and report.as_uri() in trained
    assert uri in trained and f"runs:/{run_id}" in trained
    (failed,) = [t for t in texts if "FAILED" in t]
    assert "column distance is missing" in failed and "quarantine folder" in failed


@pytest.mark.slow
def test_lineage_prints_the_chain_back_to_the_first_model(loop: Loop, capsys: pytest.CaptureFixture[str]) -> None:
    version = loop.retrained.model.model_version
    code, out, err = cli(["lineage", version, "--config", str(loop.config_path)], capsys)
    assert code == 0, err
    assert f"lineage of v{version}" in out and loop.log_source in out and "first.parquet" in out
    assert "trained while v1 was champion" in out and "first model: no champion before it" in out
    assert out.index(f"v{version}") < out.index("first.parquet")  # newest first
    code, out, _ = cli(["lineage", version, "--config", str(loop.config_path), "--json"], capsys)
    view = json.loads(out)
    assert code == 0 and [e["version"] for e in view["chain"]] == [version, "1"]
    newest, first = view["chain"]
    assert newest["parent"] == "1" and first["parent"] is None and "champion" in first["aliases"] + newest["aliases"]
    assert newest["gate"]["decision"] in {"promoted", "rejected"} and first["gate"]["decision"] == "promoted"
    assert newest["batches"][0]["source"] == loop.log_source and newest["batches"][0]["record"] is True
    assert first["batches"][0]["fingerprint"] == batch_fingerprint(loop.first_batch)
    assert first["batches"][0]["validation"]["success"] is True and first["code_version"] and first["config_hash"]


@pytest.mark.slow
def test_lineage_of_an_unknown_version_names_the_valid_ones(loop: Loop, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(["lineage", "99", "--config", str(loop.config_path)], capsys)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "no version 99" in err and "versions: 1, 2" in err


@pytest.mark.slow
def test_lineage_without_the_batch_records_still_prints_what_mlflow_knows(
        loop: Loop, capsys: pytest.CaptureFixture[str]) -> None:
    records = batches_dir(loop.config)
    aside = records.with_name("batches-aside")
    shutil.move(records, aside)  # the state dir wiped, MLflow kept
    try:
        code, out, err = cli(["lineage", "2", "--config", str(loop.config_path)], capsys)
        assert code == 0, err
        assert out.count("record missing") == 2 and "first model: no champion before it" in out
        code, out, _ = cli(["lineage", "2", "--config", str(loop.config_path), "--json"], capsys)
        first = json.loads(out)["chain"][1]["batches"][0]
        assert first["record"] is False and first["rows"] == 1500 and first["source"] is None
        assert first["validation"]["success"] is True and first["validation"]["report"] == str(
            loop.first.validation.report)
        assert first["time_range"]["start"] == time_range(loop.first_batch, loop.config.data)[0]
    finally:
        shutil.rmtree(records, ignore_errors=True)
        shutil.move(aside, records)
