"""The deployed monitor's cursor and the last retraining's record: kept in the log's database (transactional),
mirrored to fsynced files that fall back on their last good copy when damaged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from driftloop.errors import DataError
from driftloop.flows.deployments import LastRetraining, MonitorCursor, window_ranges
from driftloop.flows.monitoring import log_to_contract  # noqa: F401 - imported lazily by window_ranges: at collection
from driftloop.serving.prediction_log import open_log_at
from driftloop.state import read_json_state, write_atomic
from tests.helpers import make_config


def test_the_cursor_lives_in_the_log_and_survives_a_lost_file(log_uri: str, tmp_path: Path) -> None:
    path = tmp_path / "monitor" / "cursor.json"
    with open_log_at(log_uri) as log:
        MonitorCursor(last_id=120, champion="2", policy={"windows": 3}).save(path, log)
        LastRetraining((101, 120), "3", "trained").save(tmp_path / "last.json", log)
    assert json.loads(path.read_text())["last_id"] == 120  # the mirror people read
    path.unlink()
    (tmp_path / "last.json").write_text('{"gate": [1, ')  # a damaged mirror does not matter: the log has it
    with open_log_at(log_uri) as log:
        assert MonitorCursor.load(path, log) == MonitorCursor(last_id=120, champion="2", policy={"windows": 3})
        assert LastRetraining.load(tmp_path / "last.json", log).gate == (101, 120)


def test_a_damaged_state_file_falls_back_on_its_last_good_copy(tmp_path: Path) -> None:
    path = tmp_path / "cursor.json"
    assert read_json_state(path) is None
    write_atomic(path, json.dumps({"last_id": 10}), keep_last_good=True)
    write_atomic(path, json.dumps({"last_id": 20}), keep_last_good=True)
    assert read_json_state(path) == {"last_id": 20}
    path.write_text('{"last_id": 3')  # truncated (a crash of a writer that did not fsync, a full disk)
    assert read_json_state(path) == {"last_id": 10}
    assert MonitorCursor.load(path) == MonitorCursor(last_id=10)  # an older cursor: windows checked again, none lost
    write_atomic(path, json.dumps({"last_id": 30}), keep_last_good=True)
    assert (tmp_path / "cursor.json.last-good").read_text() == json.dumps({"last_id": 10})  # damage never kept
    (tmp_path / "cursor.json.last-good").write_text("")
    path.write_text("")
    with pytest.raises(DataError, match="cursor.json and .*last-good: not a JSON object"):
        read_json_state(path)
    assert not list(tmp_path.glob("*.partial"))


def test_the_monitor_cuts_windows_from_a_bounded_span_of_the_log(tmp_path: Path) -> None:
    config = make_config(tmp_path / "state", monitoring={"window": 500}, serving={"log_index_rows": 1000})
    with open_log_at(str(config.state_dir / "predictions.db")) as log:
        for _ in range(5):
            log.append([{"distance": 1.0}] * 500, [0.5] * 500, "1")
        first, rows = window_ranges(config, log, 0, config.serving.log_index_rows)
        assert first == [(1, 500), (501, 1000)] and rows == 1000  # only 1,000 rows' ids and times read
        after, rows = window_ranges(config, log, 1000, 1000)
        assert after == [(1001, 1500), (1501, 2000)]
        last, rows = window_ranges(config, log, 2000, 1000)
        assert last == [(2001, 2500)] and rows == 500
