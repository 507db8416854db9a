"""The expectation suite: the config's data contract plus a reference's profile, and the PII scan.

The contract suite comes from `build_suite` at validation time (profile: the reference, or the batch itself), or
from a suite file the user owns (data_checks/saved_suite.py, written by `driftloop checks init` with the same
`build_suite`). The PII scan is added to either at validation time, for whatever text columns the batch has.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import great_expectations as gx
import great_expectations.expectations as gxe
import pandas as pd

from driftloop.config import Config
from driftloop.data_checks.contract import NUMERIC_TYPES, category_text, timestamp_column
from driftloop.errors import DataError
from driftloop.pii import PII_PATTERNS, pii_kind

# Classification targets are the probability of class 1: the model and the metrics read 0/1 only.
CLASS_LABELS = [0, 1]
# Marks the PII-scan expectations (in their meta): their results are scrubbed of values and read as PII findings.
PII_SCAN = "pii-scan"


@dataclass(frozen=True)
class Profile:
    """What the reference data says about the contract's columns."""

    ranges: dict[str, tuple[float, float]]
    domains: dict[str, list[str]]
    rows: int
    null_shares: dict[str, float]


def profile(config: Config, reference: pd.DataFrame) -> Profile:
    """Ranges of the numerical columns, value sets of the categorical ones and every column's share of nulls.

    A column the reference lacks, or whose values are not numbers, gets no range: its existence and
    type expectations still report it, and profiling must never crash on the data it profiles. A category
    that looks like an e-mail address or phone number is left out of its domain: a suite (which may be
    committed) never holds personal data, and the batch's PII scan reports such values anyway. An id-like
    column (new values expected at a rate a domain would refuse, see `expects_new_values`) gets no domain.
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
            values = category_text(reference[column]).dropna()
            if expects_new_values(values, config.validation.mostly):
                continue
            safe = sorted(str(v) for v in values.unique() if pii_kind(str(v)) is None)
            if safe:
                domains[column] = safe
    columns = [c for c in config.data.numerical + config.data.categorical if c in reference.columns]
    null_shares = {c: float(reference[c].isna().mean()) for c in columns} if len(reference) else {}
    return Profile(ranges=ranges, domains=domains, rows=len(reference), null_shares=null_shares)


def expects_new_values(values: pd.Series, mostly: float) -> bool:
    """Whether new data will bring values the reference lacks more often than a domain tolerates: the Good-Turing
    estimate of the chance that the next value is unseen (the share of values seen exactly once) above half of
    1 - `mostly`. Tail numbers of aircraft (3,057 values in 15,000 flights, 4.4% seen once) are such an id; a
    carrier or an airport (0.01%) is not."""
    if values.empty:
        return False
    counts = values.value_counts()
    return float((counts == 1).sum()) / len(values) > (1.0 - mostly) / 2


def null_mostly(config: Config, facts: Profile, column: str) -> float:
    """GX's `mostly` for a column's not-null expectation: validation.max_null_fraction beyond the reference's own
    share of nulls (a column the reference leaves blank a quarter of the time may be blank as often later)."""
    allowed = facts.null_shares.get(column, 0.0) + config.validation.max_null_fraction
    # Four decimals, rounded down (the looser side): 0.9489, not 0.9489589893200016, in a suite a person reads.
    return max(0.0, math.floor((1.0 - allowed) * 10_000) / 10_000)


def widened(low: float, high: float, margin: float) -> tuple[float | None, float | None]:
    """[low, high] widened by `margin` times its width on each side (new data may go a bit further).

    A bound beyond the largest float (data near 1e308) is left open (None) rather than infinite: JSON, and so a
    saved suite, cannot hold infinity.
    """
    pad = margin * (high - low)
    wide_low, wide_high = low - pad, high + pad
    # The margin allows new data to go a bit further, never into values the reference shows impossible: a column
    # never negative (an age, a count) stays >= 0, never positive stays <= 0, a share inside [0, 1] stays there.
    if low >= 0:
        wide_low = max(wide_low, 0.0)
    if high <= 0:
        wide_high = min(wide_high, 0.0)
    if 0 <= low and high <= 1:  # a share or a 0/1 flag
        wide_high = min(wide_high, 1.0)
    bounds = (wide_low, wide_high)
    # Ten significant digits: -42.52, not -42.52000000000001, in a suite a person reads and edits.
    return tuple(float(f"{b:.10g}") if math.isfinite(b) else None for b in bounds)  # type: ignore[return-value]


def row_bounds(config: Config, rows: int) -> tuple[int, int | None]:
    """Row count bounds: validation.min_rows, and validation.max_rows_factor times the profiled rows."""
    factor = config.validation.max_rows_factor
    return config.validation.min_rows, (None if factor is None else max(math.ceil(factor * rows), 1))


def contract_expectations(config: Config, facts: Profile) -> list[gxe.Expectation]:
    """Expectations from the config's data contract (config.data) and a profile.

    Categorical columns are compared as text, and the timestamp as parsed datetimes: they validate the
    view `data_checks.contract.gx_view` makes of a batch, not the raw batch.
    """
    data, rules = config.data, config.validation
    # GX's `mostly` is the share of rows that must pass; mostly=1 (its default) is strict.
    low_rows, high_rows = row_bounds(config, facts.rows)
    expect: list[gxe.Expectation] = [gxe.ExpectTableRowCountToBeBetween(min_value=low_rows, max_value=high_rows)]
    for column in data.numerical:
        expect.append(gxe.ExpectColumnToExist(column=column))
        expect.append(gxe.ExpectColumnValuesToBeInTypeList(column=column, type_list=NUMERIC_TYPES))
        expect.append(gxe.ExpectColumnValuesToNotBeNull(column=column, mostly=null_mostly(config, facts, column)))
        low, high = widened(*facts.ranges[column], rules.range_margin) if column in facts.ranges else (None, None)
        if low is not None or high is not None:
            expect.append(
                gxe.ExpectColumnValuesToBeBetween(column=column, min_value=low, max_value=high, mostly=rules.mostly)
            )
    for column in data.categorical:
        expect.append(gxe.ExpectColumnToExist(column=column))
        expect.append(gxe.ExpectColumnValuesToNotBeNull(column=column, mostly=null_mostly(config, facts, column)))
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
    return expect


def build_suite(config: Config, reference: pd.DataFrame, meta: dict | None = None,
                own_profile: bool = False) -> gx.ExpectationSuite:
    """The contract suite with the reference's profile; `meta` is added to the suite's own. `own_profile`: the
    reference is the batch itself, whose nulls are no baseline (validation.max_null_fraction holds alone)."""
    facts = profile(config, reference)
    if own_profile:
        facts = replace(facts, null_shares={})
    # Passed to the constructor: ExpectationSuite.add_expectation needs an active GX data context.
    return gx.ExpectationSuite(
        name=f"{config.model.name}-contract",
        expectations=contract_expectations(config, facts),
        meta={"reference_rows": facts.rows, "config_digest": config.digest(), **(meta or {})},
    )


def pii_scan_expectations(config: Config, columns: list[str]) -> list[gxe.Expectation]:
    """One expectation per text column and PII kind: values must not look like e-mail addresses or phones."""
    return [
        gxe.ExpectColumnValuesToNotMatchRegex(column=column, regex=pattern, mostly=config.validation.pii_scan_mostly,
                                              meta={"driftloop": PII_SCAN, "kind": kind})
        for column in columns
        for kind, pattern in PII_PATTERNS.items()
    ]


def pii_scan_kind(meta: dict | None) -> str | None:
    """The PII kind an expectation scans for, from its meta; None for every other expectation."""
    if meta and meta.get("driftloop") == PII_SCAN:
        return str(meta.get("kind", "personal data"))
    return None


def with_expectations(suite: gx.ExpectationSuite, extra: list[gxe.Expectation]) -> gx.ExpectationSuite:
    """A new suite: `suite`'s expectations, then `extra` (the original is left as it was read)."""
    configurations = [e.configuration for e in suite.expectations] + [e.configuration for e in extra]
    return gx.ExpectationSuite(name=suite.name, expectations=configurations, meta=dict(suite.meta))


def check_reference(reference: pd.DataFrame, config: Config, source: str) -> None:
    """A reference must hold every feature column, with numbers where numbers are expected.

    A broken reference is unusable input (DataError), not a failed batch: the profile that judges
    the batch would silently lose its ranges and category sets.
    """
    missing = [c for c in config.data.features if c not in reference.columns]
    if missing:
        raise DataError(f"{source}: missing column(s) {', '.join(missing)}; the reference must hold every "
                        "feature column of the config's data section")
    for column in config.data.numerical:
        if not pd.api.types.is_numeric_dtype(reference[column]):
            raise DataError(f"{source}: column {column} is not numeric (dtype {reference[column].dtype}); "
                            "it is listed under data.numerical")
