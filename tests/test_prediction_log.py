"""The prediction log's interface, once per backend (the `log_uri` fixture: a SQLite file, and a database of the
session's private PostgreSQL cluster: those runs are slow). Real rows of the demo's flights; no mocks."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from driftloop.config import Config
from driftloop.errors import DataError
from driftloop.serving.app import create_app
from driftloop.serving.labels import attach_label_file
from driftloop.serving.log import is_postgres, log_name, open_log, open_log_at, prune_log, read_window
from driftloop.serving.log.postgres import PostgresLog
from driftloop.serving.prediction_log import (
    AlreadyLabelled,
    LogBase,
    LogUnavailable,
    NotLabelled,
    UnknownPredictionIds,
)
from tests.helpers import LOCAL, Shelf, make_config, rows_json
from tests.postgres import fresh_database

LABELS_TOKEN = "log-suite-labels-token"


@pytest.fixture
def log(log_uri: str) -> Iterator[LogBase]:
    with open_log_at(log_uri, pii=["tailnum"]) as opened:
        yield opened


def rows_of(frame: pd.DataFrame) -> list[dict]:
    return rows_json(frame)


def append_flights(log: LogBase, frame: pd.DataFrame, version: str = "1") -> list[int]:
    return log.append(rows_of(frame), [0.25] * len(frame), version, frame["time_hour"].astype(str).tolist())


def test_rows_round_trip_without_pii_with_consecutive_ids(log: LogBase, flights_jan: pd.DataFrame) -> None:
    first = append_flights(log, flights_jan.head(5))
    second = log.append(rows_of(flights_jan.iloc[5:8]), [0.1, 0.2, 0.3], "2", shadow_version="3",
                        shadow_predictions=[0.4, None, 0.6])
    assert first == [1, 2, 3, 4, 5] and second == [6, 7, 8]
    read = log.read()
    assert read["prediction_id"].tolist() == list(range(1, 9)) and log.last_id() == 8
    assert "tailnum" not in read.columns  # PII is never stored
    assert read["distance"].tolist() == flights_jan["distance"].head(8).tolist()
    assert read["event_time"].head(5).tolist() == flights_jan["time_hour"].head(5).tolist()
    assert read["event_time"].iloc[5:].isna().all()
    assert read["shadow_version"].tolist() == [None] * 5 + ["3"] * 3
    assert read["shadow_prediction"].iloc[5:].tolist()[::2] == [0.4, 0.6]
    assert read["label"].isna().all()
    with pytest.raises(DataError, match="not an ISO 8601"):
        log.append(rows_of(flights_jan.head(1)), [0.5], "1", ["yesterday-ish"])
    assert log.last_id() == 8  # nothing written


def test_group_commit_under_concurrency_gives_every_call_its_own_consecutive_ids(
        log: LogBase, flights_jan: pd.DataFrame) -> None:
    rows = rows_of(flights_jan.head(3))
    results: list[list[int]] = []
    lock = threading.Lock()

    def client() -> None:
        for _ in range(25):
            ids = log.append(rows, [0.5] * 3, "1")
            with lock:
                results.append(ids)

    threads = [threading.Thread(target=client) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(ids == list(range(ids[0], ids[0] + 3)) for ids in results)
    every = sorted(i for ids in results for i in ids)
    assert every == list(range(1, 601))  # unique, no gaps: every acknowledged row is there
    assert log.read()["prediction_id"].tolist() == every


def test_two_writers_on_one_log_share_one_id_sequence(log_uri: str, flights_jan: pd.DataFrame) -> None:
    """Two model servers on one log (two connections): ids never collide and every acknowledged row is read back."""
    rows = rows_of(flights_jan.head(2))
    with open_log_at(log_uri) as one, open_log_at(log_uri) as two:
        got: dict[str, list[int]] = {"one": [], "two": []}

        def write(name: str, target: LogBase) -> None:
            for _ in range(40):
                got[name].extend(target.append(rows, [0.5, 0.5], name))

        threads = [threading.Thread(target=write, args=(n, t)) for n, t in (("one", one), ("two", two))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not set(got["one"]) & set(got["two"])
        read = one.read()
    assert sorted(got["one"] + got["two"]) == read["prediction_id"].tolist() == list(range(1, 161))
    assert read.groupby("model_version").size().to_dict() == {"one": 80, "two": 80}


@contextmanager
def group_in_flight(log: LogBase, records: list[tuple]) -> Iterator[int]:
    """One group written by `log`'s own write path and held uncommitted until the block ends (then committed)."""
    if isinstance(log, PostgresLog):
        with log._lock, log._live().transaction():  # the group's statement, inside a transaction left open
            yield log._write_group(records)
    else:
        with log._lock, log._transaction():
            yield log._insert_group(records)


def test_a_reader_never_passes_a_row_that_commits_after_a_larger_id(log_uri: str, flights_jan: pd.DataFrame) -> None:
    """Writer A draws id 1 and commits last; writer B draws id 2 and commits first (on PostgreSQL, where writers do
    not wait for each other; SQLite's write lock makes B wait for A). A reader in between must never see id 2 without
    id 1: the monitor's cursor would move past 1 and never read it. A naive reader (no wait) sees [2] here."""
    rows = rows_of(flights_jan.head(1))
    with open_log_at(log_uri) as one, open_log_at(log_uri) as two, open_log_at(log_uri) as reader:
        drawn, release, seen = threading.Event(), threading.Event(), {}

        def writer_a() -> None:
            with group_in_flight(one, one.records(rows, [0.5], "a")) as first:
                seen["a"] = first
                drawn.set()
                release.wait(30)

        def read() -> None:
            seen["last"] = reader.last_id()
            seen["read"] = reader.read(1, seen["last"])["prediction_id"].tolist()

        a = threading.Thread(target=writer_a)
        a.start()
        assert drawn.wait(30)
        b = threading.Thread(target=lambda: seen.setdefault("b", two.append(rows, [0.5], "b")))
        b.start()
        b.join(timeout=5 if is_postgres(log_uri) else 0.3)
        if is_postgres(log_uri):
            assert seen["b"] == [2] and not b.is_alive()  # B committed while A still holds id 1 open
        r = threading.Thread(target=read)
        r.start()
        r.join(timeout=0.5)
        release.set()
        for thread in (a, b, r):
            thread.join(30)
        assert seen["read"] == list(range(1, seen["last"] + 1))  # never id 2 without id 1
        assert one.read().set_index("prediction_id")["model_version"].to_dict() == {1: "a", 2: "b"}


@pytest.mark.slow
def test_a_read_held_back_by_a_stuck_writer_fails_clearly(pg_cluster: object, flights_jan: pd.DataFrame) -> None:
    """PostgreSQL: a transaction left open after drawing ids holds back reads (rows below it may still commit);
    after read_wait_s the read says which transaction and how to find it, instead of waiting for ever."""
    uri = fresh_database(pg_cluster)
    with open_log_at(uri) as writer, open_log_at(uri) as reader:
        reader.read_wait_s = 0.3
        with group_in_flight(writer, writer.records(rows_of(flights_jan.head(2)), [0.5, 0.5], "1")):
            began = time.monotonic()
            with pytest.raises(LogUnavailable, match="still open after 0.3 s .*pg_stat_activity"):
                reader.last_id()
            assert time.monotonic() - began < 5
        assert reader.last_id() == 2


def test_first_label_wins_and_corrections_keep_the_history(log: LogBase, flights_jan: pd.DataFrame) -> None:
    ids = append_flights(log, flights_jan.head(4))
    assert log.attach_labels(ids[:2], [1, 0], source="http", principal="labels-token:ab") == 2
    with pytest.raises(AlreadyLabelled, match=str(ids[1])):
        log.attach_labels([ids[1], ids[2]], [1, 1])
    before = log.read()["label"]
    assert before.iloc[:2].tolist() == [1.0, 0.0] and before.iloc[2:].isna().all()  # the refused call wrote nothing
    with pytest.raises(UnknownPredictionIds, match="999"):
        log.attach_labels([ids[3], 999], [1, 1])
    with pytest.raises(NotLabelled):
        log.correct_labels([ids[3]], [1], reason="late")
    with pytest.raises(ValueError, match="reason"):
        log.correct_labels([ids[0]], [0], reason=" ")
    assert log.correct_labels([ids[0]], [0], reason="annotator error") == 1
    labels = log.read()["label"]
    assert labels.iloc[0] == 0.0 and labels.iloc[1] == 0.0 and labels.iloc[2:].isna().all()
    history = log.label_history()
    assert history["label"].tolist() == [1.0, 0.0, 0.0]
    assert history["source"].tolist() == ["http", "http", "cli"]
    assert int(history["supersedes"].iloc[2]) == int(history["label_id"].iloc[0])
    with pytest.raises(Exception, match="append-only"), log._lock:
        log._execute("UPDATE labels SET label = 1")


def test_labels_on_a_lost_connection_reconnect_or_are_log_unavailable(log_uri: str, log: LogBase,
                                                                      flights_jan: pd.DataFrame) -> None:
    """A connection gone away: PostgreSQL's backend connects again and the labels land; SQLite's cannot, and that
    is LogUnavailable (503 over HTTP, the sender retries), never an unhandled error."""
    ids = append_flights(log, flights_jan.head(2))
    with log._lock:
        log._close_connection()
    if is_postgres(log_uri):
        assert log.attach_labels(ids, [1, 0]) == 2
        return
    with pytest.raises(LogUnavailable) as lost:
        log.attach_labels(ids, [1, 0])
    assert lost.value.status == 503


def test_chunked_label_import_is_resumable_and_refuses_a_different_label(
        log: LogBase, flights_jan: pd.DataFrame) -> None:
    ids = append_flights(log, flights_jan.head(50))
    labels = [float(i % 2) for i in range(50)]
    assert log.attach_labels_in_chunks(ids[:20], labels[:20], chunk_rows=7) == 20  # an import stopped after 20
    assert log.attach_labels_in_chunks(ids, labels, chunk_rows=7) == 30  # run again: the rest, nothing twice
    assert log.read()["label"].tolist() == labels
    assert len(log.label_history()) == 50
    flipped = [1 - labels[0]] + labels[1:]
    with pytest.raises(AlreadyLabelled, match=f"{ids[0]};"):
        log.attach_labels_in_chunks(ids, flipped, chunk_rows=7)
    with pytest.raises(UnknownPredictionIds):
        log.attach_labels_in_chunks([ids[0], 10_000], [labels[0], 1.0], chunk_rows=7)
    assert len(log.label_history()) == 50


def test_chunked_reads_equal_the_whole_read(log: LogBase, flights_jan: pd.DataFrame) -> None:
    ids = append_flights(log, flights_jan.head(230))
    log.attach_labels(ids[::3], [1.0] * len(ids[::3]))
    whole = log.read(10, 200)
    chunks = list(log.read_chunks(10, 200, chunk_rows=50))
    assert [len(c) for c in chunks] == [50, 50, 50, 41]
    pd.testing.assert_frame_equal(pd.concat(chunks, ignore_index=True), whole)
    labelled = pd.concat(log.read_chunks(labelled_only=True, chunk_rows=17), ignore_index=True)
    assert labelled["prediction_id"].tolist() == ids[::3]
    index = log.read_index(10, 200, chunk_rows=33)
    assert index.columns.tolist() == ["prediction_id", "event_time"]
    assert index["prediction_id"].tolist() == whole["prediction_id"].tolist()
    assert index["event_time"].tolist() == whole["event_time"].tolist()
    assert log.read_index(labelled_only=True)["prediction_id"].tolist() == ids[::3]
    base = log.read_base(10, 200, chunk_rows=40)  # the gate's shadow evidence: every column but the features
    pd.testing.assert_frame_equal(base, whole[base.columns.tolist()])
    assert "distance" not in base.columns and log.read_base(first_id=10_000).empty
    assert log.read_index(first_id=10_000).empty and log.read(first_id=10_000).empty


def test_state_records_replace_and_survive_reopening(log_uri: str) -> None:
    with open_log_at(log_uri) as log:
        assert log.get_state("monitor_cursor") is None
        log.put_state("monitor_cursor", {"last_id": 10, "policy": None})
        log.put_state("monitor_cursor", {"last_id": 42, "policy": {"windows": 2}})
        log.put_state("last_retraining", {"gate": [1, 9]})
    with open_log_at(log_uri) as log:
        assert log.get_state("monitor_cursor") == {"last_id": 42, "policy": {"windows": 2}}
        assert log.get_state("last_retraining") == {"gate": [1, 9]}


def test_retention_archives_old_rows_and_labels_then_deletes_them(
        log: LogBase, flights_jan: pd.DataFrame, tmp_path: Path) -> None:
    old = append_flights(log, flights_jan.head(30))
    log.attach_labels(old[:10], [1.0] * 10)
    cutoff = datetime.now(UTC) + timedelta(milliseconds=5)
    while datetime.now(UTC) <= cutoff:  # the next rows are logged after the cutoff
        pass
    new = append_flights(log, flights_jan.iloc[30:40])
    archived = log.archive_before(cutoff, tmp_path / "archive", chunk_rows=12)
    assert archived.rows == 30 and (archived.first_id, archived.last_id) == (old[0], old[-1])
    assert log.read()["prediction_id"].tolist() == new and log.label_history().empty
    kept = pd.concat(pd.read_parquet(f) for f in archived.files if f.name.startswith("predictions-"))
    assert sorted(kept["prediction_id"]) == old
    assert kept["features"].str.contains('"distance"').all() and "tailnum" not in kept["features"].iloc[0]
    labels = pd.concat(pd.read_parquet(f) for f in archived.files if f.name.startswith("labels-"))
    assert sorted(labels["prediction_id"]) == old[:10]
    assert log.archive_before(cutoff, tmp_path / "archive").rows == 0  # nothing left before the cutoff
    # Ids are never handed out twice, even when the newest rows were deleted.
    everything = log.archive_before(datetime.now(UTC) + timedelta(seconds=1), tmp_path / "archive")
    assert everything.rows == 10 and log.read().empty
    assert append_flights(log, flights_jan.head(1)) == [new[-1] + 1]


def test_the_config_picks_the_backend_and_the_flows_read_through_it(
        log_uri: str, tmp_path: Path, flights_jan: pd.DataFrame) -> None:
    overrides = {"serving": {"log_uri": log_uri if is_postgres(log_uri) else None, "log_read_chunk_rows": 100,
                             "log_retention_days": 1}}
    config = make_config(tmp_path / "state", **overrides)
    if not is_postgres(log_uri):
        log_uri = str(config.state_dir.resolve() / "predictions.db")
    with open_log(config) as log:
        ids = append_flights(log, flights_jan.head(250))
    assert read_window(config, ids[5], ids[-5])["prediction_id"].tolist() == ids[5:-4]
    assert "***" in log_name(config) if is_postgres(log_uri) else log_name(config) == log_uri
    labels = tmp_path / "labels.csv"
    pd.DataFrame({"prediction_id": ids[:120], "label": [1] * 120}).to_csv(labels, index=False)
    assert attach_label_file(config, labels).labelled == 120
    assert read_window(config, None, None, labelled_only=True)["prediction_id"].tolist() == ids[:120]
    assert prune_log(config).rows == 0  # nothing is a day old
    with open_log_at(log_uri) as log:
        assert log.last_id() == ids[-1]


def test_predict_and_labels_over_http_on_either_backend(
        log: LogBase, model_folders: dict[str, Path], tmp_path: Path, flights_jan: pd.DataFrame,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRIFTLOOP_LABELS_TOKEN", LABELS_TOKEN)
    config: Config = make_config(tmp_path / "state")
    shelf = Shelf(model_folders)
    auth = {"Authorization": f"Bearer {LABELS_TOKEN}"}
    with TestClient(create_app(config, shelf.load, shelf.version, log), base_url=LOCAL) as client:
        answer = client.post("/predict", json={"rows": rows_json(flights_jan.head(6))})
        assert answer.status_code == 200
        ids = answer.json()["prediction_ids"]
        assert log.read()["prediction_id"].tolist() == ids  # acknowledged = committed
        body = {"labels": [{"prediction_id": i, "label": 1} for i in ids[:3]]}
        assert client.post("/labels", json=body, headers=auth).status_code == 200
        again = client.post("/labels", json={"labels": [{"prediction_id": ids[0], "label": 0}]}, headers=auth)
        assert again.status_code == 409
        unknown = client.post("/labels", json={"labels": [{"prediction_id": 10_000, "label": 0}]}, headers=auth)
        assert unknown.status_code == 422
    assert log.read()["label"].tolist()[:3] == [1.0, 1.0, 1.0] and log.read()["label"].iloc[3:].isna().all()


def test_log_prune_command_archives_by_the_configured_age(
        tmp_path: Path, flights_jan: pd.DataFrame, capsys: pytest.CaptureFixture[str], restored_environ: None) -> None:
    import json

    import yaml

    from tests.helpers import cli_here

    config = make_config(tmp_path / "state")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    refused = cli_here(capsys, "log-prune", "--config", str(path))
    assert refused.returncode == 2 and "serving.log_retention_days" in refused.stderr
    with open_log(config) as log:
        append_flights(log, flights_jan.head(20))
    month = make_config(tmp_path / "state", serving={"log_retention_days": 30})
    path.write_text(yaml.safe_dump(month.model_dump(mode="json")))
    done = cli_here(capsys, "log-prune", "--config", str(path), "--json")
    assert done.returncode == 0 and json.loads(done.stdout)["rows"] == 0  # nothing is 30 days old
    second = make_config(tmp_path / "state", serving={"log_retention_days": 1 / 86400})  # one second
    path.write_text(yaml.safe_dump(second.model_dump(mode="json")))
    time.sleep(1.1)
    pruned = cli_here(capsys, "log-prune", "--config", str(path))
    assert pruned.returncode == 0 and pruned.stdout.strip() == "archived and deleted 20 rows (ids 1-20)"
    archive = config.state_dir.resolve() / "archive" / "predictions"
    assert len(pd.read_parquet(archive / "predictions-1-20.parquet")) == 20
    with open_log(config) as log:
        assert log.last_id() == 0 and log.read().empty
