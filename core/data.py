"""Reading data files and cutting them by time: shared by every stage."""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from driftloop.config import Config, DataConfig
from driftloop.errors import DataError
from driftloop.file_checks import content_problem, encoding_problem, repeated
from driftloop.pii import pii_policy

SUPPORTED_SUFFIXES = (".csv", ".parquet", ".pq")
# The reference sample is drawn with a fixed seed: one training set, one reference, in every process.
REFERENCE_SEED = 0


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV or Parquet file, raising DataError with one line naming the fault.

    Whatever the file holds (another format under a data suffix, another encoding, ragged rows, a repeated
    column name), the result is a frame or a DataError: never another exception. See `driftloop.file_checks`.
    """
    path = Path(path)
    kind = check_data_file(path)
    frame = _read_csv(path) if kind == ".csv" else _read_parquet(path)
    twice = repeated(list(frame.columns))
    if twice:
        raise DataError(f"{path}: column {twice[0]} appears more than once; rename or drop the copies")
    if frame.empty:
        raise DataError(f"{path}: file has no rows")
    return frame


def check_data_file(path: Path) -> str:
    """The file's kind (".csv" or ".parquet") once it is a readable, non-empty data file of that kind; DataError
    with one line naming the fault otherwise (a folder, missing, another suffix, empty, another format inside)."""
    if path.is_dir():
        raise DataError(f"{path}: is a directory, not a data file")
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise DataError(f"{path}: unsupported file type {suffix or '(none)'}; use .csv or .parquet")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty")
    kind = ".csv" if suffix == ".csv" else ".parquet"
    problem = content_problem(path, kind)
    if problem:
        raise DataError(f"{path}: {problem}")
    return kind


def _read_csv(path: Path) -> pd.DataFrame:
    """A UTF-8 CSV (pandas drops a byte-order mark); a repeated header name is an error, not renamed `a.1`."""
    try:
        # low_memory=False: types are inferred over the whole column, so a mixed column warns nowhere.
        frame = pd.read_csv(path, encoding="utf-8", low_memory=False)
        header = pd.read_csv(path, encoding="utf-8", header=None, nrows=1, dtype=str, keep_default_na=False)
    except UnicodeDecodeError:
        raise DataError(f"{path}: {encoding_problem(path)}") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: file has no columns") from None
    except pd.errors.ParserError as error:
        raise DataError(f"{path}: not a valid CSV ({_first_line(error)})") from None
    except (OSError, ValueError, OverflowError) as error:
        raise DataError(f"{path}: cannot read as csv ({_first_line(error)})") from None
    twice = repeated(header.iloc[0].tolist()) if len(header) else []
    if twice:
        raise DataError(f"{path}: column {twice[0]} appears more than once in the header; rename or drop the copies")
    return frame


def _read_parquet(path: Path) -> pd.DataFrame:
    """A Parquet file; a repeated column name is named before pyarrow refuses it less clearly."""
    import pyarrow as pa  # here: only Parquet reads pay for importing pyarrow's Parquet reader
    import pyarrow.parquet as pq

    try:
        twice = repeated(pq.read_schema(path).names)
        if twice:
            raise DataError(f"{path}: column {twice[0]} appears more than once; rename or drop the copies")
        return pd.read_parquet(path)
    except (OSError, ValueError, TypeError, pa.ArrowException) as error:
        raise DataError(f"{path}: cannot read as parquet ({_first_line(error)})") from None


def _first_line(error: BaseException) -> str:
    """The first line of an error's message (parsers append whole tables to theirs)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def missing_columns(frame: pd.DataFrame, columns: list[str]) -> list[str]:
    """Columns of `columns` that `frame` lacks, in order."""
    return [c for c in columns if c not in frame.columns]


def require_columns(frame: pd.DataFrame, columns: list[str], source: str) -> None:
    """Raise DataError naming the first missing columns."""
    missing = missing_columns(frame, columns)
    if missing:
        raise DataError(f"{source}: missing column(s) {', '.join(missing)}")


def sort_by_time(frame: pd.DataFrame, data: DataConfig) -> pd.DataFrame:
    """Rows in time order when the config names a timestamp column, else unchanged."""
    if not data.timestamp or data.timestamp not in frame.columns:
        return frame.reset_index(drop=True)
    times = event_times(frame, data)
    return frame.assign(**{data.timestamp: times}).sort_values(data.timestamp, kind="stable").reset_index(
        drop=True
    )


def event_times(frame: pd.DataFrame, data: DataConfig) -> pd.Series:
    """The timestamp column parsed as UTC datetimes."""
    assert data.timestamp is not None
    try:
        with warnings.catch_warnings():
            # "Could not infer format": pandas then parses each value alone; a failure is the DataError below.
            warnings.simplefilter("ignore", UserWarning)
            return pd.to_datetime(frame[data.timestamp], utc=True)
    except (ValueError, TypeError, OverflowError):
        raise DataError(f"column {data.timestamp}: not parseable as timestamps") from None


def split_by_fraction(frame: pd.DataFrame, holdout_fraction: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split rows (already in time order) into an earlier training part and a later holdout."""
    cut = int(round(len(frame) * (1 - holdout_fraction)))
    cut = min(max(cut, 1), len(frame) - 1)
    return frame.iloc[:cut].reset_index(drop=True), frame.iloc[cut:].reset_index(drop=True)


@dataclass(frozen=True)
class Window:
    """One slice of traffic: rows whose timestamp lies in [start, end)."""

    index: int
    start: pd.Timestamp
    end: pd.Timestamp
    frame: pd.DataFrame


def time_windows(frame: pd.DataFrame, data: DataConfig, freq: str) -> Iterator[Window]:
    """Cut rows into consecutive windows of length `freq` (e.g. '7D') from the first row's day; skips empty ones.

    Each row's window is its time floored to the grid, and the rows are grouped by it: the cost follows the rows,
    not the time span (rows stamped 1677 and 2262 with a 1h window are two windows, not five million steps).
    """
    if not data.timestamp:
        raise DataError("data.timestamp is not set: time windows need a timestamp column")
    times = event_times(frame, data)
    timed = np.flatnonzero(times.notna().to_numpy())  # rows without a time belong to no window
    if not len(timed):
        return
    unit = times.dt.unit  # pandas 3 keeps parsed strings in microseconds: work in the column's own unit
    tick = pd.Timedelta(1, unit=unit)
    step, day = pd.Timedelta(freq) // tick, pd.Timedelta("1D") // tick
    stamps = times.array.asi8[timed]
    origin = int(stamps.min()) // day * day  # in integers: the day of 1677-09-21 starts before Timestamp.min (ns)
    # floor((t - origin) / step) without forming t - origin, which can overflow int64 over a long span.
    slots = (stamps // step - origin // step) - (stamps % step < origin % step)
    order = timed[np.argsort(slots, kind="stable")]
    slots = np.sort(slots, kind="stable")
    keys, firsts = np.unique(slots, return_index=True)
    bounds = [*firsts.tolist(), len(order)]
    for index, key in enumerate(keys.tolist()):
        start = origin + key * step  # Python ints: no overflow; the window's start is at most its first row's time
        rows = frame.iloc[np.sort(order[bounds[index]:bounds[index + 1]])].reset_index(drop=True)
        yield Window(index, _utc(start, unit), _utc(start + step, unit), rows)


def _utc(value: int, unit: str) -> pd.Timestamp:
    """A timestamp from an integer count of `unit`s, clamped to the range pandas can hold (window ends may pass it)."""
    try:
        return pd.Timestamp(value, unit=unit, tz="UTC")
    except (OverflowError, ValueError):  # OutOfBoundsDatetime is a ValueError
        return pd.Timestamp.max.tz_localize("UTC") if value > 0 else pd.Timestamp.min.tz_localize("UTC")


def fingerprint(frame: pd.DataFrame) -> str:
    """Content hash of a table (values and column names), stable across file formats."""
    digest = hashlib.sha256()
    digest.update("\x1f".join(map(str, frame.columns)).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()[:16]


def time_range(frame: pd.DataFrame, data: DataConfig) -> tuple[str, str] | None:
    """ISO first and last timestamps of the rows, when there is a timestamp column."""
    if not data.timestamp or data.timestamp not in frame.columns or frame.empty:
        return None
    times = event_times(frame, data)
    return times.min().isoformat(), times.max().isoformat()


def reference_frame(training: pd.DataFrame, config: Config, predictions: np.ndarray | pd.Series | None = None
                    ) -> pd.DataFrame:
    """The monitor's reference from a champion's training rows: features, target, timestamp and, when given,
    the champion's outputs on those rows (for output drift and performance); pii only as data.pii_policy allows
    (dropped, or hashed: joinable with the prediction log); at most monitoring.reference_max_rows rows, the same
    ones every time.

    The registry stores it with each version; the monitor's calibration cache is keyed by its content.
    """
    data = config.data
    policy = pii_policy(config)
    hashed = [c for c in data.pii if policy.key is not None]
    keep = [c for c in dict.fromkeys([*data.features, data.target, data.timestamp, *hashed]) if c and c in training]
    frame = training[keep].reset_index(drop=True)
    if predictions is not None:
        outputs = np.asarray(predictions, dtype="float64")
        if len(outputs) != len(frame):
            raise ValueError(f"{len(outputs)} predictions for {len(frame)} training rows")
        frame[config.monitoring.prediction_column] = outputs
    if len(frame) > config.monitoring.reference_max_rows:
        frame = frame.sample(config.monitoring.reference_max_rows, random_state=REFERENCE_SEED).sort_index()
    return policy.frame(frame).reset_index(drop=True)
