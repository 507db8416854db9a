"""The data contract as Great Expectations sees it: which columns, and in which normal form.

GX validates a *view* of the batch, not the raw batch: the contract's columns, categorical values as
text (so a category stored as 7 in one file and "7" or 7.0 in another is the same category), and the
timestamp parsed the way `driftloop.data.event_times` parses it (so "parseable" means "usable by
the time windows"). Numerical columns and the target are passed through untouched: their type is
what GX checks. The other text columns of the batch join the view only to be scanned for values that
look like e-mail addresses or phone numbers (`scan_columns`); their values never reach a report
(data_checks.validate scrubs those results). PII columns never join the view.
"""

from __future__ import annotations

import warnings

import pandas as pd
from pandas.tseries.api import guess_datetime_format

from driftloop.config import Config

# Type names GX's expect_column_values_to_be_in_type_list accepts as "a number": numpy dtypes,
# pandas' nullable dtypes, and Python's int/float for object columns (rows built from JSON). GX
# resolves pandas' nullable dtypes by their class name in the pandas namespace: "Int64Dtype"
# matches a column of dtype "Int64", the string "Int64" matches nothing.
NUMERIC_TYPES = [
    "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "float32", "float64", "bool",
    "Int8Dtype", "Int16Dtype", "Int32Dtype", "Int64Dtype", "UInt8Dtype", "UInt16Dtype", "UInt32Dtype",
    "UInt64Dtype", "Float32Dtype", "Float64Dtype", "BooleanDtype",
    "int", "float",
]  # fmt: skip


# Distinct timestamp strings tried when guessing the column's format; one usually suffices.
FORMAT_PROBES = 20


def contract_columns(config: Config) -> list[str]:
    """Every column the contract names, PII excluded: features, target, then the timestamp."""
    data = config.data
    columns = data.features + [data.target]
    if data.timestamp and data.timestamp not in columns:
        columns.append(data.timestamp)
    return [c for c in columns if c not in data.pii]


def timestamp_column(config: Config) -> str | None:
    """The timestamp column GX checks as a timestamp: none if unset, PII, or also a feature or target."""
    data = config.data
    if not data.timestamp or data.timestamp in data.pii or data.timestamp in data.features + [data.target]:
        return None
    return data.timestamp


def category_text(series: pd.Series) -> pd.Series:
    """Categorical values as text, nulls kept as nulls; whole floats lose their '.0' (7.0 -> '7')."""
    if pd.api.types.is_bool_dtype(series):
        return series.astype("string")
    if pd.api.types.is_numeric_dtype(series):
        values = series.dropna()
        if len(values) and bool((values % 1 == 0).all()):
            return series.astype("Float64").astype("Int64").astype("string")
    return series.astype("string")


def parsed_times(series: pd.Series) -> pd.Series:
    """Timestamps parsed like `driftloop.data.event_times`; what cannot be parsed becomes NaT.

    pandas infers one format from the first value, as event_times does; when that value is garbage
    it would parse every row with dateutil (slow, and it warns on stderr), so the format is guessed
    from the first few distinct values instead.
    """
    if pd.api.types.is_datetime64_any_dtype(series):
        return pd.to_datetime(series, utc=True)
    text = series.dropna()
    text = text[text.map(lambda v: isinstance(v, str))].drop_duplicates().head(FORMAT_PROBES)
    for value in text:
        guess = guess_datetime_format(value)
        if guess:
            return pd.to_datetime(series, utc=True, errors="coerce", format=guess)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Could not infer format": expected here
        return pd.to_datetime(series, utc=True, errors="coerce")


def is_text(series: pd.Series) -> bool:
    """True for a column that may hold free text: strings, objects (also mixed with numbers), categoricals."""
    dtype = series.dtype
    return (pd.api.types.is_string_dtype(dtype) or pd.api.types.is_object_dtype(dtype)
            or isinstance(dtype, pd.CategoricalDtype))


def scan_columns(frame: pd.DataFrame, config: Config) -> list[str]:
    """Text columns of `frame` scanned for PII-looking values: all but data.pii and the parsed timestamp."""
    skip = set(config.data.pii) | {timestamp_column(config)}
    return [c for c in frame.columns if isinstance(c, str) and c not in skip and is_text(frame[c])]


def gx_view(frame: pd.DataFrame, config: Config) -> pd.DataFrame:
    """The columns of `frame` that GX validates, normalised as the module docstring says."""
    data = config.data
    contract = [c for c in contract_columns(config) if c in frame.columns]
    columns = contract + [c for c in scan_columns(frame, config) if c not in contract]
    view = frame.loc[:, columns].copy()
    for column in data.categorical:
        if column in view.columns:
            view[column] = category_text(view[column])
    timestamp = timestamp_column(config)
    if timestamp and timestamp in view.columns:
        view[timestamp] = parsed_times(view[timestamp])
    return view
