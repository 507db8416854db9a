"""Delayed labels from a file: the rows `driftloop label` attaches to the prediction log (the operator's command,
on the log itself: no token; the audit trail records the OS user).

New labels are written in chunks of serving.label_import_chunk_rows, each its own short transaction, so the model
server's commits never wait behind a whole file. Every id is checked first (an unknown id or one labelled with a
different value: nothing is written). An import killed halfway is resumed by running the same command again: the
labels already written with the same values are skipped, the rest are added."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from driftloop.config import Config
from driftloop.data import read_table
from driftloop.errors import DataError
from driftloop.serving.log import is_postgres
from driftloop.serving.prediction_log import (
    AlreadyLabelled,
    NotLabelled,
    UnknownPredictionIds,
    log_exists,
    log_location,
    log_name,
    open_log,
)


def read_label_file(config: Config, path: Path) -> tuple[list[int], list[float]]:
    """Prediction ids and labels from a CSV/Parquet file with columns prediction_id and label (or the config's
    target); DataError naming the file, column and first bad row otherwise."""

    def shown(column: str, row: int) -> str:
        value = frame[column].iloc[row]
        return repr(getattr(value, "item", lambda: value)())  # numpy scalars as plain Python values

    frame = read_table(path)
    label = next((c for c in ("label", config.data.target) if c in frame.columns), None)
    if "prediction_id" not in frame.columns or label is None:
        missing = [c for c, ok in (("prediction_id", "prediction_id" in frame.columns),
                                   (f"label (or {config.data.target})", label is not None)) if not ok]
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}")
    ids = pd.to_numeric(frame["prediction_id"], errors="coerce")
    bad = ids.isna() | (ids != ids.round())
    if bad.any():
        row = int(bad.to_numpy().argmax())
        raise DataError(f"{path}: column prediction_id, row {row + 1}: {shown('prediction_id', row)} "
                        "is not an integer id")
    values = pd.to_numeric(frame[label], errors="coerce")
    bad = values.isna() | ~values.isin([0, 1]) if config.data.task == "classification" else values.isna()
    if bad.any():
        row = int(bad.to_numpy().argmax())
        kind = "0 or 1" if config.data.task == "classification" else "a number"
        raise DataError(f"{path}: column {label}, row {row + 1}: {shown(label, row)} is not {kind}")
    twice = ids[ids.duplicated(keep="first")]
    if not twice.empty:
        row = int(twice.index[0])
        raise DataError(f"{path}: column prediction_id, row {row + 1}: {int(ids.iloc[row])} appears more than once; "
                        "give one label per prediction")
    return [int(i) for i in ids], [float(v) for v in values]


@dataclass(frozen=True)
class LabelsAttached:
    """Labels attached from a file: how many predictions got one, how many rows the file had, and which log."""

    labelled: int
    rows: int
    log: Path | str
    corrected: bool = False  # the labels were audited corrections (driftloop label --correct)

    def to_json(self) -> dict:
        """The `driftloop label --json` object."""
        return {"labelled": self.labelled, "rows": self.rows, "log": str(self.log), "corrected": self.corrected}


def attach_label_file(config: Config, path: Path, correct_reason: str | None = None) -> LabelsAttached:
    """Attach the labels of a file to the prediction log: DataError for a bad file, a missing log, ids the log does
    not have or ids labelled already with another value, naming them (then no label is written). New labels go in
    short transactions of serving.label_import_chunk_rows (resumable, see the module docstring). With
    `correct_reason`, the labels are recorded as corrections of labels already there (the old ones are kept), all
    or nothing."""
    ids, labels = read_label_file(config, path)
    location = log_location(config)
    log_path = Path(location) if not is_postgres(location) else log_name(config)
    if not log_exists(config):
        raise DataError(f"no prediction log at {log_path}: serve predictions (driftloop serve) before labelling them")
    with open_log(config) as log:
        try:
            if correct_reason is None:
                updated = log.attach_labels_in_chunks(ids, labels, chunk_rows=config.serving.label_import_chunk_rows,
                                                      source="cli")
            else:
                updated = log.correct_labels(ids, labels, reason=correct_reason, source="cli")
        except UnknownPredictionIds as error:
            raise DataError(f"{path}: {error} not in the prediction log {log_path}; no label was written") from None
        except (AlreadyLabelled, NotLabelled) as error:
            raise DataError(f"{path}: {error}; no label was written") from None
    return LabelsAttached(updated, len(ids), log_path, corrected=correct_reason is not None)
