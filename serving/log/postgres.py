"""The prediction log in PostgreSQL (serving.log_uri: postgresql://...): several model servers, the monitor and
retraining on other machines share one `predictions` table.

The same guarantees as the SQLite file: a request is answered only after the commit holding its rows (the cluster
runs with fsync and synchronous_commit on), group commit (one transaction per queued group), ids consecutive within
a call, and a reader that saw id N saw every id below it (the monitor's cursor never passes a row that commits late).

Writers of predictions (every model server) commit side by side, so that two servers' commits share the WAL flushes
instead of waiting for each other: one statement per group (the function `log_predictions`, one round trip, its own
transaction) takes a transaction id first, then draws the group's block of ids under a session advisory lock held
for the two sequence calls only (not through the commit), and inserts the rows. Ids are then drawn in one order and
committed in another, so readers stop where nothing can still arrive (`_read_limit`): the sequence's last value,
once every transaction id assigned before the reader's own (taken just after reading it) has ended. A transaction
that drew an id at or below that value had its transaction id before drawing, so it is one of them; the wait lasts
about one commit, and is bounded (`read_wait_s`, then LogUnavailable naming what to look at).

Other writes (labels, state records, retention) take one transaction-scoped advisory lock and run one at a time,
as SQLite's write lock makes them (their checks, e.g. "first label wins", read and write in one step); they draw no
prediction ids, so predictions never wait for them. Readers take no lock (MVCC).

The connection runs in autocommit mode (a read sees the latest commits); a lost connection is opened again on the
next call. A full disk on the server (SQLSTATE 53100) is LogUnavailable with status 507, other failures 503.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import errors as pg_errors

from driftloop.pii import PiiPolicy
from driftloop.serving.log.base import INSERT_COLUMNS, LogBase, LogUnavailable

# The advisory lock the other write transactions take (labels, state, retention, the schema; an arbitrary 64-bit
# key: "driftlog" in ASCII).
WRITE_LOCK_KEY = 0x6472696674_6C6F67
# The session advisory lock around drawing one group's block of ids ("driftids"): held for two sequence calls.
ID_LOCK_KEY = 0x6472696674_696473
CONNECT_TIMEOUT_S = 10
# How long a read waits for the transactions in flight (normally one commit, a few ms) before LogUnavailable: a
# transaction open that long is stuck (idle in transaction, or its client hung) and holds back every reader.
READ_WAIT_S = 30.0
# The read's polls for those transactions: the first pause, doubled up to the last.
READ_POLL_S = (0.001, 0.05)

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
# A group of rows as one column of values per parameter (INSERT_COLUMNS order).
ARRAY_TYPES = {"logged_at": "text", "model_version": "text", "prediction": "float8", "event_time": "text",
               "features": "text", "shadow_version": "text", "shadow_prediction": "float8"}
# One group commit in one statement (see the module docstring): the transaction id first (readers wait for it), the
# block of ids under the id lock (released on any error, a cancel included: a session lock outlives the statement),
# then the rows; returns the first id. Parameters are positional: their names would clash with the columns.
PARAMETER_TYPES = ", ".join(f"{ARRAY_TYPES[c]}[]" for c in INSERT_COLUMNS)
WRITE_FUNCTION = f"""CREATE OR REPLACE FUNCTION log_predictions({PARAMETER_TYPES})
    RETURNS bigint LANGUAGE plpgsql AS $$
    DECLARE
        n bigint := cardinality($1);
        first_id bigint;
    BEGIN
        PERFORM pg_current_xact_id();
        PERFORM pg_advisory_lock({ID_LOCK_KEY});
        BEGIN
            first_id := nextval('predictions_id_seq');
            IF n > 1 THEN
                PERFORM setval('predictions_id_seq', first_id + n - 1);
            END IF;
        EXCEPTION WHEN OTHERS OR query_canceled THEN
            PERFORM pg_advisory_unlock({ID_LOCK_KEY});
            RAISE;
        END;
        PERFORM pg_advisory_unlock({ID_LOCK_KEY});
        INSERT INTO predictions (prediction_id, {", ".join(INSERT_COLUMNS)})
            SELECT first_id + r.position - 1, {", ".join(f"r.{c}" for c in INSERT_COLUMNS)}
            FROM unnest({", ".join(f"${i + 1}" for i in range(len(INSERT_COLUMNS)))})
                WITH ORDINALITY AS r({", ".join(INSERT_COLUMNS)}, position);
        RETURN first_id;
    END $$"""
SCHEMA.append(WRITE_FUNCTION)
WRITE_GROUP = ("SELECT log_predictions(" + ", ".join(f"%s::{ARRAY_TYPES[c]}[]" for c in INSERT_COLUMNS) + ")")
# The highest id drawn so far (0: none); read first.
DRAWN = "SELECT COALESCE(pg_sequence_last_value('predictions_id_seq'), 0)"
# Then a transaction id of the reader's own (a transaction of its own, ended at once): every transaction id assigned
# before it is smaller (as text: psycopg has no loader for xid8).
OWN_XID = "SELECT pg_current_xact_id()::text"
# The oldest transaction in flight now (a snapshot's xmin; when none is, the next one to be assigned).
OLDEST = "SELECT pg_snapshot_xmin(pg_current_snapshot())::text"


def redacted(uri: str) -> str:
    """A postgresql:// URL without its password, for messages."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", uri)


class PostgresLog(LogBase):
    """The prediction log in a PostgreSQL database (tables predictions, labels, log_state and the function
    log_predictions; made when missing)."""

    read_wait_s = READ_WAIT_S

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

    def _write_group(self, records: list[tuple]) -> int:
        """One group commit: `log_predictions` in its own transaction (autocommit), without the write lock."""
        columns = [list(column) for column in zip(*records, strict=True)]
        ((first,),) = self._execute(WRITE_GROUP, columns)
        return int(first)

    def _read_limit(self) -> int:
        """The sequence's last value, once every transaction id assigned before the reader's own (taken just after)
        has ended (see the module docstring). That counts any writing transaction of the cluster, in any database:
        LogUnavailable when one is still open after `read_wait_s`."""
        ((drawn,),) = self._execute(DRAWN)
        ((own,),) = self._execute(OWN_XID)
        deadline = time.monotonic() + self.read_wait_s
        pause, longest = READ_POLL_S
        while int(oldest := self._execute(OLDEST)[0][0]) <= int(own):
            if time.monotonic() > deadline:
                raise LogUnavailable(
                    f"prediction log {self.location}: transaction {oldest} still open after {self.read_wait_s:g} s "
                    "holds back every read (ids drawn before it may still commit); find it with SELECT pid, state, "
                    "xact_start FROM pg_stat_activity WHERE backend_xid IS NOT NULL, and end it "
                    "(pg_terminate_backend) if it is stuck")
            time.sleep(pause)
            pause = min(2 * pause, longest)
        return int(drawn)

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
