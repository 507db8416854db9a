"""The prediction log: one interface (base.LogBase), two backends (SQLite file, PostgreSQL), chosen by
serving.log_uri (`open_log`)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd

from driftloop.config import Config
from driftloop.env import stack_part_url
from driftloop.errors import ConfigError
from driftloop.pii import PiiPolicy
from driftloop.serving.log.base import ARCHIVE_DIR, Archived, LogBase
from driftloop.state import prediction_log_path, state_path

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def log_location(config: Config) -> str:
    """serving.log_uri; when it is not set, the local stack's PostgreSQL while it runs (stack.database: postgres,
    so that every server, command and flow of the stack writes and reads one log), else the SQLite file under
    state_dir."""
    return config.serving.log_uri or stack_part_url(Path(config.state_dir), "postgres") or \
        str(prediction_log_path(config))


def is_postgres(location: str) -> bool:
    return location.startswith(POSTGRES_SCHEMES)


def open_log_at(location: str | Path, pii: Sequence[str] | PiiPolicy = ()) -> LogBase:
    """The log at a postgresql:// URL, a sqlite:/// URL or a file path."""
    text = str(location)
    if is_postgres(text):
        from driftloop.serving.log.postgres import PostgresLog

        return PostgresLog(text, pii)
    if "://" in text and not text.startswith("sqlite:///"):
        raise ConfigError(f"serving.log_uri: {text.split('://')[0]}:// is not a log backend; use postgresql://... "
                          "or a SQLite file path (sqlite:///path)")
    from driftloop.serving.log.sqlite import SqliteLog

    return SqliteLog(Path(text.removeprefix("sqlite:///") if text.startswith("sqlite:///") else text), pii)


def open_log(config: Config, pii: Sequence[str] | PiiPolicy = ()) -> LogBase:
    """The config's prediction log (serving.log_uri; default the SQLite file under state_dir)."""
    return open_log_at(log_location(config), pii)


def log_name(config: Config) -> str:
    """The log as shown to people and in lineage: the SQLite file's path, or the URL without its password."""
    location = log_location(config)
    if is_postgres(location):
        from driftloop.serving.log.postgres import redacted

        return redacted(location)
    return location


def read_window(config: Config, first_id: int | None, last_id: int | None, labelled_only: bool = False,
                pii: Sequence[str] | PiiPolicy = ()) -> pd.DataFrame:
    """`read` of an id range of the config's log, fetched serving.log_read_chunk_rows rows at a time (no query
    result larger than a chunk is ever held besides the frame itself)."""
    with open_log(config, pii) as log:
        chunks = list(log.read_chunks(first_id, last_id, labelled_only, chunk_rows=config.serving.log_read_chunk_rows))
        if not chunks:
            return log.read(first_id, last_id, labelled_only)  # empty, with the documented columns
    return chunks[0] if len(chunks) == 1 else pd.concat(chunks, ignore_index=True)


def prune_log(config: Config) -> Archived:
    """Retention (`driftloop log-prune`): rows logged more than serving.log_retention_days ago, with their labels,
    archived to Parquet under state_dir/archive/predictions and then deleted (LogBase.archive_before); ConfigError
    when no retention is set."""
    days = config.serving.log_retention_days
    if days is None:
        raise ConfigError("serving.log_retention_days is not set: nothing to prune (set it, e.g. 90, to archive and "
                          "delete older rows)")
    if not log_exists(config):
        return Archived(0, None, None, ())
    cutoff = datetime.now(UTC) - timedelta(days=days)
    with open_log(config) as log:
        return log.archive_before(cutoff, state_path(config, ARCHIVE_DIR, "predictions", "x").parent,
                                  chunk_rows=config.serving.log_read_chunk_rows)


def log_exists(config: Config) -> bool:
    """Whether there is a log to read: the SQLite file exists, or a PostgreSQL URL is configured."""
    location = log_location(config)
    return is_postgres(location) or Path(location).is_file()
