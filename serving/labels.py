"""Delayed labels from a file: the rows `driftloop label` attaches to the prediction log."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from driftloop.config import Config
from driftloop.data import read_table
from driftloop.errors import DataError


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
    return [int(i) for i in ids], [float(v) for v in values]
