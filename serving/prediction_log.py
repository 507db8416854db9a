"""The durable prediction log: every served prediction with its features, and the labels that arrive later.

One SQLite file in WAL mode with `synchronous=FULL`: once `append` returns, the rows survive a kill of
the process (and a power cut), so a prediction id handed to a client can always be labelled later.
The monitor reads the same file from another process while the server writes; WAL lets it do so
without blocking the writer.

Group commit: appends queue up while a commit is on its way to disk, and one writer thread then commits
all of them in one transaction (one fsync). Each caller still returns only after the commit that
holds its rows, so durability is unchanged; under concurrency the fsyncs are shared instead of serialised.

Shadow mode adds two nullable columns (shadow_version, shadow_prediction); a log file written before them
gets them added when it is opened (ALTER TABLE ADD COLUMN), so older files stay readable and writable.

Labels are kept append-only in their own table: each with its source (http, cli), principal (the token's name
and digest, or the OS user) and the time it was received. The first label of a prediction wins (a unique index):
a second one is refused, and only an explicit correction (`driftloop label --correct --reason`) adds a row that
supersedes the current one, keeping it. A trigger refuses UPDATE on the table. `predictions.label` holds the
current label for readers (monitor, retraining, gate), written in the same transaction as the labels row.
A log file written before the labels table gets it when opened, its labels copied in with source "legacy".
"""

from __future__ import annotations

import functools
import getpass
import json
import math
import os
import sqlite3
import threading
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import Future
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from driftloop.errors import DataError
from driftloop.pii import PiiPolicy

# How long a writer waits for another process's lock before giving up (e.g. a monitor's long read).
BUSY_TIMEOUT_S = 30.0
# How often committed WAL pages are copied into the database file (off the commit path, see _checkpoint_loop).
CHECKPOINT_S = 1.0
# Compact JSON for the stored features: fewer bytes in every commit that a request waits for.
JSON_SEPARATORS = (",", ":")
# SQLite caps the number of bound parameters per statement; id lookups are chunked below it.
ID_CHUNK = 500

BASE_COLUMNS = ["prediction_id", "logged_at", "model_version", "prediction", "label", "event_time"]
# Added after the first schema: nullable, filled only when a challenger scored the row in shadow mode.
SHADOW_COLUMNS = {"shadow_version": "TEXT", "shadow_prediction": "REAL"}
READ_COLUMNS = BASE_COLUMNS + list(SHADOW_COLUMNS)

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
# The audit trail of labels; `supersedes` links a correction to the label it replaces (each replaced at most once).
LABELS_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS labels (
        label_id      INTEGER PRIMARY KEY AUTOINCREMENT,
        prediction_id INTEGER NOT NULL REFERENCES predictions(prediction_id),
        label         REAL NOT NULL,
        source        TEXT NOT NULL,
        principal     TEXT NOT NULL,
        received_at   TEXT NOT NULL,
        supersedes    INTEGER UNIQUE REFERENCES labels(label_id),
        reason        TEXT
    )""",
    # The first label wins: one label per prediction that corrects nothing.
    "CREATE UNIQUE INDEX IF NOT EXISTS labels_first ON labels(prediction_id) WHERE supersedes IS NULL",
    "CREATE INDEX IF NOT EXISTS labels_prediction ON labels(prediction_id)",
    "CREATE TRIGGER IF NOT EXISTS labels_append_only BEFORE UPDATE ON labels"
    " BEGIN SELECT RAISE(ABORT, 'labels are append-only: record a correction instead'); END",
]
# Labels attached before the labels table existed: who sent them and when was not recorded.
LEGACY_LABELS = ("INSERT INTO labels (prediction_id, label, source, principal, received_at)"
                 " SELECT prediction_id, label, 'legacy', 'unknown', ? FROM predictions WHERE label IS NOT NULL")
INSERT_LABEL = ("INSERT INTO labels (prediction_id, label, source, principal, received_at, supersedes, reason)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)")
# The label rows in force: those no correction supersedes.
CURRENT_LABELS = ("SELECT prediction_id, label_id FROM labels l WHERE prediction_id IN ({marks})"
                  " AND NOT EXISTS (SELECT 1 FROM labels c WHERE c.supersedes = l.label_id)")
LABEL_COLUMNS = ["label_id", "prediction_id", "label", "source", "principal", "received_at", "supersedes", "reason"]

INSERT = ("INSERT INTO predictions (logged_at, model_version, prediction, event_time, features, shadow_version,"
          " shadow_prediction) VALUES (?, ?, ?, ?, ?, ?, ?)")


class UnknownPredictionIds(DataError):
    """Labels were sent for prediction ids the log does not hold."""

    def __init__(self, ids: list[int]) -> None:
        self.ids = ids
        shown = ", ".join(map(str, ids[:20])) + (" ..." if len(ids) > 20 else "")
        super().__init__(f"unknown prediction_id(s): {shown}")


class AlreadyLabelled(DataError):
    """Labels were sent for predictions that have one: the first label stands, nothing was written."""

    def __init__(self, ids: list[int]) -> None:
        self.ids = ids
        super().__init__(f"prediction_id(s) already labelled: {_shown(ids)}; the first label stands (a correction: "
                         "driftloop label --correct --reason TEXT)")


class NotLabelled(DataError):
    """A correction was asked for predictions that have no label yet: nothing was written."""

    def __init__(self, ids: list[int]) -> None:
        self.ids = ids
        super().__init__(f"prediction_id(s) not labelled yet, nothing to correct: {_shown(ids)}; label them "
                         "without --correct")


def _shown(ids: list[int]) -> str:
    """At most 20 ids for a message."""
    return ", ".join(map(str, ids[:20])) + (f" ... ({len(ids)} in all)" if len(ids) > 20 else "")


def os_principal() -> str:
    """Who runs this process, for the label audit trail: the OS user name, or the uid when it has none."""
    try:
        return f"user:{getpass.getuser()}"
    except (KeyError, OSError):
        return f"uid:{os.getuid()}"


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


def features_json(row: dict) -> str:
    """A row's features as compact JSON; numpy scalars, timestamps and non-finite floats converted first.

    Rows from the server are plain JSON values already: one json.dumps, without a conversion call per value.
    """
    try:
        return json.dumps(row, allow_nan=False, separators=JSON_SEPARATORS)
    except (TypeError, ValueError):
        return json.dumps({k: _json_value(v) for k, v in row.items()}, allow_nan=False, separators=JSON_SEPARATORS)


class PredictionLog:
    """Append-only log of predictions in SQLite; labels are attached to rows by prediction id, first label wins.

    Safe to share between threads of one process (one connection behind a lock) and to open from
    several processes at once (SQLite's file locks; WAL lets readers run beside the writer).
    """

    def __init__(self, path: Path, pii: Sequence[str] | PiiPolicy = ()) -> None:
        self.path = Path(path)
        # Column names alone: dropped; `driftloop.pii.pii_policy(config)`: dropped or hashed as data.pii_policy says.
        self.pii = pii if isinstance(pii, PiiPolicy) else PiiPolicy.dropping(pii)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # isolation_level=None: transactions are opened explicitly (one per group commit, see append).
        self._db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                   check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        # Checkpoints (WAL pages copied into the database file, with its own fsync) run in a background thread,
        # not inside a commit that requests are waiting on.
        self._db.execute("PRAGMA wal_autocheckpoint=0")
        self._db.execute(SCHEMA)
        self._migrate()
        # Group commit: appends queue here and one writer thread commits whatever has queued, in one transaction.
        self._pending: list[tuple[list[tuple], Future[list[int]]]] = []
        self._wake = threading.Condition(threading.Lock())  # guards _pending and _closing; never held during I/O
        self._closing = False
        self._closed = threading.Event()  # stops the checkpoint thread (its own signal: _wake is the writer's)
        self._writer: threading.Thread | None = None

    def _migrate(self) -> None:
        """Add the columns and the labels table later versions introduced to a log file written before them."""
        if not self._missing_columns() and self._has_labels():
            return
        with self._lock, self._transaction():  # the write lock: two processes opening at once add each once
            for column in self._missing_columns():
                self._db.execute(f"ALTER TABLE predictions ADD COLUMN {column} {SHADOW_COLUMNS[column]}")
            if not self._has_labels():
                for statement in LABELS_SCHEMA:
                    self._db.execute(statement)
                self._db.execute(LEGACY_LABELS, (datetime.now(UTC).isoformat(),))

    def _has_labels(self) -> bool:
        """Whether the labels table and its guards exist (the trigger is created last)."""
        found = self._db.execute("SELECT 1 FROM sqlite_master WHERE type = 'trigger' AND name = 'labels_append_only'")
        return found.fetchone() is not None

    def _missing_columns(self) -> list[str]:
        present = {row[1] for row in self._db.execute("PRAGMA table_info(predictions)")}
        return [column for column in SHADOW_COLUMNS if column not in present]

    def close(self) -> None:
        """Commit what is queued, stop the writer and close the connection; the file stays."""
        with self._wake:
            self._closing = True
            self._wake.notify_all()
        self._closed.set()
        if self._writer is not None:
            self._writer.join()
        with self._lock:
            self._db.close()

    def __enter__(self) -> PredictionLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def append(self, rows: list[dict], predictions: Sequence[float], model_version: str,
               event_times: Sequence[str | None] | None = None, shadow_version: str | None = None,
               shadow_predictions: Sequence[float | None] | None = None) -> list[int]:
        """Log scored rows durably and return their new prediction ids, in row order.

        PII keys are dropped (or hashed, see __init__) from the stored features. Event times are stored as
        ISO UTC strings; one that does not parse raises DataError and nothing is written. `shadow_version` and
        `shadow_predictions` record what a challenger answered for the same rows (shadow mode).
        The rows are committed (fsync'd) before this returns, possibly in one transaction with
        other threads' rows (group commit); the ids of one call are consecutive.
        """
        return self.submit(rows, predictions, model_version, event_times, shadow_version,
                           shadow_predictions).result()

    def submit(self, rows: list[dict], predictions: Sequence[float], model_version: str,
               event_times: Sequence[str | None] | None = None, shadow_version: str | None = None,
               shadow_predictions: Sequence[float | None] | None = None) -> Future[list[int]]:
        """Queue rows for the next group commit; the future gives their ids once they are on disk.

        Arguments as in append; bad ones raise here, before anything is queued. An async caller awaits
        `asyncio.wrap_future(...)` and answers only after that, so the event loop never waits on fsync.
        """
        return self.submit_records(self.records(rows, predictions, model_version, event_times, shadow_version,
                                                shadow_predictions))

    def submit_records(self, records: list[tuple]) -> Future[list[int]]:
        """Queue rows prepared by `records` for the next group commit (see submit).

        The server prepares them in its scoring thread, so the event loop only queues them.
        """
        future: Future[list[int]] = Future()
        if not records:
            future.set_result([])
            return future
        with self._wake:
            if self._closing:
                raise RuntimeError(f"prediction log {self.path} is closed")
            self._pending.append((records, future))
            if self._writer is None:
                self._writer = threading.Thread(target=self._write_loop, name="prediction-log-writer", daemon=True)
                self._writer.start()
            self._wake.notify()
        return future

    def records(self, rows: list[dict], predictions: Sequence[float], model_version: str,
                event_times: Sequence[str | None] | None = None, shadow_version: str | None = None,
                shadow_predictions: Sequence[float | None] | None = None) -> list[tuple]:
        """The INSERT parameters of each row (arguments as in append): PII dropped or hashed, times normalised,
        features as compact JSON; DataError or ValueError for bad arguments."""
        if len(predictions) != len(rows):
            raise ValueError(f"append: {len(rows)} rows but {len(predictions)} predictions")
        if event_times is not None and len(event_times) != len(rows):
            raise ValueError(f"append: {len(rows)} rows but {len(event_times)} event times")
        if shadow_predictions is not None and len(shadow_predictions) != len(rows):
            raise ValueError(f"append: {len(rows)} rows but {len(shadow_predictions)} shadow predictions")
        times = [None if t is None else utc_iso(t) for t in (event_times or [None] * len(rows))]
        shadows = [None if v is None else float(v) for v in (shadow_predictions or [None] * len(rows))]
        shadow = shadow_version if shadow_predictions is not None else None
        logged_at = datetime.now(UTC).isoformat()
        return [
            (logged_at, model_version, float(p), t,
             features_json(self.pii.row(row)),
             shadow, sp)
            for row, p, t, sp in zip(rows, predictions, times, shadows, strict=True)
        ]

    def _write_loop(self) -> None:
        """The writer thread: commit everything queued in one transaction, again and again, until closed."""
        checkpointer = threading.Thread(target=self._checkpoint_loop, name="prediction-log-checkpoint", daemon=True)
        checkpointer.start()
        while True:
            with self._wake:
                while not self._pending and not self._closing:
                    self._wake.wait()
                if not self._pending:  # closing, and nothing left to write
                    break
                group, self._pending = self._pending, []
            self._commit_group(group)
        checkpointer.join()

    def _checkpoint_loop(self) -> None:
        """Copy committed WAL pages into the database file every CHECKPOINT_S, on a connection of its own.

        PASSIVE never blocks the writer or readers; a checkpoint that cannot finish now finishes later.
        """
        db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, check_same_thread=False)
        try:
            while not self._closed.wait(CHECKPOINT_S):
                db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            db.close()

    def _commit_group(self, group: list[tuple[list[tuple], Future[list[int]]]]) -> None:
        """Write every queued append of `group` in one transaction and hand each its ids (or the error)."""
        records = [record for batch, _ in group for record in batch]
        try:
            with self._lock, self._transaction():
                before = self._max_id()
                self._db.executemany(INSERT, records)
                (last,) = self._db.execute("SELECT last_insert_rowid()").fetchone()
                # BEGIN IMMEDIATE holds the write lock and AUTOINCREMENT counts up by one per row, so the
                # group is the n ids ending at the last one inserted; checked before committing.
                first = last - len(records) + 1
                if first <= before:
                    raise RuntimeError(f"prediction log {self.path}: new ids overlap old ones ({first} <= {before})")
        except Exception as error:  # every caller of the group learns that its rows were not written
            for _, future in group:
                future.set_exception(error)
            return
        for batch, future in group:
            future.set_result(list(range(first, first + len(batch))))
            first += len(batch)

    def attach_labels(self, ids: Sequence[int], labels: Sequence[float], *, source: str = "cli",
                      principal: str | None = None) -> int:
        """Record the first label of each prediction id and return how many were written.

        All or nothing: an id not in the log raises UnknownPredictionIds, an id labelled already AlreadyLabelled,
        an id given twice DataError; then no label is written. `source` (http, cli) and `principal` (default: the
        OS user) go to the audit trail with the time received.
        """
        pairs = self._label_pairs(ids, labels)
        received = datetime.now(UTC).isoformat()
        who = principal or os_principal()
        with self._lock, self._transaction():
            self._check_known([i for i, _ in pairs])
            labelled = sorted(self._current_labels([i for i, _ in pairs]))
            if labelled:
                raise AlreadyLabelled(labelled)
            self._write_labels([(i, v, source, who, received, None, None) for i, v in pairs])
        return len(pairs)

    def correct_labels(self, ids: Sequence[int], labels: Sequence[float], *, reason: str, source: str = "cli",
                       principal: str | None = None) -> int:
        """Replace the current label of each id by a new row that supersedes it (the old row stays); all or nothing.

        Every id must be labelled already (NotLabelled otherwise) and `reason` must say why (ValueError if blank).
        """
        if not reason.strip():
            raise ValueError("a label correction needs a reason")
        pairs = self._label_pairs(ids, labels)
        received = datetime.now(UTC).isoformat()
        who = principal or os_principal()
        with self._lock, self._transaction():
            self._check_known([i for i, _ in pairs])
            current = self._current_labels([i for i, _ in pairs])
            missing = sorted(i for i, _ in pairs if i not in current)
            if missing:
                raise NotLabelled(missing)
            self._write_labels([(i, v, source, who, received, current[i], reason.strip()) for i, v in pairs])
        return len(pairs)

    def label_history(self, first_id: int | None = None, last_id: int | None = None) -> pd.DataFrame:
        """The labels table for prediction ids in [first_id, last_id]: every label ever received, corrections and
        the rows they superseded included, in the order received (columns LABEL_COLUMNS)."""
        query = (f"SELECT {', '.join(LABEL_COLUMNS)} FROM labels WHERE prediction_id >= ? AND prediction_id <= ?"
                 " ORDER BY label_id")
        bounds = (first_id if first_id is not None else -(2**63), last_id if last_id is not None else 2**63 - 1)
        with self._lock:
            fetched = self._db.execute(query, bounds).fetchall()
        return pd.DataFrame(fetched, columns=LABEL_COLUMNS)

    @staticmethod
    def _label_pairs(ids: Sequence[int], labels: Sequence[float]) -> list[tuple[int, float]]:
        """(id, label) pairs; DataError naming an id given more than once (which label would win is not clear)."""
        if len(ids) != len(labels):
            raise ValueError(f"attach_labels: {len(ids)} ids but {len(labels)} labels")
        pairs = [(int(i), float(label)) for i, label in zip(ids, labels, strict=True)]
        counts = Counter(i for i, _ in pairs)
        twice = sorted(i for i, n in counts.items() if n > 1)
        if twice:
            raise DataError(f"prediction_id(s) given more than once: {_shown(twice)}; send one label per prediction")
        return pairs

    def _check_known(self, ids: list[int]) -> None:
        """UnknownPredictionIds naming the ids the log does not hold (caller holds the lock)."""
        known = self._existing_ids(sorted(ids))
        unknown = sorted(i for i in ids if i not in known)
        if unknown:
            raise UnknownPredictionIds(unknown)

    def _current_labels(self, ids: list[int]) -> dict[int, int]:
        """{prediction id: label_id in force} for those of `ids` that are labelled (caller holds the lock)."""
        found: dict[int, int] = {}
        for start in range(0, len(ids), ID_CHUNK):
            chunk = ids[start:start + ID_CHUNK]
            found.update(self._db.execute(CURRENT_LABELS.format(marks=", ".join("?" * len(chunk))), chunk))
        return found

    def _write_labels(self, rows: list[tuple]) -> None:
        """Append label rows and set predictions.label to match, in the caller's transaction."""
        self._db.executemany(INSERT_LABEL, rows)
        self._db.executemany("UPDATE predictions SET label = ? WHERE prediction_id = ?", [(r[1], r[0]) for r in rows])

    def read(self, first_id: int | None = None, last_id: int | None = None,
             labelled_only: bool = False) -> pd.DataFrame:
        """Logged rows with ids in [first_id, last_id] (inclusive, open when None), in id order.

        Columns: prediction_id, logged_at (UTC), model_version, prediction, label (NaN when none),
        event_time (UTC, NaT when none), shadow_version (None) and shadow_prediction (NaN) when no
        challenger scored the row, then the feature columns from the stored JSON.
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
        query = (f"SELECT {', '.join(READ_COLUMNS)}, features FROM predictions"
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
    base = pd.DataFrame([r[:-1] for r in fetched], columns=READ_COLUMNS)
    features = pd.DataFrame.from_records([json.loads(r[-1]) for r in fetched], index=base.index)
    frame = pd.DataFrame({
        "prediction_id": base["prediction_id"].astype("int64"),
        "logged_at": pd.to_datetime(base["logged_at"], utc=True, format="ISO8601"),
        "model_version": base["model_version"].astype("object"),
        "prediction": base["prediction"].astype("float64"),
        "label": pd.to_numeric(base["label"]).astype("float64"),
        "event_time": pd.to_datetime(base["event_time"], utc=True, format="ISO8601"),
        "shadow_version": base["shadow_version"].astype("object").where(base["shadow_version"].notna(), None),
        "shadow_prediction": pd.to_numeric(base["shadow_prediction"]).astype("float64"),
    })
    # A feature named like a base column would shadow it; the base column wins.
    features = features.drop(columns=[c for c in features.columns if c in READ_COLUMNS])
    return pd.concat([frame, features], axis=1)
