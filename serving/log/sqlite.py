"""The prediction log in one SQLite file (the default: state_dir/predictions.db).

WAL mode with `synchronous=FULL`: once `append` returns, the rows survive a kill of the process (and a power cut),
so a prediction id handed to a client can always be labelled later. The monitor reads the same file from another
process while the server writes; WAL lets it do so without blocking the writer. `BEGIN IMMEDIATE` takes the write
lock up front, so the ids of a group are ours and consecutive (AUTOINCREMENT never reuses one, even after
retention deleted the newest rows).

Checkpoints (WAL pages copied into the database file, with its own fsync) run in a background thread, not in a
commit that requests wait on. An error there (a full disk, an I/O error) is logged, counted (`checkpoint_errors`,
exported by the server as driftloop_log_checkpoint_errors_total) and retried on the next tick: the thread never
dies, so the WAL cannot grow without bound once the fault clears.

A log file written before the shadow columns, the labels table or the state table gets them when opened.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from driftloop.pii import PiiPolicy
from driftloop.serving.log.base import INSERT_COLUMNS, LogBase, LogUnavailable, logger

# How long a writer waits for another process's lock before giving up (e.g. a label import's chunk).
BUSY_TIMEOUT_S = 30.0
# How often committed WAL pages are copied into the database file (off the commit path).
CHECKPOINT_S = 1.0
# A writer waiting on SQLite's lock sleeps in its busy handler for up to 100 ms at a time; a label import that took
# the lock again at once after each chunk would starve the model server's commits (measured: 3 s waits with
# 10-row chunks). Pausing a little longer than that sleep after each chunk lets every waiting writer in.
IMPORT_PAUSE_S = 0.11

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
# Added after the first schema: nullable, filled only when a challenger scored the row in shadow mode.
SHADOW_COLUMNS = {"shadow_version": "TEXT", "shadow_prediction": "REAL"}
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
STATE_SCHEMA = "CREATE TABLE IF NOT EXISTS log_state (name TEXT PRIMARY KEY, value TEXT NOT NULL, updated_at TEXT)"
INSERT = (f"INSERT INTO predictions ({', '.join(INSERT_COLUMNS)})"
          f" VALUES ({', '.join('?' * len(INSERT_COLUMNS))})")
# SQLite's extended result codes for a full disk and a failed write.
FULL_CODES = {sqlite3.SQLITE_FULL}


class SqliteLog(LogBase):
    """Append-only log of predictions in one SQLite file; labels attached by prediction id, first label wins.

    Safe to share between threads of one process (one connection behind a lock) and to open from several processes
    at once (SQLite's file locks; WAL lets readers run beside the writer).
    """

    import_pause_s = IMPORT_PAUSE_S

    def __init__(self, path: Path, pii: Sequence[str] | PiiPolicy = ()) -> None:
        super().__init__(pii)
        self.path = Path(path)
        self.location = str(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: transactions are opened explicitly (one per group commit).
        self._db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA wal_autocheckpoint=0")
        self._db.execute(SCHEMA)
        self._migrate()

    def _migrate(self) -> None:
        """Add the columns and tables later versions introduced to a log file written before them."""
        if not self._missing_columns() and self._has_labels() and self._has_state():
            return
        with self._lock, self._transaction():  # the write lock: two processes opening at once add each once
            for column in self._missing_columns():
                self._db.execute(f"ALTER TABLE predictions ADD COLUMN {column} {SHADOW_COLUMNS[column]}")
            if not self._has_labels():
                for statement in LABELS_SCHEMA:
                    self._db.execute(statement)
                self._db.execute(LEGACY_LABELS, (datetime.now(UTC).isoformat(),))
            self._db.execute(STATE_SCHEMA)

    def _has_labels(self) -> bool:
        """Whether the labels table and its guards exist (the trigger is created last)."""
        found = self._db.execute("SELECT 1 FROM sqlite_master WHERE type = 'trigger' AND name = 'labels_append_only'")
        return found.fetchone() is not None

    def _has_state(self) -> bool:
        found = self._db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'log_state'")
        return found.fetchone() is not None

    def _missing_columns(self) -> list[str]:
        present = {row[1] for row in self._db.execute("PRAGMA table_info(predictions)")}
        return [column for column in SHADOW_COLUMNS if column not in present]

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        return self._db.execute(sql, params).fetchall()

    def _executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._db.executemany(sql, rows)

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on error: the write lock is taken up front so ids are ours."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._rollback()
            raise
        try:
            self._db.execute("COMMIT")
        except sqlite3.Error:
            self._rollback()  # a failed COMMIT leaves the transaction open
            raise

    def _rollback(self) -> None:
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")

    def _insert_group(self, records: list[tuple]) -> int:
        before = self._max_id()
        self._db.executemany(INSERT, records)
        (last,) = self._db.execute("SELECT last_insert_rowid()").fetchone()
        # BEGIN IMMEDIATE holds the write lock and AUTOINCREMENT counts up by one per row, so the group is the
        # n ids ending at the last one inserted; checked before committing.
        first = last - len(records) + 1
        if first <= before:
            raise RuntimeError(f"prediction log {self.path}: new ids overlap old ones ({first} <= {before})")
        return first

    def _unavailable(self, error: Exception) -> LogUnavailable | None:
        if not isinstance(error, sqlite3.Error):
            return None
        if getattr(error, "sqlite_errorcode", None) in FULL_CODES or "disk is full" in str(error):
            return LogUnavailable(f"prediction log {self.path}: the disk is full ({error}); nothing was logged: "
                                  "free space on the log's filesystem", status=507)
        return LogUnavailable(f"prediction log {self.path}: {error}")

    def _close_connection(self) -> None:
        self._db.close()

    def _background(self) -> list[threading.Thread]:
        return [threading.Thread(target=self._checkpoint_loop, name="prediction-log-checkpoint", daemon=True)]

    def _checkpoint_loop(self) -> None:
        """Copy committed WAL pages into the database file every CHECKPOINT_S, on a connection of its own.

        PASSIVE never blocks the writer or readers; a checkpoint that cannot finish now finishes later. An error
        is logged and counted, and the next tick tries again (on a new connection if the old one broke).
        """
        db: sqlite3.Connection | None = None
        try:
            while not self._closed.wait(CHECKPOINT_S):
                try:
                    db = db or sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, check_same_thread=False)
                    self.checkpoint(db)
                except Exception as error:  # noqa: BLE001 - any failure: count it, keep the thread, retry
                    self.checkpoint_errors += 1
                    logger.warning("prediction log %s: checkpoint failed (%s: %s); retrying in %.0f s", self.path,
                                   error.__class__.__name__, error, CHECKPOINT_S)
                    if self.on_checkpoint_error is not None:
                        self.on_checkpoint_error()
                    if db is not None:
                        db.close()
                        db = None
        finally:
            if db is not None:
                db.close()

    def checkpoint(self, db: sqlite3.Connection) -> None:
        """One passive checkpoint on `db` (the checkpoint thread's connection); raises what SQLite raises."""
        db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
