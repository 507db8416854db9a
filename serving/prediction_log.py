"""The durable prediction log: every served prediction with its features, and the labels that arrive later.

One SQLite file in WAL mode with `synchronous=FULL`: once `append` returns, the rows survive a kill of
the process (and a power cut), so a prediction id handed to a client can always be labelled later.
The monitor reads the same file from another process while the server writes; WAL lets it do so
without blocking the writer.
"""

from __future__ import annotations

import functools
import json
import math
import sqlite3
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from driftloop.errors import DataError

# How long a writer waits for another process's lock before giving up (e.g. a monitor's long read).
BUSY_TIMEOUT_S = 30.0
# SQLite caps the number of bound parameters per statement; id lookups are chunked below it.
ID_CHUNK = 500

BASE_COLUMNS = ["prediction_id", "logged_at", "model_version", "prediction", "label", "event_time"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    prediction_id INTEGER PRIMARY KEY AUTOINCREMENT,
    logged_at     TEXT NOT NULL,
    model_version TEXT NOT NULL,
    prediction    REAL NOT NULL,
    label         REAL,
    event_time    TEXT,
    features      TEXT NOT NULL
)
"""
INSERT = ("INSERT INTO predictions (logged_at, model_version, prediction, event_time, features)"
          " VALUES (?, ?, ?, ?, ?)")


class UnknownPredictionIds(DataError):
    """Labels were sent for prediction ids the log does not hold."""

    def __init__(self, ids: list[int]) -> None:
        self.ids = ids
        shown = ", ".join(map(str, ids[:20])) + (" ..." if len(ids) > 20 else "")
        super().__init__(f"unknown prediction_id(s): {shown}")


@functools.lru_cache(maxsize=4096)  # traffic repeats timestamps (hourly buckets): parse each once
def utc_iso(value: str) -> str:
    """An event time as an ISO 8601 UTC string, or DataError; naive times are taken as UTC."""
    try:
        stamp = pd.Timestamp(value)
    except (ValueError, TypeError):
        raise DataError(f"event_time {value!r}: not an ISO 8601 timestamp") from None
    if pd.isna(stamp):
        raise DataError(f"event_time {value!r}: not an ISO 8601 timestamp")
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return stamp.isoformat()


def _json_value(value: object) -> object:
    """A feature value JSON can store exactly; numpy scalars become Python ones, non-finite floats null."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, datetime):  # pd.Timestamp included
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class PredictionLog:
    """Append-only log of predictions in SQLite; labels are attached to rows by prediction id.

    Safe to share between threads of one process (one connection behind a lock) and to open from
    several processes at once (SQLite's file locks; WAL lets readers run beside the writer).
    """

    def __init__(self, path: Path, pii: Sequence[str] = ()) -> None:
        self.path = Path(path)
        self.pii = frozenset(pii)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # isolation_level=None: transactions are opened explicitly, so each append is exactly one.
        self._db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                   check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(SCHEMA)

    def close(self) -> None:
        """Close the connection; the file stays."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> PredictionLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def append(self, rows: list[dict], predictions: Sequence[float], model_version: str,
               event_times: Sequence[str | None] | None = None) -> list[int]:
        """Log scored rows in one transaction and return their new prediction ids, in row order.

        PII keys are dropped from the stored features. Event times are stored as ISO UTC strings;
        one that does not parse raises DataError and nothing is written.
        """
        if len(predictions) != len(rows):
            raise ValueError(f"append: {len(rows)} rows but {len(predictions)} predictions")
        if event_times is not None and len(event_times) != len(rows):
            raise ValueError(f"append: {len(rows)} rows but {len(event_times)} event times")
        times = [None if t is None else utc_iso(t) for t in (event_times or [None] * len(rows))]
        logged_at = datetime.now(UTC).isoformat()
        records = [
            (logged_at, model_version, float(p), t,
             json.dumps({k: _json_value(v) for k, v in row.items() if k not in self.pii}, allow_nan=False))
            for row, p, t in zip(rows, predictions, times, strict=True)
        ]
        if not records:
            return []
        with self._lock, self._transaction():
            before = self._max_id()
            self._db.executemany(INSERT, records)
            (last,) = self._db.execute("SELECT last_insert_rowid()").fetchone()
            # BEGIN IMMEDIATE holds the write lock and AUTOINCREMENT counts up by one per row, so the
            # batch is the n ids ending at the last one inserted; checked before committing.
            first = last - len(records) + 1
            if first <= before:
                raise RuntimeError(f"prediction log {self.path}: new ids overlap old ones ({first} <= {before})")
        return list(range(first, last + 1))

    def attach_labels(self, ids: Sequence[int], labels: Sequence[float]) -> int:
        """Set the label of each prediction id and return how many distinct rows were updated.

        All or nothing: if any id is not in the log, UnknownPredictionIds (a DataError) names them and
        no label is written. A row labelled twice keeps the later label.
        """
        if len(ids) != len(labels):
            raise ValueError(f"attach_labels: {len(ids)} ids but {len(labels)} labels")
        pairs = [(float(label), int(i)) for i, label in zip(ids, labels, strict=True)]
        wanted = sorted({i for _, i in pairs})
        with self._lock, self._transaction():
            known = self._existing_ids(wanted)
            unknown = [i for i in wanted if i not in known]
            if unknown:
                raise UnknownPredictionIds(unknown)
            self._db.executemany("UPDATE predictions SET label = ? WHERE prediction_id = ?", pairs)
        return len(wanted)

    def read(self, first_id: int | None = None, last_id: int | None = None,
             labelled_only: bool = False) -> pd.DataFrame:
        """Logged rows with ids in [first_id, last_id] (inclusive, open when None), in id order.

        Columns: prediction_id, logged_at (UTC), model_version, prediction, label (NaN when none),
        event_time (UTC, NaT when none), then the feature columns from the stored JSON.
        """
        where, params = ["1=1"], []
        if first_id is not None:
            where.append("prediction_id >= ?")
            params.append(int(first_id))
        if last_id is not None:
            where.append("prediction_id <= ?")
            params.append(int(last_id))
        if labelled_only:
            where.append("label IS NOT NULL")
        query = (f"SELECT {', '.join(BASE_COLUMNS)}, features FROM predictions"
                 f" WHERE {' AND '.join(where)} ORDER BY prediction_id")
        with self._lock:
            fetched = self._db.execute(query, params).fetchall()
        return _to_frame(fetched)

    def last_id(self) -> int:
        """The highest prediction id logged so far; 0 when the log is empty."""
        with self._lock:
            return self._max_id()

    def _max_id(self) -> int:
        (value,) = self._db.execute("SELECT COALESCE(MAX(prediction_id), 0) FROM predictions").fetchone()
        return int(value)

    def _existing_ids(self, ids: list[int]) -> set[int]:
        """Which of `ids` are in the log (caller holds the lock)."""
        found: set[int] = set()
        for start in range(0, len(ids), ID_CHUNK):
            chunk = ids[start:start + ID_CHUNK]
            marks = ", ".join("?" * len(chunk))
            found.update(r[0] for r in self._db.execute(
                f"SELECT prediction_id FROM predictions WHERE prediction_id IN ({marks})", chunk))
        return found

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on error: the write lock is taken up front so ids are ours."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: type | None, *exc: object) -> None:
        if exc_type is not None:
            self._db.execute("ROLLBACK")
            return
        try:
            self._db.execute("COMMIT")
        except sqlite3.Error:
            self._db.execute("ROLLBACK")  # a failed COMMIT leaves the transaction open
            raise


def _to_frame(fetched: list[tuple]) -> pd.DataFrame:
    """Rows from SQLite as the documented DataFrame."""
    base = pd.DataFrame([r[:-1] for r in fetched], columns=BASE_COLUMNS)
    features = pd.DataFrame.from_records([json.loads(r[-1]) for r in fetched], index=base.index)
    frame = pd.DataFrame({
        "prediction_id": base["prediction_id"].astype("int64"),
        "logged_at": pd.to_datetime(base["logged_at"], utc=True, format="ISO8601"),
        "model_version": base["model_version"].astype("object"),
        "prediction": base["prediction"].astype("float64"),
        "label": pd.to_numeric(base["label"]).astype("float64"),
        "event_time": pd.to_datetime(base["event_time"], utc=True, format="ISO8601"),
    })
    # A feature named like a base column would shadow it; the base column wins.
    features = features.drop(columns=[c for c in features.columns if c in BASE_COLUMNS])
    return pd.concat([frame, features], axis=1)
