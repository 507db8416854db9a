"""Checking request bodies against the data contract before anything is scored or logged.

Every fault is reported as `{"row": i, "field": name, "error": text}` (row is null for faults of the
request as a whole), so a client can fix all of them from one 422 answer.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from driftloop.config import DataConfig, ServingConfig
from driftloop.errors import DataError
from driftloop.serving.prediction_log import utc_iso
from driftloop.training.artifacts import category_key
from driftloop.training.features import FeatureSpec

# A 10,000-row batch with one column missing everywhere would otherwise answer 10,000 entries.
MAX_REPORTED_ERRORS = 100

FieldError = dict[str, Any]


class InvalidRequest(Exception):
    """The request breaks the contract; `errors` names each row and field at fault."""

    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__(f"{len(errors)} invalid field(s)")
        self.errors = errors


@dataclass(frozen=True)
class Batch:
    """Rows that passed validation: features only (contract order) and their event times."""

    rows: list[dict[str, Any]]
    event_times: list[str | None]


@dataclass(frozen=True)
class TimeBounds:
    """The event times a request may carry: not after the server's clock + serving.max_clock_skew, not before its
    clock - serving.max_event_age (when set)."""

    not_after: pd.Timestamp
    not_before: pd.Timestamp | None = None

    @classmethod
    def now(cls, serving: ServingConfig) -> TimeBounds:
        """The bounds at this moment."""
        now = pd.Timestamp.now(tz="UTC")
        age = serving.max_event_age
        return cls(now + _duration(serving.max_clock_skew), now - _duration(age) if age else None)

    def problem(self, iso: str) -> str | None:
        """Why an event time (ISO UTC, from utc_iso) is out of bounds, or None."""
        stamp = _instant(iso)
        if stamp > self.not_after:
            return (f"event time {iso} is in the future (later than the server's clock + serving.max_clock_skew, "
                    f"{self.not_after.isoformat()}); fix the client's clock")
        if self.not_before is not None and stamp < self.not_before:
            return (f"event time {iso} is older than serving.max_event_age allows ({self.not_before.isoformat()}); "
                    "raise or unset serving.max_event_age to accept it")
        return None


@functools.lru_cache(maxsize=4096)  # traffic repeats timestamps (hourly buckets): parse each once
def _instant(iso: str) -> pd.Timestamp:
    return pd.Timestamp(iso)


@functools.lru_cache(maxsize=16)  # the config's two durations, parsed once rather than per request
def _duration(text: str) -> pd.Timedelta:
    return pd.Timedelta(text)


def json_type(value: object) -> str:
    """The JSON name of a decoded value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _is_number(value: object) -> bool:
    """A JSON number: int or float, but not a boolean (bool is an int subclass in Python)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_numerical(value: object) -> str | None:
    """Why `value` cannot be a numerical feature, or None if it can (numbers and null)."""
    if value is None:
        return None
    if not _is_number(value):
        return f"expected a number or null, got {json_type(value)}"
    if not math.isfinite(value):
        return f"expected a finite number or null, got {value}"
    return None


def check_categorical(value: object) -> str | None:
    """Why `value` cannot be a categorical feature, or None if it can (strings, numbers; null is 'unknown')."""
    if value is None or isinstance(value, str):
        return None
    if not _is_number(value):
        return f"expected a string or number, got {json_type(value)}"
    if not math.isfinite(value):
        return f"expected a string or finite number, got {value}"
    return None


def category_value(value: object) -> object:
    """3.0 and 3 are one category, as in training (training.features.category_strings)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def check_timestamp(value: object) -> tuple[str | None, str | None]:
    """(ISO UTC event time, error) for the optional timestamp field."""
    if value is None:
        return None, None
    if not isinstance(value, str):
        return None, f"expected an ISO 8601 timestamp string or null, got {json_type(value)}"
    try:
        return utc_iso(value), None
    except DataError:
        return None, f"expected an ISO 8601 timestamp, got {value!r}"


def _capped(errors: list[FieldError]) -> list[FieldError]:
    """At most MAX_REPORTED_ERRORS entries, plus one saying how many were left out."""
    if len(errors) <= MAX_REPORTED_ERRORS:
        return errors
    left = len(errors) - MAX_REPORTED_ERRORS
    return errors[:MAX_REPORTED_ERRORS] + [{"row": None, "field": None, "error": f"{left} more errors not shown"}]


def parse_rows(rows: list[Any], data: DataConfig, max_rows: int, bounds: TimeBounds | None = None) -> Batch:
    """Validate request rows against the contract; raise InvalidRequest naming every fault.

    The target, PII and unknown keys are ignored: only feature columns are kept for scoring and the
    log; the timestamp column, when the config names one, becomes the event time, which must lie within
    `bounds` when given.
    """
    if not rows:
        raise InvalidRequest([{"row": None, "field": "rows", "error": "at least one row is required"}])
    if len(rows) > max_rows:
        raise InvalidRequest([{"row": None, "field": "rows",
                               "error": f"{len(rows)} rows exceed serving.max_batch_rows ({max_rows})"}])
    errors: list[FieldError] = []
    kept: list[dict[str, Any]] = []
    times: list[str | None] = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            errors.append({"row": i, "field": None, "error": f"expected an object, got {json_type(row)}"})
            continue
        features: dict[str, Any] = {}
        for column in data.features:
            if column not in row:
                errors.append({"row": i, "field": column, "error": "missing feature column"})
                continue
            value = row[column]
            numeric = column in data.numerical
            problem = check_numerical(value) if numeric else check_categorical(value)
            if problem:
                errors.append({"row": i, "field": column, "error": problem})
            features[column] = value if numeric else category_value(value)
        time, problem = check_timestamp(row.get(data.timestamp)) if data.timestamp else (None, None)
        if time is not None and bounds is not None:
            problem = bounds.problem(time)
        if problem:
            errors.append({"row": i, "field": data.timestamp, "error": problem})
        kept.append(features)
        times.append(time)
    if errors:
        raise InvalidRequest(_capped(errors))
    return Batch(kept, times)


def check_known_categories(rows: list[dict[str, Any]], spec: FeatureSpec) -> None:
    """For serving.unknown_category = "reject": InvalidRequest naming each category the model never saw.

    A null category is a missing value, not an unknown one, and is scored as the unknown bucket either way.
    """
    known = {column: set(spec.vocab.get(column, [])) for column in spec.categorical}
    errors: list[FieldError] = []
    for i, row in enumerate(rows):
        for column, vocab in known.items():
            key = category_key(row.get(column))
            if key is not None and key not in vocab:
                errors.append({"row": i, "field": column,
                               "error": f"unknown category {row[column]!r} (serving.unknown_category is reject)"})
    if errors:
        raise InvalidRequest(_capped(errors))


def parse_labels(items: list[Any], task: str, max_rows: int) -> tuple[list[int], list[float]]:
    """Validate `{"prediction_id": int, "label": number}` items; classification labels must be 0 or 1."""
    if not items:
        raise InvalidRequest([{"row": None, "field": "labels", "error": "at least one label is required"}])
    if len(items) > max_rows:
        raise InvalidRequest([{"row": None, "field": "labels",
                               "error": f"{len(items)} labels exceed serving.max_batch_rows ({max_rows})"}])
    errors: list[FieldError] = []
    ids: list[int] = []
    labels: list[float] = []
    first_row: dict[int, int] = {}  # prediction id -> the row that named it first
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            errors.append({"row": i, "field": None, "error": f"expected an object, got {json_type(item)}"})
            continue
        pid, label = item.get("prediction_id"), item.get("label")
        if not isinstance(pid, int) or isinstance(pid, bool):
            errors.append({"row": i, "field": "prediction_id", "error": f"expected an integer, got {json_type(pid)}"})
        elif pid in first_row:
            errors.append({"row": i, "field": "prediction_id",
                           "error": f"prediction id {pid} is labelled twice (also row {first_row[pid]})"})
        else:
            first_row[pid] = i
        label_problem = check_numerical(label) if label is not None else "expected a number, got null"
        if not label_problem and task == "classification" and label not in (0, 1):
            label_problem = f"a classification label must be 0 or 1, got {label}"
        if label_problem:
            errors.append({"row": i, "field": "label", "error": label_problem})
        ids.append(pid)  # type: ignore[arg-type]  # only used when there are no errors
        labels.append(label)  # type: ignore[arg-type]
    if errors:
        raise InvalidRequest(_capped(errors))
    return ids, [float(v) for v in labels]
