"""Batch scoring of a CSV or Parquet file with a registered model (`driftloop predict`).

The file is read and scored in chunks of serving.batch_chunk_rows, so memory stays bounded whatever its size; each
chunk is checked against the data contract as /predict checks a request (feature columns present, numbers finite or
missing, known categories with serving.unknown_category reject, parseable event times) and scored with the frame
path of the same model (training.artifacts: the same encoding as the server's rows). The output holds the input's
key columns (serving.batch_key_columns; default every column that is not a feature, the target or PII) and
`prediction`, and with `log` also `prediction_id`: the rows are then written to the prediction log, as the server
writes them (features and event time, no PII), so the monitor sees batch traffic and labels can follow.

Nothing is written on bad input: the output goes to a temporary file beside the target, renamed at the end and
removed on any error; with `log` the whole file is checked in a first pass before any row is logged.
Not done in batch: shadow scoring (the challenger is for live traffic) and the server's request metrics.
"""

from __future__ import annotations

import os
import queue
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from driftloop.config import Config
from driftloop.data import check_data_file
from driftloop.errors import DataError
from driftloop.file_checks import encoding_problem, repeated
from driftloop.pii import pii_policy
from driftloop.serving.prediction_log import LogBase, open_log
from driftloop.serving.quantization import quantize_if_close
from driftloop.serving.validation import TimeBounds
from driftloop.training.artifacts import LoadedModel, output
from driftloop.training.features import category_strings, encode

PREDICTION, PREDICTION_ID = "prediction", "prediction_id"
# Rows per forward pass: a chunk is encoded at once but run through the network in slices whose activations stay in
# the CPU's cache. On the demo's network (2 cores, one torch thread) 2,048-row slices score 137k rows/s where whole
# 131,072-row chunks score 50k (benchmarks/batch_bench.py).
FORWARD_ROWS = 2048
# One torch thread, as the server uses: two threads on two busy cores were 30x slower at 2,048 rows (spin-waits).
TORCH_THREADS = 1
# Chunks read, checked and encoded ahead of the one being scored, in a second thread (the second core).
PREFETCH = 2
OUTPUT_SUFFIXES = (".csv", ".parquet", ".pq")
# Called after each chunk with (rows done so far, progress done so far in the reader's unit).
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class BatchResult:
    """What `driftloop predict` did: rows scored, where they went, the version, and the logged id range."""

    rows: int
    out: Path
    model_version: str
    key_columns: list[str]
    logged: bool
    first_prediction_id: int | None
    last_prediction_id: int | None
    seconds: float
    cpu_seconds: float  # this process's CPU time over the same span: a steadier figure on a shared machine

    def to_json(self) -> dict[str, Any]:
        """The --json output."""
        return {"rows": self.rows, "out": str(self.out), "model_version": self.model_version,
                "key_columns": self.key_columns, "logged": self.logged,
                "first_prediction_id": self.first_prediction_id, "last_prediction_id": self.last_prediction_id,
                "seconds": round(self.seconds, 3), "cpu_seconds": round(self.cpu_seconds, 3),
                "rows_per_s": round(self.rows / self.seconds) if self.seconds else None}


# ---------------------------------------------------------------- reading in chunks


def input_columns(path: Path, kind: str) -> list[str]:
    """The input's column names; DataError for a repeated one or an unreadable header."""
    try:
        if kind == ".csv":
            names = pd.read_csv(path, encoding="utf-8", header=None, nrows=1, dtype=str, keep_default_na=False)
            names = names.iloc[0].tolist() if len(names) else []
        else:
            import pyarrow.parquet as pq

            names = pq.read_schema(path).names
    except UnicodeDecodeError:
        raise DataError(f"{path}: {encoding_problem(path)}") from None
    except Exception as error:  # noqa: BLE001 - any parser failure is the file's fault, said in one line
        raise DataError(f"{path}: cannot read the header ({_first_line(error)})") from None
    if not names:
        raise DataError(f"{path}: file has no columns")
    twice = repeated(names)
    if twice:
        raise DataError(f"{path}: column {twice[0]} appears more than once; rename or drop the copies")
    return [str(n) for n in names]


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def total_units(path: Path, kind: str) -> int:
    """The progress bar's total: rows for Parquet (from its footer), bytes for CSV."""
    if kind == ".csv":
        return path.stat().st_size
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows


def read_chunks(path: Path, kind: str, columns: list[str], text_columns: list[str],
                chunk_rows: int) -> Iterator[tuple[pd.DataFrame, int]]:
    """(chunk, progress units done) over the file; `text_columns` of a CSV are read as text, not guessed per chunk
    (a key column that looks numeric in one chunk and not in the next would change type in the output)."""
    if kind == ".csv":
        with path.open("rb") as handle:
            try:
                reader = pd.read_csv(handle, encoding="utf-8", chunksize=chunk_rows, usecols=columns,
                                     dtype={c: "string" for c in text_columns}, low_memory=False)
                for chunk in reader:
                    yield chunk, handle.tell()
            except UnicodeDecodeError:
                raise DataError(f"{path}: {encoding_problem(path)}") from None
            except (pd.errors.ParserError, ValueError, OverflowError) as error:
                raise DataError(f"{path}: not a valid CSV ({_first_line(error)})") from None
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    done = 0
    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=chunk_rows, columns=columns):
            done += batch.num_rows
            yield batch.to_pandas(), done
    except (OSError, pa.ArrowException) as error:
        raise DataError(f"{path}: cannot read as parquet ({_first_line(error)})") from None


# ---------------------------------------------------------------- the contract, per chunk


def check_chunk(chunk: pd.DataFrame, first_row: int, path: Path, config: Config, model: LoadedModel,
                bounds: TimeBounds | None) -> tuple[pd.DataFrame, list[str | None] | None]:
    """The chunk's features (numbers as float64) and event times (when logging); DataError naming the column and
    the file's row (1-based, as a spreadsheet numbers data rows) of the first value /predict would refuse."""
    data = config.data
    features = pd.DataFrame(index=chunk.index)
    for column in data.features:
        if column in data.numerical:
            features[column] = _numbers(chunk[column], column, first_row, path)
        else:
            features[column] = chunk[column]
    if config.serving.unknown_category == "reject":
        for column in model.spec.categorical:
            keys = category_strings(features[column])
            unknown = keys.notna() & ~keys.isin(model.spec.vocab.get(column, []))
            _refuse_first(unknown, chunk[column], column, first_row, path,
                          "is a category the model never saw (serving.unknown_category is reject)")
    times = None
    if bounds is not None and data.timestamp and data.timestamp in chunk.columns:
        times = _event_times(chunk[data.timestamp], first_row, path, data.timestamp, bounds)
    return features, times


def _numbers(values: pd.Series, column: str, first_row: int, path: Path) -> pd.Series:
    """A numerical column as float64 (missing stays NaN); DataError for text or an infinite number."""
    numbers = pd.to_numeric(values, errors="coerce").astype("float64") if values.dtype == object \
        or pd.api.types.is_string_dtype(values) else values.astype("float64")
    _refuse_first(numbers.isna() & values.notna(), values, column, first_row, path, "is not a number")
    _refuse_first(pd.Series(np.isinf(numbers.to_numpy()), index=values.index), values, column, first_row, path,
                  "is not a finite number")
    return numbers


def _refuse_first(bad: pd.Series, values: pd.Series, column: str, first_row: int, path: Path, what: str) -> None:
    """DataError for the first True of `bad`, naming the file, column, row and value."""
    if bad.any():
        position = int(np.argmax(bad.to_numpy()))
        value = values.iloc[position]
        raise DataError(f"{path}: column {column}, row {first_row + position + 1}: "
                        f"{getattr(value, 'item', lambda: value)()!r} {what}")


def _event_times(values: pd.Series, first_row: int, path: Path, column: str, bounds: TimeBounds) -> list[str | None]:
    """ISO UTC event times for the log; DataError for one that does not parse or that /predict's bounds refuse."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        stamps = pd.to_datetime(values, utc=True, errors="coerce")
    _refuse_first(stamps.isna() & values.notna(), values, column, first_row, path, "is not an ISO 8601 timestamp")
    late = stamps > bounds.not_after
    _refuse_first(late, values, column, first_row, path, "is in the future (later than the clock + "
                  "serving.max_clock_skew)")
    if bounds.not_before is not None:
        _refuse_first(stamps < bounds.not_before, values, column, first_row, path,
                      "is older than serving.max_event_age allows")
    codes, uniques = pd.factorize(stamps)  # traffic repeats its times (hourly buckets): format each once
    iso = np.array([stamp.isoformat() for stamp in uniques] + [None], dtype=object)
    return iso[codes].tolist()  # code -1 (missing) picks the trailing None


def key_columns(config: Config, columns: list[str], path: Path) -> list[str]:
    """The input columns copied to the output: serving.batch_key_columns, or every column that is not a feature,
    the target or PII; DataError for a configured one the input lacks, or a clash with the output's own columns."""
    data = config.data
    configured = config.serving.batch_key_columns
    if configured is not None:
        missing = [c for c in configured if c not in columns]
        if missing:
            raise DataError(f"{path}: missing key column(s) {missing} (serving.batch_key_columns)")
        keys = list(configured)
    else:
        dropped = set(data.features) | {data.target} | set(data.pii)
        keys = [c for c in columns if c not in dropped]
    clash = [c for c in keys if c in (PREDICTION, PREDICTION_ID)]
    if clash:
        raise DataError(f"{path}: input column(s) {clash} would clash with the output's; rename them or set "
                        "serving.batch_key_columns")
    return keys


# ---------------------------------------------------------------- writing


def check_output(out: Path) -> str:
    """The output's suffix; DataError for an unsupported one or a folder that does not exist."""
    suffix = out.suffix.lower()
    if suffix not in OUTPUT_SUFFIXES:
        raise DataError(f"{out}: unsupported output type {suffix or '(none)'}; use .csv or .parquet")
    if not out.parent.is_dir():
        raise DataError(f"{out}: folder {out.parent} does not exist")
    if out.is_dir():
        raise DataError(f"{out}: is a directory")
    return ".csv" if suffix == ".csv" else ".parquet"


class ChunkWriter:
    """Appends output chunks to a temporary file beside the target; `commit` renames it into place."""

    def __init__(self, out: Path, kind: str) -> None:
        self.out = out
        self.kind = kind
        self.temp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        self._parquet: Any = None
        self._schema: Any = None
        self._header = True

    def write(self, frame: pd.DataFrame) -> None:
        """Append one chunk."""
        if self.kind == ".csv":
            frame.to_csv(self.temp, mode="w" if self._header else "a", header=self._header, index=False)
            self._header = False
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pandas(frame, preserve_index=False)
        if self._parquet is None:
            self._schema = table.schema
            self._parquet = pq.ParquetWriter(self.temp, self._schema)
        elif table.schema != self._schema:
            table = table.cast(self._schema)  # e.g. a key column all null in one chunk
        self._parquet.write_table(table)

    def commit(self) -> None:
        """Close and rename the temporary file onto the target (atomic on one file system)."""
        self._close()
        os.replace(self.temp, self.out)

    def discard(self) -> None:
        """Close and remove the temporary file: nothing is left behind."""
        self._close()
        self.temp.unlink(missing_ok=True)

    def _close(self) -> None:
        if self._parquet is not None:
            self._parquet.close()
            self._parquet = None


# ---------------------------------------------------------------- the whole run


def load_scoring_model(config: Config, version: str | None, alias: str | None) -> LoadedModel:
    """The registered version to score with: --version, --alias, or the champion (int8 when serving.quantize
    accepts it, as the server would serve it)."""
    from driftloop.registry.store import CHAMPION, load_alias, load_version  # MLflow is slow to import

    model = load_version(config, version) if version else load_alias(config, alias or CHAMPION)
    if config.serving.quantize:
        with open_log(config, pii=pii_policy(config)) as log:
            model = quantize_if_close(model, config, log).model
    return model


@contextmanager
def _open_log(config: Config, enabled: bool) -> Iterator[LogBase | None]:
    """The config's prediction log (serving.log_uri: the SQLite file or PostgreSQL) when logging, else None."""
    if not enabled:
        yield None
        return
    with open_log(config, pii=pii_policy(config)) as log:
        yield log


def predict_file(config: Config, data: Path, out: Path, *, version: str | None = None, alias: str | None = None,
                 log: bool = False, progress: Callable[[int], Progress] | None = None) -> BatchResult:
    """Score `data` into `out` (see the module docstring); DataError/RegistryError on bad input, nothing written.

    `progress(total)` gives the callback each chunk reports to (total: rows for Parquet, bytes for CSV).
    """
    check_output(out)
    check_data_file(data)  # the file's faults before the registry is asked for a model
    model = load_scoring_model(config, version, alias)
    return score_file(config, model, data, out, log=log, progress=progress)


def score_file(config: Config, model: LoadedModel, data: Path, out: Path, *, log: bool = False,
               progress: Callable[[int], Progress] | None = None) -> BatchResult:
    """Score `data` into `out` with `model`: the chunked loop of predict_file (its `seconds`: this loop's)."""
    started, cpu_started = time.perf_counter(), time.process_time()
    kind, out_kind = check_data_file(data), check_output(out)
    columns = input_columns(data, kind)
    missing = [c for c in config.data.features if c not in columns]
    if missing:
        raise DataError(f"{data}: missing feature column(s) {', '.join(missing)}")
    keys = key_columns(config, columns, data)
    wanted = list(dict.fromkeys([*keys, *config.data.features,
                                 *([config.data.timestamp] if log and config.data.timestamp in columns else [])]))
    text = [c for c in wanted if c not in config.data.numerical]
    chunk_rows = config.serving.batch_chunk_rows
    bounds = TimeBounds.now(config.serving) if log else None
    if log:  # the whole file checked first: a bad row late in the file must not leave earlier rows logged
        first = 0
        for chunk, _ in read_chunks(data, kind, wanted, text, chunk_rows):
            check_chunk(chunk, first, data, config, model, bounds)
            first += len(chunk)
    report = progress(total_units(data, kind)) if progress else None
    writer = ChunkWriter(out, out_kind)
    rows, first_id, last_id = 0, None, None
    chunks = (prepare(chunk, first, done, data, config, model, bounds)
              for chunk, first, done in numbered(read_chunks(data, kind, wanted, text, chunk_rows)))
    try:
        with _open_log(config, log) as prediction_log, prefetched(chunks, PREFETCH) as ready:
            for item in ready:
                chunk = item.chunk
                predictions = forward_slices(model, item.x)
                if not np.isfinite(predictions).all():
                    raise DataError(f"model version {model.version} returned non-finite predictions for rows "
                                    f"{rows + 1}-{rows + len(chunk)} of {data}")
                result = chunk[keys].reset_index(drop=True)
                result[PREDICTION] = predictions
                if prediction_log is not None:
                    ids = _log_chunk(prediction_log, item.features, predictions, str(model.version), item.times)
                    result[PREDICTION_ID] = ids
                    first_id = ids[0] if first_id is None and ids else first_id
                    last_id = ids[-1] if ids else last_id
                writer.write(result)
                rows += len(chunk)
                if report:
                    report(rows, item.done)
        if rows == 0:
            raise DataError(f"{data}: file has no rows")
        writer.commit()
    except BaseException:
        writer.discard()
        raise
    return BatchResult(rows, out, str(model.version), keys, log, first_id, last_id, time.perf_counter() - started,
                       time.process_time() - cpu_started)


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch's intra-op threads set for the block, and restored after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass(frozen=True)
class Prepared:
    """A chunk read, checked and encoded: what the scoring loop needs of it."""

    chunk: pd.DataFrame
    features: pd.DataFrame
    times: list[str | None] | None
    x: torch.Tensor
    done: int


def numbered(chunks: Iterator[tuple[pd.DataFrame, int]]) -> Iterator[tuple[pd.DataFrame, int, int]]:
    """(chunk, index of its first row in the file, progress units done)."""
    first = 0
    for chunk, done in chunks:
        yield chunk, first, done
        first += len(chunk)


def prepare(chunk: pd.DataFrame, first: int, done: int, path: Path, config: Config, model: LoadedModel,
            bounds: TimeBounds | None) -> Prepared:
    """Check a chunk against the contract and encode its features for the network."""
    features, times = check_chunk(chunk, first, path, config, model, bounds)
    return Prepared(chunk, features, times, encode(features, model.spec), done)


@contextmanager
def prefetched(items: Iterator[Prepared], depth: int) -> Iterator[Iterator[Prepared]]:
    """`items` produced by a background thread at most `depth` ahead, so that reading, checking and encoding the
    next chunks overlap the network's work on this one (two cores); the producer's errors are raised here, and
    leaving the block early stops it."""
    ahead: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(kind: str, value: Any) -> bool:
        while not stop.is_set():
            try:
                ahead.put((kind, value), timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put("item", item):
                    return
            put("end", None)
        except BaseException as error:  # handed to the consumer, which raises it
            put("error", error)
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()  # a generator stopped early closes the file it reads

    def consume() -> Iterator[Prepared]:
        while True:
            kind, value = ahead.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value

    worker = threading.Thread(target=produce, name="batch-reader", daemon=True)
    worker.start()
    try:
        yield consume()
    finally:
        stop.set()
        worker.join()


def forward_slices(model: LoadedModel, x: torch.Tensor) -> np.ndarray:
    """The model's predictions for an encoded chunk, FORWARD_ROWS rows at a time."""
    with torch_threads(TORCH_THREADS):
        parts = [output(model.net, model.spec, x[i:i + FORWARD_ROWS]) for i in range(0, len(x), FORWARD_ROWS)]
    return np.concatenate(parts).astype("float64") if parts else np.zeros(0)


def json_rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """A frame's rows as the plain dicts a request's JSON gives (Python numbers and strings, None for missing),
    built column by column: pandas' to_dict("records") boxes every value on its own, 5x slower."""
    columns = []
    for column in frame.columns:
        values = frame[column]
        missing = values.isna().to_numpy()
        plain = values.to_numpy(dtype=object) if values.dtype != "float64" else values.to_numpy().astype(object)
        if missing.any():
            plain[missing] = None
        columns.append(plain.tolist())
    names = list(frame.columns)
    return [dict(zip(names, row, strict=True)) for row in zip(*columns, strict=True)]


def _log_chunk(log: LogBase, features: pd.DataFrame, predictions: np.ndarray, version: str,
               times: list[str | None] | None) -> list[int]:
    """Write a chunk's rows to the prediction log through the server's insert path; their ids."""
    rows = json_rows(features)
    values = predictions.tolist()
    records = log.records(rows, values, version, times or [None] * len(rows), None, None)
    return list(log.submit_records(records).result())
