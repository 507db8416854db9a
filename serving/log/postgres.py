"""The prediction log in PostgreSQL (serving.log_uri: postgresql://...): several model servers, the monitor and
retraining on other machines share one `predictions` table.

The same guarantees as the SQLite file: a request is answered only after the commit holding its rows (the cluster
runs with fsync and synchronous_commit on), group commit (one transaction per queued group), ids consecutive within
a call. Every write transaction first takes one transaction-scoped advisory lock, so writers (all servers, label
imports, retention) commit one at a time, as SQLite's write lock makes them: the ids of a group come from the
sequence while the lock is held, so ids grow in commit order and a reader that saw id N saw every id below it (the
monitor's cursor never skips a row that commits late). Group commit keeps that lock to one commit per group.
Readers take no lock (MVCC).

The connection runs in autocommit mode (a read sees the latest commits); a lost connection is opened again on the
next call. A full disk on the server (SQLSTATE 53100) is LogUnavailable with status 507, other failures 503.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import errors as pg_errors

from driftloop.pii import PiiPolicy
from driftloop.serving.log.base import INSERT_COLUMNS, LogBase, LogUnavailable

# The advisory lock every write transaction takes (an arbitrary 64-bit key: "driftlog" in ASCII).
WRITE_LOCK_KEY = 0x6472696674_6C6F67
CONNECT_TIMEOUT_S = 10

SCHEMA = [
    "CREATE SEQUENCE IF NOT EXISTS predictions_id_seq",
    """CREATE TABLE IF NOT EXISTS predictions (
        prediction_id     BIGINT PRIMARY KEY DEFAULT nextval('predictions_id_seq'),
        logged_at         TEXT NOT NULL,
        model_version     TEXT NOT NULL,
        prediction        DOUBLE PRECISION NOT NULL,
        label             DOUBLE PRECISION,
        event_time        TEXT,
        features          TEXT NOT NULL,
        shadow_version    TEXT,
        shadow_prediction DOUBLE PRECISION
    )""",
    "CREATE INDEX IF NOT EXISTS predictions_logged_at ON predictions(logged_at)",
    """CREATE TABLE IF NOT EXISTS labels (
        label_id      BIGSERIAL PRIMARY KEY,
        prediction_id BIGINT NOT NULL REFERENCES predictions(prediction_id),
        label         DOUBLE PRECISION NOT NULL,
        source        TEXT NOT NULL,
        principal     TEXT NOT NULL,
        received_at   TEXT NOT NULL,
        supersedes    BIGINT UNIQUE REFERENCES labels(label_id),
        reason        TEXT
    )""",
    # The first label wins: one label per prediction that corrects nothing.
    "CREATE UNIQUE INDEX IF NOT EXISTS labels_first ON labels(prediction_id) WHERE supersedes IS NULL",
    "CREATE INDEX IF NOT EXISTS labels_prediction ON labels(prediction_id)",
    """CREATE OR REPLACE FUNCTION labels_append_only() RETURNS trigger LANGUAGE plpgsql AS
       $$ BEGIN RAISE EXCEPTION 'labels are append-only: record a correction instead'; END $$""",
    """CREATE OR REPLACE TRIGGER labels_append_only BEFORE UPDATE ON labels
       FOR EACH ROW EXECUTE FUNCTION labels_append_only()""",
    "CREATE TABLE IF NOT EXISTS log_state (name TEXT PRIMARY KEY, value TEXT NOT NULL, updated_at TEXT)",
]
# One statement for a whole group: a column of values per parameter, ids given explicitly (see _insert_group).
ARRAY_TYPES = {"logged_at": "text", "model_version": "text", "prediction": "float8", "event_time": "text",
               "features": "text", "shadow_version": "text", "shadow_prediction": "float8"}
# The ids are drawn from the sequence row by row in the same statement (one round trip under the write lock, not
# three): nobody else draws while the lock is held, so they are consecutive, in the order of the arrays.
INSERT = (f"INSERT INTO predictions (prediction_id, {', '.join(INSERT_COLUMNS)}) "
          f"SELECT nextval('predictions_id_seq'), {', '.join(INSERT_COLUMNS)} FROM unnest("
          + ", ".join(f"%s::{ARRAY_TYPES[c]}[]" for c in INSERT_COLUMNS)
          + f") WITH ORDINALITY AS rows({', '.join(INSERT_COLUMNS)}, position) ORDER BY position "
          "RETURNING prediction_id")


def redacted(uri: str) -> str:
    """A postgresql:// URL without its password, for messages."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", uri)


class PostgresLog(LogBase):
    """The prediction log in a PostgreSQL database (tables predictions, labels, log_state; made when missing)."""

    def __init__(self, uri: str, pii: Sequence[str] | PiiPolicy = ()) -> None:
        super().__init__(pii)
        self.uri = uri
        self.location = redacted(uri)
        self._conn = self._connect()
        with self._lock, self._transaction():  # two processes opening a new database at once: one makes it
            for statement in SCHEMA:
                self._conn.execute(statement)

    def _connect(self) -> psycopg.Connection:
        try:
            return psycopg.connect(self.uri, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
        except psycopg.OperationalError as error:
            raise LogUnavailable(f"prediction log {self.location}: cannot connect ({str(error).strip()}); check "
                                 "serving.log_uri and that the PostgreSQL server runs") from None

    def _live(self) -> psycopg.Connection:
        """The connection, opened again if it was lost (the server restarted)."""
        if self._conn.closed or self._conn.broken:
            self._conn = self._connect()
        return self._conn

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        cursor = self._live().execute(sql.replace("?", "%s"), params)
        return cursor.fetchall() if cursor.description else []

    def _executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        with self._live().cursor() as cursor:
            cursor.executemany(sql.replace("?", "%s"), rows)

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """A transaction holding the write lock (rolled back on error, the lock released with it)."""
        db = self._live()
        with db.transaction():
            db.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK_KEY,))
            yield

    def _insert_group(self, records: list[tuple]) -> int:
        columns = [list(column) for column in zip(*records, strict=True)]
        ids = [row[0] for row in self._execute(INSERT, columns)]
        first = min(ids)
        if sorted(ids) != list(range(first, first + len(records))):  # the write lock makes this impossible
            raise RuntimeError(f"prediction ids {ids[:3]}... of one group are not consecutive")
        return int(first)

    def _unavailable(self, error: Exception) -> LogUnavailable | None:
        if isinstance(error, LogUnavailable):
            return error
        if isinstance(error, pg_errors.DiskFull | pg_errors.InsufficientResources):
            return LogUnavailable(f"prediction log {self.location}: the database server's disk is full ({error}); "
                                  "nothing was logged: free space on its filesystem", status=507)
        if isinstance(error, psycopg.Error):
            return LogUnavailable(f"prediction log {self.location}: {str(error).strip()}")
        return None

    def _close_connection(self) -> None:
        self._conn.close()

    def _background(self) -> list[threading.Thread]:
        return []
