"""The expectation suite: the config's data contract plus the reference data's own profile."""

from __future__ import annotations

import math
from dataclasses import dataclass

import great_expectations as gx
import great_expectations.expectations as gxe
import pandas as pd

from data_checks.contract import NUMERIC_TYPES, category_text, timestamp_column
from driftloop.config import Config

# Classification targets are the probability of class 1: the model and the metrics read 0/1 only.
CLASS_LABELS = [0, 1]


@dataclass(frozen=True)
class Profile:
    """What the reference data says about the contract's columns."""

    ranges: dict[str, tuple[float, float]]
    domains: dict[str, list[str]]
    rows: int


def profile(config: Config, reference: pd.DataFrame) -> Profile:
    """Ranges of the numerical columns and value sets of the categorical ones.

    A column the reference lacks, or whose values are not numbers, gets no range: its existence and
    type expectations still report it, and profiling must never crash on the data it profiles.
    """
    ranges: dict[str, tuple[float, float]] = {}
    for column in config.data.numerical:
        if column not in reference.columns:
            continue
        values = pd.to_numeric(reference[column], errors="coerce").dropna()
        if values.empty:
            continue
        low, high = float(values.min()), float(values.max())
        if math.isfinite(low) and math.isfinite(high):
            ranges[column] = (low, high)
    domains: dict[str, list[str]] = {}
    for column in config.data.categorical:
        if column in reference.columns:
            known = category_text(reference[column]).dropna().unique()
            if len(known):
                domains[column] = sorted(str(v) for v in known)
    return Profile(ranges=ranges, domains=domains, rows=len(reference))


def widened(low: float, high: float, margin: float) -> tuple[float, float]:
    """[low, high] widened by `margin` times its width on each side (new data may go a bit further)."""
    pad = margin * (high - low)
    return low - pad, high + pad


def build_suite(config: Config, reference: pd.DataFrame) -> gx.ExpectationSuite:
    """Expectations from the config's data contract (config.data) and the reference's profile.

    Categorical columns are compared as text, and the timestamp as parsed datetimes: validate the
    view `data_checks.contract.gx_view` makes of a batch, not the raw batch.
    """
    data, rules = config.data, config.validation
    facts = profile(config, reference)
    # GX's `mostly` is the share of rows that must pass; mostly=1 (its default) is strict.
    null_mostly = 1.0 - rules.max_null_fraction
    expect: list[gxe.Expectation] = []
    expect.append(gxe.ExpectTableRowCountToBeBetween(min_value=rules.min_rows, max_value=None))
    for column in data.numerical:
        expect.append(gxe.ExpectColumnToExist(column=column))
        expect.append(gxe.ExpectColumnValuesToBeInTypeList(column=column, type_list=NUMERIC_TYPES))
        expect.append(gxe.ExpectColumnValuesToNotBeNull(column=column, mostly=null_mostly))
        if column in facts.ranges:
            low, high = widened(*facts.ranges[column], rules.range_margin)
            expect.append(
                gxe.ExpectColumnValuesToBeBetween(column=column, min_value=low, max_value=high, mostly=rules.mostly)
            )
    for column in data.categorical:
        expect.append(gxe.ExpectColumnToExist(column=column))
        expect.append(gxe.ExpectColumnValuesToNotBeNull(column=column, mostly=null_mostly))
        if column in facts.domains:
            expect.append(
                gxe.ExpectColumnValuesToBeInSet(column=column, value_set=facts.domains[column], mostly=rules.mostly)
            )
    # The target is never allowed nulls: a row without a label cannot be trained on or scored.
    expect.append(gxe.ExpectColumnToExist(column=data.target))
    expect.append(gxe.ExpectColumnValuesToNotBeNull(column=data.target))
    if data.task == "classification":
        expect.append(gxe.ExpectColumnValuesToBeInSet(column=data.target, value_set=CLASS_LABELS))
    else:
        expect.append(gxe.ExpectColumnValuesToBeInTypeList(column=data.target, type_list=NUMERIC_TYPES))
    timestamp = timestamp_column(config)
    if timestamp:
        # After gx_view, an unparseable timestamp is NaT: "not null" means present and parseable.
        expect.append(gxe.ExpectColumnToExist(column=timestamp))
        expect.append(gxe.ExpectColumnValuesToNotBeNull(column=timestamp))
    # Passed to the constructor: ExpectationSuite.add_expectation needs an active GX data context.
    return gx.ExpectationSuite(
        name=f"{config.model.name}-contract",
        expectations=expect,
        meta={"reference_rows": facts.rows, "config_digest": config.digest()},
    )
