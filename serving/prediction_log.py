"""The durable prediction log: every served prediction with its features, and the labels that arrive later.

The implementation is the package driftloop.serving.log: one interface (log/base.py) on two backends, a SQLite
file (log/sqlite.py, the default) and PostgreSQL (log/postgres.py), chosen by serving.log_uri through `open_log`.
This module keeps the names other code imports: `PredictionLog` is the SQLite backend (a path), `open_log(config)`
opens whichever the config names.
"""

from __future__ import annotations

from driftloop.serving.log import log_exists, log_location, log_name, open_log, open_log_at, read_window
from driftloop.serving.log.base import (
    LABEL_COLUMNS,
    READ_COLUMNS,
    AlreadyLabelled,
    Archived,
    LogBase,
    LogUnavailable,
    NotLabelled,
    UnknownPredictionIds,
    features_json,
    os_principal,
    utc_iso,
)
from driftloop.serving.log.sqlite import SqliteLog as PredictionLog

__all__ = ["LABEL_COLUMNS", "READ_COLUMNS", "AlreadyLabelled", "Archived", "LogBase", "LogUnavailable",
           "NotLabelled", "PredictionLog", "UnknownPredictionIds", "features_json", "log_exists", "log_location",
           "log_name", "open_log", "open_log_at", "os_principal", "read_window", "utc_iso"]
