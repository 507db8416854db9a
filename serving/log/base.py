"""What both prediction-log backends share: the row format, group commit, labels, reads by id range, state, retention.

A backend (sqlite.py, postgres.py) supplies the connection, its SQL dialect (placeholders, schema) and how one group
of rows gets its ids; everything a caller relies on is here, written once:

- `append`/`submit` return (or resolve) only after the commit holding the rows: group commit shares one commit (one
  fsync) among every append queued while the previous one was on its way to disk. Ids are consecutive within a call.
- a reader that has seen id N has seen every id below it (the monitor's cursor reads `id > cursor` and must never pass
  a row that commits later with a smaller id): every read stops at `_read_limit`, the highest id below which nothing
  is still in flight (SQLite: no limit, its write lock commits ids in order; PostgreSQL: writers commit side by side
  and readers wait for the transactions that may hold smaller ids, see postgres.py).
- labels: append-only table, first label wins (AlreadyLabelled, 409 over HTTP), audited corrections.
- reads by id range, whole or in chunks of bounded size (`read_chunks`, `read_index`): memory bounded by the chunk.
- named state records (the monitor's cursor, the last retraining) in the log's own database, written in a
  transaction: a killed writer leaves the previous record.
- retention: rows logged before a cutoff are archived to Parquet (fsynced) and only then deleted, in chunks.
"""

from __future__ import annotations

import functools
import getpass
import json
import logging
import math
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from driftloop.errors import DataError
from driftloop.pii import PiiPolicy

logger = logging.getLogger("driftloop.serving.log")

# Compact JSON for the stored features: fewer bytes in every commit that a request waits for.
JSON_SEPARATORS = (",", ":")
# Id lookups (`IN (...)`) are chunked: SQLite caps the number of bound parameters per statement.
ID_CHUNK = 500
# Rows per chunk of a chunked read (read_chunks, read_index) when the caller does not say.
READ_CHUNK_ROWS = 50_000

BASE_COLUMNS = ["prediction_id", "logged_at", "model_version", "prediction", "label", "event_time"]
# Added after the first schema: nullable, filled only when a challenger scored the row in shadow mode.
SHADOW_COLUMNS = ["shadow_version", "shadow_prediction"]
READ_COLUMNS = BASE_COLUMNS + SHADOW_COLUMNS
# A row as stored (the Parquet archive keeps this form: features as the stored JSON text).
RAW_COLUMNS = READ_COLUMNS + ["features"]
LABEL_COLUMNS = ["label_id", "prediction_id", "label", "source", "principal", "received_at", "supersedes", "reason"]
INSERT_COLUMNS = ["logged_at", "model_version", "prediction", "event_time", "features", "shadow_version",
                  "shadow_prediction"]

INSERT_LABEL = ("INSERT INTO labels (prediction_id, label, source, principal, received_at, supersedes, reason)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)")
# The label rows in force: those no correction supersedes.
CURRENT_LABELS = ("SELECT prediction_id, label_id FROM labels l WHERE prediction_id IN ({marks})"
                  " AND NOT EXISTS (SELECT 1 FROM labels c WHERE c.supersedes = l.label_id)")
PUT_STATE = ("INSERT INTO log_state (name, value, updated_at) VALUES (?, ?, ?)"
             " ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at")
ARCHIVE_DIR = "archive"


class LogUnavailable(DataError):
    """The log could not commit (a lock held too long, the server gone, the disk full): nothing was written.

    `status` is the HTTP status the model server answers with: 507 when the disk is full, else 503.
    """

    def __init__(self, message: str, status: int = 503) -> None:
        self.status = status
        super().__init__(message)


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


@dataclass(frozen=True)
class Archived:
    """What `archive_before` did: rows archived and deleted, the id range, and the Parquet files written."""

    rows: int
    first_id: int | None
    last_id: int | None
    files: tuple[Path, ...]

    def to_json(self) -> dict:
        return {"rows": self.rows, "first_id": self.first_id, "last_id": self.last_id,
                "files": [str(f) for f in self.files]}


class LogBase:
    """The prediction log's behaviour on any SQL backend; see the module docstring and the backends.

    Thread-safe: one connection behind a lock, one writer thread for the group commits.
    """

    # Shown in messages: the file's path or the database URL without its password.
    location: str
    # Pause between the chunks of a label import, so that a writer waiting for the lock gets it (see SqliteLog).
    import_pause_s: float = 0.0

    def __init__(self, pii: Sequence[str] | PiiPolicy = ()) -> None:
        # Column names alone: dropped; `driftloop.pii.pii_policy(config)`: dropped or hashed as data.pii_policy says.
        self.pii = pii if isinstance(pii, PiiPolicy) else PiiPolicy.dropping(pii)
        self._lock = threading.Lock()  # guards the connection
        # Group commit: appends queue here and one writer thread commits whatever has queued, in one transaction.
        self._pending: list[tuple[list[tuple], Future[list[int]]]] = []
        self._wake = threading.Condition(threading.Lock())  # guards _pending and _closing; never held during I/O
        self._closing = False
        self._closed = threading.Event()  # stops background threads (their own signal: _wake is the writer's)
        self._writer: threading.Thread | None = None
        # Failed background checkpoints (SQLite's WAL; PostgreSQL checkpoints itself) and a hook called on each
        # (the server counts them in driftloop_log_checkpoint_errors_total).
        self.checkpoint_errors = 0
        self.on_checkpoint_error: Callable[[], None] | None = None

    # --- what a backend supplies -------------------------------------------------------------------------------

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        """Run one statement (written with ? placeholders) and return its rows (caller holds the lock)."""
        raise NotImplementedError

    def _executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run one statement per parameter row (caller holds the lock)."""
        raise NotImplementedError

    def _transaction(self) -> AbstractContextManager[None]:
        """A write transaction that serialises writers (all processes): rolled back on error."""
        raise NotImplementedError

    def _insert_group(self, records: list[tuple]) -> int:
        """Insert `records` (INSERT_COLUMNS order) in the open transaction; the first of their consecutive ids."""
        raise NotImplementedError

    def _write_group(self, records: list[tuple]) -> int:
        """Commit `records` (one group commit) and return the first of their consecutive ids (caller holds the
        lock); by default in a write transaction (`_transaction`), which serialises the writers."""
        with self._transaction():
            return self._insert_group(records)

    def _read_limit(self) -> int | None:
        """The highest id a reader may read now: every row at or below it is committed or will never exist (caller
        holds the lock); None: no limit (the writers' lock commits ids in increasing order)."""
        return None

    def _unavailable(self, error: Exception) -> LogUnavailable | None:
        """The backend's error as LogUnavailable (507 for a full disk), or None when it is not a database error."""
        raise NotImplementedError

    def _close_connection(self) -> None:
        raise NotImplementedError

    def _background(self) -> list[threading.Thread]:
        """Threads to run beside the writer until close (SQLite: its checkpointer); started with the writer."""
        return []

    # --- life cycle --------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Commit what is queued, stop the writer and close the connection; the data stays."""
        with self._wake:
            self._closing = True
            self._wake.notify_all()
        self._closed.set()
        if self._writer is not None:
            self._writer.join()
        with self._lock:
            self._close_connection()

    def __enter__(self) -> LogBase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- appends -----------------------------------------------------------------------------------------------

    def append(self, rows: list[dict], predictions: Sequence[float], model_version: str,
               event_times: Sequence[str | None] | None = None, shadow_version: str | None = None,
               shadow_predictions: Sequence[float | None] | None = None) -> list[int]:
        """Log scored rows durably and return their new prediction ids, in row order.

        PII keys are dropped (or hashed) from the stored features. Event times are stored as ISO UTC strings; one
        that does not parse raises DataError and nothing is written. `shadow_version` and `shadow_predictions`
        record what a challenger answered for the same rows (shadow mode). The rows are committed before this
        returns, possibly in one transaction with other threads' rows (group commit); the ids of one call are
        consecutive. LogUnavailable when the commit failed (nothing of the call was written).
        """
        return self.submit(rows, predictions, model_version, event_times, shadow_version,
                           shadow_predictions).result()

    def submit(self, rows: list[dict], predictions: Sequence[float], model_version: str,
               event_times: Sequence[str | None] | None = None, shadow_version: str | None = None,
               shadow_predictions: Sequence[float | None] | None = None) -> Future[list[int]]:
        """Queue rows for the next group commit; the future gives their ids once they are committed.

        Arguments as in append; bad ones raise here, before anything is queued. An async caller awaits
        `asyncio.wrap_future(...)` and answers only after that, so the event loop never waits on the commit.
        """
        return self.submit_records(self.records(rows, predictions, model_version, event_times, shadow_version,
                                                shadow_predictions))

    def submit_records(self, records: list[tuple]) -> Future[list[int]]:
        """Queue rows prepared by `records` for the next group commit (see submit)."""
        future: Future[list[int]] = Future()
        if not records:
            future.set_result([])
            return future
        with self._wake:
            if self._closing:
                raise RuntimeError(f"prediction log {self.location} is closed")
            self._pending.append((records, future))
            if self._writer is None:
                self._writer = threading.Thread(target=self._write_loop, name="prediction-log-writer", daemon=True)
                self._writer.start()
            self._wake.notify()
        return future

    def records(self, rows: list[dict], predictions: Sequence[float], model_version: str,
                event_times: Sequence[str | None] | None = None, shadow_version: str | None = None,
                shadow_predictions: Sequence[float | None] | None = None) -> list[tuple]:
        """The stored values of each row (INSERT_COLUMNS; arguments as in append): PII dropped or hashed, times
        normalised, features as compact JSON; DataError or ValueError for bad arguments."""
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
            (logged_at, model_version, float(p), t, features_json(self.pii.row(row)), shadow, sp)
            for row, p, t, sp in zip(rows, predictions, times, shadows, strict=True)
        ]

    def _write_loop(self) -> None:
        """The writer thread: commit everything queued in one transaction, again and again, until closed."""
        helpers = self._background()
        for helper in helpers:
            helper.start()
        while True:
            with self._wake:
                while not self._pending and not self._closing:
                    self._wake.wait()
                if not self._pending:  # closing, and nothing left to write
                    break
                group, self._pending = self._pending, []
            self._commit_group(group)
        for helper in helpers:
            helper.join()

    def _commit_group(self, group: list[tuple[list[tuple], Future[list[int]]]]) -> None:
        """Write every queued append of `group` in one transaction and hand each its ids (or the error)."""
        records = [record for batch, _ in group for record in batch]
        try:
            with self._lock:
                first = self._write_group(records)
        except Exception as error:  # every caller of the group learns that its rows were not written
            failure = self._unavailable(error) or error
            for _, future in group:
                future.set_exception(failure)
            return
        for batch, future in group:
            future.set_result(list(range(first, first + len(batch))))
            first += len(batch)

    # --- labels ------------------------------------------------------------------------------------------------

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
        try:
            with self._lock, self._transaction():
                self._check_known([i for i, _ in pairs])
                labelled = sorted(self._current_labels([i for i, _ in pairs]))
                if labelled:
                    raise AlreadyLabelled(labelled)
                self._write_labels([(i, v, source, who, received, None, None) for i, v in pairs])
        except Exception as error:  # a lost connection or a full disk: LogUnavailable (503/507), not a crash
            unavailable = self._unavailable(error)
            if unavailable is None:
                raise
            raise unavailable from None
        return len(pairs)

    def attach_labels_in_chunks(self, ids: Sequence[int], labels: Sequence[float], *, chunk_rows: int,
                                source: str = "cli", principal: str | None = None) -> int:
        """Attach many labels in short transactions of `chunk_rows`, so that the log's writers (the model server)
        never wait long; resumable: ids labelled already with the same value (a previous, interrupted import) are
        skipped, a different value is AlreadyLabelled. Every id is checked known before the first chunk is written.
        Returns how many labels this call wrote."""
        pairs = self._label_pairs(ids, labels)
        with self._lock:
            self._check_known([i for i, _ in pairs])
            current = self._current_values([i for i, _ in pairs])
        conflicting = sorted(i for i, v in pairs if i in current and current[i] != v)
        if conflicting:  # checked up front too, so that a conflict in the last chunk writes nothing either
            raise AlreadyLabelled(conflicting)
        written = 0
        for start in range(0, len(pairs), chunk_rows):
            if start:
                time.sleep(self.import_pause_s)
            chunk = pairs[start:start + chunk_rows]
            with self._lock, self._transaction():
                current = self._current_values([i for i, _ in chunk])
                conflicting = sorted(i for i, v in chunk if i in current and current[i] != v)
                if conflicting:
                    raise AlreadyLabelled(conflicting)
                new = [(i, v) for i, v in chunk if i not in current]
                received = datetime.now(UTC).isoformat()
                self._write_labels([(i, v, source, principal or os_principal(), received, None, None)
                                    for i, v in new])
            written += len(new)
        return written

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
        with self._lock:
            fetched = self._execute(query, _bounds(first_id, last_id))
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
        for chunk in _chunks(ids, ID_CHUNK):
            found.update(self._execute(CURRENT_LABELS.format(marks=", ".join("?" * len(chunk))), chunk))
        return found

    def _current_values(self, ids: list[int]) -> dict[int, float]:
        """{prediction id: current label} for those of `ids` that are labelled (caller holds the lock)."""
        found: dict[int, float] = {}
        for chunk in _chunks(ids, ID_CHUNK):
            marks = ", ".join("?" * len(chunk))
            found.update((int(i), float(v)) for i, v in self._execute(
                f"SELECT prediction_id, label FROM predictions WHERE prediction_id IN ({marks})"
                " AND label IS NOT NULL", chunk))
        return found

    def _write_labels(self, rows: list[tuple]) -> None:
        """Append label rows and set predictions.label to match, in the caller's transaction."""
        if not rows:
            return
        self._executemany(INSERT_LABEL, rows)
        self._executemany("UPDATE predictions SET label = ? WHERE prediction_id = ?", [(r[1], r[0]) for r in rows])

    def _existing_ids(self, ids: list[int]) -> set[int]:
        """Which of `ids` are in the log (caller holds the lock)."""
        found: set[int] = set()
        for chunk in _chunks(ids, ID_CHUNK):
            marks = ", ".join("?" * len(chunk))
            found.update(r[0] for r in self._execute(
                f"SELECT prediction_id FROM predictions WHERE prediction_id IN ({marks})", chunk))
        return found

    # --- reads -------------------------------------------------------------------------------------------------

    def read(self, first_id: int | None = None, last_id: int | None = None,
             labelled_only: bool = False) -> pd.DataFrame:
        """Logged rows with ids in [first_id, last_id] (inclusive, open when None), in id order.

        Columns: prediction_id, logged_at (UTC), model_version, prediction, label (NaN when none),
        event_time (UTC, NaT when none), shadow_version (None) and shadow_prediction (NaN) when no
        challenger scored the row, then the feature columns from the stored JSON. For a large range use
        read_chunks (bounded memory per chunk).
        """
        with self._lock:
            fetched = self._execute(_range_query(RAW_COLUMNS, labelled_only), self._readable(first_id, last_id))
        return _to_frame(fetched)

    def read_chunks(self, first_id: int | None = None, last_id: int | None = None, labelled_only: bool = False,
                    chunk_rows: int = READ_CHUNK_ROWS) -> Iterator[pd.DataFrame]:
        """`read` of the same range as frames of at most `chunk_rows` rows each, in id order (keyset paging: each
        chunk is one indexed range query; the lock is released between chunks, so writers go on)."""
        for rows in self._raw_chunks(RAW_COLUMNS, first_id, last_id, labelled_only, chunk_rows):
            yield _to_frame(rows)

    def read_index(self, first_id: int | None = None, last_id: int | None = None, labelled_only: bool = False,
                   chunk_rows: int = READ_CHUNK_ROWS) -> pd.DataFrame:
        """Only prediction_id and event_time (UTC) of the rows in the range, read in chunks: what cutting traffic
        into windows needs, at 16 bytes a row (5 million rows: 80 MB) instead of every feature."""
        ids: list[np.ndarray] = []
        times: list[np.ndarray] = []
        for rows in self._raw_chunks(["prediction_id", "event_time"], first_id, last_id, labelled_only, chunk_rows):
            ids.append(np.fromiter((r[0] for r in rows), dtype="int64", count=len(rows)))
            stamps = pd.to_datetime(pd.Series([r[1] for r in rows], dtype="object"), utc=True, format="ISO8601")
            times.append(stamps.to_numpy(dtype="datetime64[ns]"))
        if not ids:
            return pd.DataFrame({"prediction_id": pd.Series(dtype="int64"),
                                 "event_time": pd.Series(dtype="datetime64[ns, UTC]")})
        return pd.DataFrame({"prediction_id": np.concatenate(ids),
                             "event_time": pd.to_datetime(np.concatenate(times)).tz_localize("UTC")})

    def read_base(self, first_id: int | None = None, last_id: int | None = None, labelled_only: bool = False,
                  chunk_rows: int = READ_CHUNK_ROWS) -> pd.DataFrame:
        """`read` without the feature columns (READ_COLUMNS only), in chunks: what the gate's shadow evidence needs,
        at about 100 bytes a row instead of every feature."""
        frames = [_base_frame(pd.DataFrame(rows, columns=READ_COLUMNS))
                  for rows in self._raw_chunks(READ_COLUMNS, first_id, last_id, labelled_only, chunk_rows)]
        if not frames:
            return _base_frame(pd.DataFrame([], columns=READ_COLUMNS))
        return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)

    def _raw_chunks(self, columns: list[str], first_id: int | None, last_id: int | None, labelled_only: bool,
                    chunk_rows: int) -> Iterator[list[tuple]]:
        """Stored rows of the range, `chunk_rows` at a time (the first column must be prediction_id)."""
        with self._lock:
            low, high = self._readable(first_id, last_id)
        query = _range_query(columns, labelled_only) + f" LIMIT {int(chunk_rows)}"
        while True:
            with self._lock:
                rows = self._execute(query, (low, high))
            if not rows:
                return
            yield rows
            low = int(rows[-1][0]) + 1

    def last_id(self) -> int:
        """The highest prediction id logged so far (every smaller id committed or never to be); 0 when none is."""
        with self._lock:
            return self._max_id(self._read_limit())

    def _max_id(self, limit: int | None = None) -> int:
        """The highest id in the table (at most `limit`); 0 when there is none (caller holds the lock)."""
        if limit is None:
            ((value,),) = self._execute("SELECT COALESCE(MAX(prediction_id), 0) FROM predictions")
        else:
            ((value,),) = self._execute("SELECT COALESCE(MAX(prediction_id), 0) FROM predictions"
                                        " WHERE prediction_id <= ?", (limit,))
        return int(value)

    def _readable(self, first_id: int | None, last_id: int | None) -> tuple[int, int]:
        """`_bounds` of an id range, its upper end cut at `_read_limit` (caller holds the lock)."""
        low, high = _bounds(first_id, last_id)
        limit = self._read_limit()
        return low, high if limit is None else min(high, limit)

    # --- state records -----------------------------------------------------------------------------------------

    def get_state(self, name: str) -> dict | None:
        """The state record `name` (JSON object) kept in the log's database, or None when there is none."""
        with self._lock:
            rows = self._execute("SELECT value FROM log_state WHERE name = ?", (name,))
        return json.loads(rows[0][0]) if rows else None

    def put_state(self, name: str, value: dict) -> None:
        """Replace the state record `name`, in one committed transaction: a killed writer leaves the old one."""
        text = json.dumps(value, sort_keys=True)
        with self._lock, self._transaction():
            self._execute(PUT_STATE, (name, text, datetime.now(UTC).isoformat()))

    # --- retention ---------------------------------------------------------------------------------------------

    def archive_before(self, cutoff: datetime, folder: Path, chunk_rows: int = READ_CHUNK_ROWS,
                       on_chunk: Callable[[int], None] | None = None) -> Archived:
        """Archive the rows logged before `cutoff` (and their labels) to Parquet files in `folder`, then delete
        them, one chunk at a time: each chunk's files are written whole and fsynced before its rows are deleted in
        a short transaction, so a crash at any point loses nothing (a chunk archived but not yet deleted is archived
        again, to the same file names, by the next run). Rows are taken in id order and stop at the first row
        logged at or after the cutoff. Only ids up to the read limit at the start are taken: a row still in flight
        is never deleted unarchived."""
        stamp = cutoff.astimezone(UTC).isoformat()
        files: list[Path] = []
        total, first_seen, last_seen = 0, None, None
        with self._lock:
            _, limit = self._readable(None, None)
        while True:
            with self._lock:
                rows = self._execute(
                    f"SELECT {', '.join(RAW_COLUMNS)} FROM predictions WHERE logged_at < ? AND prediction_id <= ?"
                    f" ORDER BY prediction_id LIMIT {int(chunk_rows)}", (stamp, limit))
            if not rows:
                break
            first, last = int(rows[0][0]), int(rows[-1][0])
            history = self.label_history(first, last)
            history = history[history["prediction_id"].isin([r[0] for r in rows])]
            files.extend(_write_archive(folder, first, last, rows, history))
            chosen = "prediction_id >= ? AND prediction_id <= ? AND logged_at < ?"
            with self._lock, self._transaction():
                self._execute(f"DELETE FROM labels WHERE prediction_id IN (SELECT prediction_id FROM predictions"
                              f" WHERE {chosen})", (first, last, stamp))
                self._execute(f"DELETE FROM predictions WHERE {chosen}", (first, last, stamp))
            total += len(rows)
            first_seen = first if first_seen is None else first_seen
            last_seen = last
            if on_chunk is not None:
                on_chunk(total)
        return Archived(total, first_seen, last_seen, tuple(files))


def _bounds(first_id: int | None, last_id: int | None) -> tuple[int, int]:
    """An id range as two integer bounds (open ends as the int64 extremes)."""
    return (int(first_id) if first_id is not None else -(2**63), int(last_id) if last_id is not None else 2**63 - 1)


def _range_query(columns: list[str], labelled_only: bool) -> str:
    """SELECT of `columns` for ids between two bound parameters, in id order."""
    labelled = " AND label IS NOT NULL" if labelled_only else ""
    return (f"SELECT {', '.join(columns)} FROM predictions WHERE prediction_id >= ? AND prediction_id <= ?"
            f"{labelled} ORDER BY prediction_id")


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _write_archive(folder: Path, first: int, last: int, rows: list[tuple], history: pd.DataFrame) -> list[Path]:
    """predictions-FIRST-LAST.parquet (rows as stored) and labels-FIRST-LAST.parquet, each written whole (a temporary
    name, fsync, rename, fsync of the folder)."""
    folder.mkdir(parents=True, exist_ok=True)
    predictions = pd.DataFrame(rows, columns=RAW_COLUMNS)
    written = []
    for name, frame in ((f"predictions-{first}-{last}.parquet", predictions),
                        (f"labels-{first}-{last}.parquet", history)):
        path = folder / name
        partial = folder / f".{name}.{os.getpid()}.partial"
        frame.to_parquet(partial, index=False)
        with partial.open("rb") as handle:
            os.fsync(handle.fileno())
        partial.replace(path)
        written.append(path)
    directory = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return written


def _to_frame(fetched: list[tuple]) -> pd.DataFrame:
    """Stored rows (RAW_COLUMNS) as the documented DataFrame."""
    base = pd.DataFrame([r[:-1] for r in fetched], columns=READ_COLUMNS)
    # One parse of the chunk's objects as a JSON array: a third faster than a json.loads call per row.
    features = pd.DataFrame.from_records(json.loads("[" + ",".join(r[-1] for r in fetched) + "]"), index=base.index)
    frame = _base_frame(base)
    # A feature named like a base column would shadow it; the base column wins.
    features = features.drop(columns=[c for c in features.columns if c in READ_COLUMNS])
    return pd.concat([frame, features], axis=1)


def _base_frame(base: pd.DataFrame) -> pd.DataFrame:
    """The READ_COLUMNS of stored rows with their documented types."""
    return pd.DataFrame({
        "prediction_id": base["prediction_id"].astype("int64"),
        "logged_at": pd.to_datetime(base["logged_at"], utc=True, format="ISO8601"),
        "model_version": base["model_version"].astype("object"),
        "prediction": base["prediction"].astype("float64"),
        "label": pd.to_numeric(base["label"]).astype("float64"),
        "event_time": pd.to_datetime(base["event_time"], utc=True, format="ISO8601"),
        "shadow_version": base["shadow_version"].astype("object").where(base["shadow_version"].notna(), None),
        "shadow_prediction": pd.to_numeric(base["shadow_prediction"]).astype("float64"),
    })
