"""Run the suite with Great Expectations and turn its result into a verdict a person can act on."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import great_expectations as gx
import pandas as pd
from great_expectations.core import ExpectationSuiteValidationResult
from great_expectations.core.expectation_validation_result import ExpectationValidationResult
from great_expectations.data_context.types.base import ProgressBarsConfig

from driftloop.config import Config
from driftloop.data import fingerprint, read_table
from driftloop.data_checks.contract import contract_columns, gx_view, scan_columns, timestamp_column
from driftloop.data_checks.report_html import Check, write_report
from driftloop.data_checks.saved_suite import saved_suite
from driftloop.data_checks.suite import (
    build_suite,
    check_reference,
    pii_scan_expectations,
    pii_scan_kind,
    with_expectations,
)
from driftloop.errors import ConfigError, DataError
from driftloop.pii import redact
from driftloop.state import reports_dir

# Failures of these expectations explain every other failure on the same column: a missing
# column, or one of the wrong type, makes GX unable to evaluate the column's other expectations.
ROOT_EXPECTATIONS = ("expect_column_to_exist", "expect_column_values_to_be_in_type_list")
# How many offending values a reason quotes, and how much of each; more makes the line unreadable.
EXAMPLES_QUOTED = 3
EXAMPLE_MAX_CHARS = 40
# Where GX's results hold the data's own values: PII-scan results lose them all (see `scrub`).
VALUE_KEYS = ("partial_unexpected_list", "partial_unexpected_counts", "partial_unexpected_index_list",
              "unexpected_list", "unexpected_index_list", "unexpected_index_query")
STAMP_FORMAT = "%Y%m%dT%H%M%SZ"


@dataclass(frozen=True)
class FailedExpectation:
    """One expectation GX found unmet: which, on which column, and how many rows broke it."""

    expectation: str
    column: str | None
    unexpected: int
    reason: str = field(default="", compare=False)  # one readable line; not part of the JSON contract


@dataclass(frozen=True)
class ValidationReport:
    """The verdict of one validation and where its HTML report lies."""

    success: bool
    rows: int
    failed: list[FailedExpectation]
    report: Path
    evaluated: int = 0  # expectations GX evaluated
    skipped: int = 0  # failures left out of `failed` because their column is missing or mistyped

    def to_json(self) -> dict:
        """The `driftloop validate --json` object: exactly success, rows, failed, report."""
        return {
            "success": self.success,
            "rows": self.rows,
            "failed": [{"expectation": f.expectation, "column": f.column, "unexpected": f.unexpected}
                       for f in self.failed],
            "report": str(self.report),
        }

    def reasons(self) -> list[str]:
        """One line per failed expectation, naming the column and the expectation."""
        return [f"{f.reason or f.expectation} ({f.expectation})" for f in self.failed]

    def summary(self) -> str:
        """One readable line: what failed and why, or that everything passed."""
        if self.success:
            return f"all {self.evaluated} expectations passed on {self.rows} rows"
        line = f"{len(self.failed)} of {self.evaluated} expectations failed: " + "; ".join(self.reasons())
        if self.skipped:
            line += f" ({self.skipped} more could not run on those columns)"
        return line


def validate_frame(
    frame: pd.DataFrame, config: Config, reference: pd.DataFrame | None = None, name: str = "batch"
) -> ValidationReport:
    """Validate `frame` against the contract; ranges and categories come from `reference` when given.

    Without a reference the profile is the frame's own (first training on a dataset): the
    contract's columns, types, nulls and row count still gate it. With validation.suite set, the saved
    suite is the contract and the profile, and `reference` is not used (a retraining passes the champion's
    data: the suite the team owns, not the last model's data, says what is acceptable). Every text
    column but data.pii is also scanned for values that look like e-mail addresses or phone numbers.
    """
    require_contract_columns(frame, config, name)
    suite = with_expectations(contract_suite(config, frame, reference),
                              pii_scan_expectations(config, scan_columns(frame, config)))
    result = scrub(run_suite(gx_view(frame, config), suite))
    checks = skip_consequences(interpret(result, suite, config))
    failed = [FailedExpectation(c.expectation, c.column, c.unexpected, c.reason)
              for c in checks if not c.success and not c.skipped]
    evaluated = int(result.statistics.get("evaluated_expectations", len(checks)))
    skipped = sum(1 for c in checks if c.skipped)
    report = ValidationReport(
        success=bool(result.success), rows=len(frame), failed=failed,
        report=report_path(config, frame, name), evaluated=evaluated, skipped=skipped,
    )  # fmt: skip
    write_report(report.report, name=name, summary=report.summary(), checks=checks, result=result)
    return report


def validate_file(path: Path, config: Config, reference_path: Path | None = None) -> ValidationReport:
    """Validate a CSV or Parquet file; unreadable files raise DataError naming the file.

    A reference file is refused while validation.suite is set: it would be silently ignored.
    """
    path = Path(path)
    if reference_path is not None and config.validation.suite is not None:
        raise ConfigError(f"{reference_path}: a reference has no effect while validation.suite "
                          f"({config.validation.suite}) is set, which holds the ranges and categories; drop the "
                          "reference, or set validation.suite to null")
    frame = read_table(path)
    require_contract_columns(frame, config, str(path))
    reference = None
    if reference_path is not None:
        reference = read_table(reference_path)
        check_reference(reference, config, str(reference_path))
    return validate_frame(frame, config, reference, name=path.stem)


def contract_suite(config: Config, frame: pd.DataFrame, reference: pd.DataFrame | None) -> gx.ExpectationSuite:
    """The saved suite (validation.suite), else one built from the reference's profile, else the frame's own."""
    saved = saved_suite(config)
    if saved is not None:
        return saved
    if reference is not None:
        check_reference(reference, config, "reference")
    if reference is None:
        return build_suite(config, frame, own_profile=True)
    return build_suite(config, reference)


def check_usable(frame: pd.DataFrame, config: Config, source: str) -> None:
    """Raise what makes a batch unusable rather than failed (a broken saved suite, none of the contract's columns).

    Callers that run validation inside a Prefect flow call this first: raised inside a flow, the same one-line
    error would reach the console with Prefect's traceback.
    """
    saved_suite(config)
    require_contract_columns(frame, config, source)


def require_contract_columns(frame: pd.DataFrame, config: Config, source: str) -> None:
    """A batch holding none of the contract's columns is the wrong file (unusable input), not a failed batch."""
    contract = contract_columns(config)
    if not any(c in frame.columns for c in contract):
        shown = ", ".join(contract[:EXAMPLES_QUOTED]) + (", ..." if len(contract) > EXAMPLES_QUOTED else "")
        raise DataError(f"{source}: holds none of the data contract's columns ({shown}); is it the right file?")


def run_suite(view: pd.DataFrame, suite: gx.ExpectationSuite) -> ExpectationSuiteValidationResult:
    """Validate a frame with GX in a throwaway ephemeral context (a few ms to set up)."""
    # GX announces every temporary docs folder at INFO, from a module logger it sets to INFO itself.
    logging.getLogger("great_expectations.data_context.types.base").setLevel(logging.WARNING)
    context = gx.get_context(mode="ephemeral")
    # GX draws tqdm bars on stderr for every validation; the CLI's stderr is for errors only.
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    asset = context.data_sources.add_pandas("driftloop").add_dataframe_asset("batch")
    batch = asset.add_batch_definition_whole_dataframe("whole").get_batch(batch_parameters={"dataframe": view})
    return batch.validate(suite, result_format={"result_format": "SUMMARY"})


def scrub(result: ExpectationSuiteValidationResult) -> ExpectationSuiteValidationResult:
    """Keep personal data out of every report made from `result` (ours, GX's page, report.json).

    PII-scan results lose every value and row index GX quoted (they are, by construction, the personal data);
    other results keep their examples, with any that looks like an e-mail address or phone number redacted.
    """
    for item in result.results:
        details = item.result
        if not details:
            continue
        if pii_scan_kind(item.expectation_config.meta):
            for key in VALUE_KEYS:
                details.pop(key, None)
        else:
            for key, value in details.items():
                details[key] = _redacted(value)
    return result


def _redacted(value: Any) -> Any:
    """`value` with every string in it that looks like PII replaced (lists and dicts walked), and pandas' missing
    markers as None: GX's Data Docs renderer tests its examples for truth, and `bool(pd.NA)` raises (it printed a
    traceback for every all-null nullable integer column)."""
    if isinstance(value, list):
        return [_redacted(v) for v in value]
    if isinstance(value, dict):
        return {k: _redacted(v) for k, v in value.items()}
    if value is pd.NA or value is pd.NaT:
        return None
    return redact(value)


def interpret(result: ExpectationSuiteValidationResult, suite: gx.ExpectationSuite, config: Config) -> list[Check]:
    """One Check per GX result, in the suite's order (GX returns them grouped by its own plan)."""
    order = {_key(e.configuration.type, e.configuration.kwargs): i for i, e in enumerate(suite.expectations)}
    checks = [_check(r, config) for r in result.results]
    keyed = zip(checks, result.results, strict=True)
    ranked = sorted(keyed, key=lambda pair: order.get(_key(pair[1].expectation_config.type,
                                                          pair[1].expectation_config.kwargs), len(order)))
    return [check for check, _ in ranked]


def skip_consequences(checks: list[Check]) -> list[Check]:
    """Mark failures GX could not evaluate because their column is missing or mistyped as skipped.

    They add nothing to the root failure, which already names the column, and would bury it.
    """
    roots = {c.column for c in checks if not c.success and not c.errored and c.expectation in ROOT_EXPECTATIONS}
    return [
        replace(c, skipped=True, reason=f"not evaluated: column {c.column} is missing or not numeric")
        if not c.success and c.errored and c.column in roots
        else c
        for c in checks
    ]


def _key(kind: str, kwargs: dict) -> str:
    """Identity of an expectation independent of the batch it ran on."""
    return kind + json.dumps({k: v for k, v in kwargs.items() if k != "batch_id"}, sort_keys=True, default=str)


def _check(result: ExpectationValidationResult, config: Config) -> Check:
    """Flatten one GX result into what the report and the verdict need."""
    kind = result.expectation_config.type
    kwargs = result.expectation_config.kwargs
    column = kwargs.get("column")
    details: dict[str, Any] = result.result or {}
    error = _error_message(result.exception_info)
    unexpected = int(details.get("unexpected_count") or 0)
    scanned = pii_scan_kind(result.expectation_config.meta)
    if error is not None and not result.success:
        reason = f"column {column}: GX could not evaluate it ({error})" if column else f"GX error: {error}"
    elif result.success:
        reason = ""
    elif scanned:
        reason = (f"column {column} holds {unexpected} values that look like {scanned}; declare it under data.pii "
                  "or drop it")
    else:
        reason = _reason(kind, column, kwargs, details, config)
    expected = f"no {scanned} ({_allowed(kwargs)})" if scanned else _expected(kind, kwargs)
    return Check(
        expectation=kind, column=column, success=bool(result.success), unexpected=unexpected,
        observed=_observed(details), errored=error is not None, reason=reason, expected=expected,
    )  # fmt: skip


def _error_message(info: Any) -> str | None:
    """The first exception message in GX's exception_info (flat, or keyed by metric), if any."""
    if not info:
        return None
    entries = [info] if "raised_exception" in info else list(info.values())
    for entry in entries:
        if isinstance(entry, dict) and entry.get("raised_exception"):
            message = str(entry.get("exception_message") or "unknown error").strip()
            return message.splitlines()[0] if message else "unknown error"
    return None


def _examples(details: dict) -> str:
    """A few offending values, quoted (the view holds no PII column, so these are safe to show)."""
    counts = details.get("partial_unexpected_counts") or []
    values = [c["value"] for c in counts] or details.get("partial_unexpected_list") or []
    distinct = list(dict.fromkeys(_shortened(repr(v)) for v in values))  # unhashable values come without counts
    return ", ".join(distinct[:EXAMPLES_QUOTED])


def _shortened(text: str) -> str:
    """At most EXAMPLE_MAX_CHARS characters of a quoted value (a 1 MB string must not become the reason)."""
    return text if len(text) <= EXAMPLE_MAX_CHARS else text[: EXAMPLE_MAX_CHARS - 1] + "…"


def _setting(config: Config, keys: str) -> str:
    """Where a threshold is set: the config keys, or the saved suite that holds it."""
    suite = config.validation.suite
    return f"set in the suite {Path(suite).name}" if suite is not None else keys


def _bound(value: Any) -> str:
    """A range bound for a reason; an open one (None) is shown as such."""
    return "open" if value is None else f"{value:.6g}" if isinstance(value, int | float) else str(value)


def _share(details: dict) -> str:
    """Percent of rows that broke an expectation."""
    percent = details.get("unexpected_percent")
    return f"{percent:.2f}%" if isinstance(percent, int | float) else "?"


def _allowed(kwargs: dict) -> str:
    """The share of rows an expectation tolerates, from its `mostly`."""
    mostly = kwargs.get("mostly", 1)
    return "none allowed" if mostly >= 1 else f"at most {100 * (1 - mostly):.2f}% allowed"


def _reason(kind: str, column: str | None, kwargs: dict, details: dict, config: Config) -> str:
    """One readable line on why an expectation failed, naming the column and the setting involved."""
    count = int(details.get("unexpected_count") or 0)
    examples = _examples(details)
    like = f", e.g. {examples}" if examples else ""
    if kind == "expect_column_to_exist":
        return f"column {column} is missing"
    if kind == "expect_column_values_to_be_in_type_list":
        if "observed_value" in details:
            return f"column {column} has type {details['observed_value']}, expected a number"
        return f"column {column} has {count} values that are not numbers{like}"
    if kind == "expect_table_row_count_to_be_between":
        low, high = kwargs.get("min_value"), kwargs.get("max_value")
        span = (f"at least {low}" if high is None else f"at most {high}" if low is None
                else f"between {low} and {high}")
        return (f"the batch has {details.get('observed_value')} rows, {span} expected "
                f"({_setting(config, 'validation.min_rows, validation.max_rows_factor')})")
    if kind == "expect_column_values_to_not_be_null":
        if column == timestamp_column(config):
            return f"column {column} has {count} missing or unparseable timestamps"
        setting = "" if column == config.data.target else f" ({_setting(config, 'validation.max_null_fraction')})"
        return f"column {column} has {count} nulls ({_share(details)}, {_allowed(kwargs)}){setting}"
    if kind == "expect_column_values_to_be_between":
        low, high = _bound(kwargs.get("min_value")), _bound(kwargs.get("max_value"))
        return (f"column {column} has {count} values outside [{low}, {high}] ({_share(details)}, "
                f"{_allowed(kwargs)}){like} ({_setting(config, 'validation.range_margin, validation.mostly')})")
    if kind == "expect_column_values_to_be_in_set":
        if column == config.data.target:
            return f"column {column} has {count} labels outside {{0, 1}}{like}"
        known = "the suite's" if config.validation.suite is not None else "the reference's"
        return (f"column {column} has {count} values outside {known} categories ({_share(details)}, "
                f"{_allowed(kwargs)}){like} ({_setting(config, 'validation.mostly')})")
    return f"column {column} failed {kind}" if column else f"the batch failed {kind}"


def _observed(details: dict) -> str:
    """What GX saw, in a few words, for the HTML report."""
    if "observed_value" in details:
        return str(details["observed_value"])
    if "unexpected_count" in details:
        examples = _examples(details)
        text = f"{details['unexpected_count']} unexpected ({_share(details)})"
        return f"{text}: {examples}" if examples and details["unexpected_count"] else text
    return ""


def _expected(kind: str, kwargs: dict) -> str:
    """The expectation's parameters, in a few words, for the HTML report."""
    shown = {k: v for k, v in kwargs.items() if k not in ("batch_id", "column")}
    if "value_set" in shown and len(shown["value_set"]) > EXAMPLES_QUOTED * 4:
        shown["value_set"] = f"{len(shown['value_set'])} known values"
    if "type_list" in shown:
        shown["type_list"] = "numeric dtypes"
    return ", ".join(f"{k}={v}" for k, v in shown.items())


def report_path(config: Config, frame: pd.DataFrame, name: str) -> Path:
    """reports/validation/<UTC time>-<name>-<fingerprint>.html under the state dir."""
    return reports_dir(config, "validation") / f"{batch_label(frame, name)}.html"


def batch_label(frame: pd.DataFrame, name: str, when: datetime | None = None) -> str:
    """<UTC time>-<name>-<fingerprint>: sortable by time, and the same batch is recognisable."""
    stamp = (when or datetime.now(UTC)).strftime(STAMP_FORMAT)
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "batch"
    return f"{stamp}-{safe}-{batch_fingerprint(frame)}"


def batch_fingerprint(frame: pd.DataFrame) -> str:
    """`driftloop.data.fingerprint`, also for cells pandas cannot hash (lists from Parquet or JSON)."""
    try:
        return fingerprint(frame)
    except TypeError:
        return fingerprint(frame.astype(str))
