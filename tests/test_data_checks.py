"""The Great Expectations gate: the suite, the verdict, the report, the quarantine."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from driftloop.config import Config
from driftloop.data_checks import (
    FailedExpectation,
    ValidationReport,
    build_suite,
    list_quarantine,
    quarantine,
    validate_file,
    validate_frame,
)
from driftloop.data_checks.contract import gx_view
from driftloop.errors import DataError
from tests.helpers import make_config


def failures(report: ValidationReport) -> set[tuple[str, str | None]]:
    """(expectation, column) of every failure, for set comparisons."""
    return {(f.expectation, f.column) for f in report.failed}


def with_rows(frame: pd.DataFrame, column: str, share: float, value: object) -> pd.DataFrame:
    """A copy of `frame` with `value` in `column` on the first `share` of rows."""
    changed = frame.copy()
    count = int(round(len(frame) * share))
    if not pd.api.types.is_object_dtype(changed[column]) and not isinstance(value, type(changed[column].iloc[0])):
        changed[column] = changed[column].astype(object)
    changed.loc[: count - 1, column] = value
    return changed


def test_suite_covers_the_contract(config: Config, flights_jan: pd.DataFrame) -> None:
    suite = build_suite(config, flights_jan)
    kinds = {(e.expectation_type, getattr(e, "column", None)) for e in suite.expectations}
    data = config.data
    for column in data.features + [data.target]:
        assert ("expect_column_to_exist", column) in kinds
    for column in data.numerical:
        assert ("expect_column_values_to_be_in_type_list", column) in kinds
        assert ("expect_column_values_to_be_between", column) in kinds
    for column in data.categorical:
        assert ("expect_column_values_to_be_in_set", column) in kinds
    assert ("expect_table_row_count_to_be_between", None) in kinds
    assert ("expect_column_values_to_not_be_null", data.timestamp) in kinds
    assert not any(column in data.pii for _, column in kinds)
    between = next(e for e in suite.expectations
                   if e.expectation_type == "expect_column_values_to_be_between" and e.column == "distance")
    low, high = flights_jan["distance"].min(), flights_jan["distance"].max()
    margin = config.validation.range_margin * (high - low)
    assert between.min_value == pytest.approx(max(low - margin, 0.0))  # a distance never crosses zero
    assert between.max_value == pytest.approx(high + margin)
    assert between.mostly == config.validation.mostly


def test_january_sample_passes_against_itself(config: Config, flights_jan: pd.DataFrame) -> None:
    report = validate_frame(flights_jan, config, name="january")
    assert report.success, report.summary()
    assert report.failed == []
    assert report.rows == len(flights_jan)
    assert report.evaluated >= 40
    assert report.report.is_file() and report.report.suffix == ".html"
    assert report.report.parent == config.state_dir.resolve() / "reports" / "validation"
    assert "passed" in report.summary()
    assert "<table>" in report.report.read_text()
    # GX's own Data Docs page of the same result lies beside ours.
    assert list(report.report.parent.glob("*.gx.html"))


def test_missing_column_fails_naming_it(config: Config, flights_jan: pd.DataFrame) -> None:
    report = validate_frame(flights_jan.drop(columns=["distance"]), config, reference=flights_jan)
    assert not report.success
    assert failures(report) == {("expect_column_to_exist", "distance")}
    assert report.skipped > 0  # the column's other expectations could not run and are not listed
    assert "column distance is missing (expect_column_to_exist)" in report.summary()
    assert "distance is missing" in report.report.read_text()


@pytest.mark.parametrize("with_reference", [True, False])
def test_numerical_column_of_strings_fails_naming_it(
    config: Config, flights_jan: pd.DataFrame, with_reference: bool
) -> None:
    frame = flights_jan.assign(temp=flights_jan["temp"].map(lambda t: f"{t} F"))
    report = validate_frame(frame, config, reference=flights_jan if with_reference else None)
    assert not report.success
    assert ("expect_column_values_to_be_in_type_list", "temp") in failures(report)
    assert {column for _, column in failures(report)} == {"temp"}
    assert "column temp has type" in report.summary()


def test_mixed_object_column_counts_the_strings(config: Config, flights_jan: pd.DataFrame) -> None:
    frame = with_rows(flights_jan, "wind_speed", 0.01, "calm")
    report = validate_frame(frame, config, reference=flights_jan)
    failed = {f.column: f for f in report.failed}
    assert set(failed) == {"wind_speed"}
    assert failed["wind_speed"].unexpected == int(round(len(frame) * 0.01))


def test_out_of_range_values_fail_against_the_reference(config: Config, flights_jan: pd.DataFrame) -> None:
    low, high = flights_jan["distance"].min(), flights_jan["distance"].max()
    width = high - low
    margin = config.validation.range_margin
    share = 0.05  # well beyond 1 - mostly
    inside = with_rows(flights_jan, "distance", share, high + 0.8 * margin * width)
    assert validate_frame(inside, config, reference=flights_jan).success
    outside = with_rows(flights_jan, "distance", share, high + 1.2 * margin * width)
    report = validate_frame(outside, config, reference=flights_jan)
    assert failures(report) == {("expect_column_values_to_be_between", "distance")}
    assert report.failed[0].unexpected == int(round(len(flights_jan) * share))
    # The same batch judged by its own profile passes: the range really came from the reference.
    assert validate_frame(outside, config).success


def test_unknown_categories_beyond_mostly_fail(config: Config, flights_jan: pd.DataFrame) -> None:
    tolerated = 1 - config.validation.mostly
    few = with_rows(flights_jan, "carrier", tolerated / 2, "ZZ")
    assert validate_frame(few, config, reference=flights_jan).success
    many = with_rows(flights_jan, "carrier", tolerated * 3, "ZZ")
    report = validate_frame(many, config, reference=flights_jan)
    assert failures(report) == {("expect_column_values_to_be_in_set", "carrier")}
    assert "'ZZ'" in report.summary()


def test_categories_stored_as_numbers_compare_as_categories(config: Config, flights_jan: pd.DataFrame) -> None:
    codes = {"EWR": 1, "JFK": 2, "LGA": 3}
    reference = flights_jan.assign(origin=flights_jan["origin"].map(codes))  # int64
    as_float = reference.assign(origin=reference["origin"].astype("float64"))
    as_text = reference.assign(origin=reference["origin"].astype(str))
    for frame in (as_float, as_text):
        report = validate_frame(frame, config, reference=reference)
        assert report.success, report.summary()
    unknown = with_rows(as_float, "origin", 0.05, 9.0)
    assert failures(validate_frame(unknown, config, reference=reference)) == {
        ("expect_column_values_to_be_in_set", "origin")
    }


def test_too_few_rows_fail(tmp_path: Path, config: Config, flights_jan: pd.DataFrame) -> None:
    # A spread-out sample: the first hours of January lack weather, which the null limit would catch.
    rows = config.validation.min_rows - 1
    small = flights_jan.iloc[:: len(flights_jan) // rows].head(rows)
    report = validate_frame(small, config, reference=flights_jan)
    assert failures(report) == {("expect_table_row_count_to_be_between", None)}
    assert "validation.min_rows" in report.summary()
    relaxed = make_config(tmp_path / "relaxed", validation={"min_rows": len(small)})
    assert validate_frame(small, relaxed, reference=flights_jan).success


def test_label_outside_zero_one_fails(config: Config, flights_jan: pd.DataFrame) -> None:
    frame = flights_jan.copy()
    frame.loc[[3, 7], "arr_delayed"] = 2
    report = validate_frame(frame, config, reference=flights_jan)
    assert failures(report) == {("expect_column_values_to_be_in_set", "arr_delayed")}
    assert report.failed[0].unexpected == 2


def test_null_limit_comes_from_config(config: Config, flights_jan: pd.DataFrame) -> None:
    limit = config.validation.max_null_fraction
    assert validate_frame(with_rows(flights_jan, "humid", limit / 2, np.nan), config).success
    report = validate_frame(with_rows(flights_jan, "humid", limit * 2, np.nan), config, reference=flights_jan)
    assert failures(report) == {("expect_column_values_to_not_be_null", "humid")}


def test_unparseable_timestamps_fail(config: Config, flights_jan: pd.DataFrame) -> None:
    frame = flights_jan.assign(time_hour=flights_jan["time_hour"].astype(str))
    assert validate_frame(frame, config, reference=flights_jan).success  # text timestamps are fine
    broken = with_rows(frame, "time_hour", 0.01, "not a time")
    report = validate_frame(broken, config, reference=flights_jan)
    assert failures(report) == {("expect_column_values_to_not_be_null", "time_hour")}
    assert "unparseable" in report.summary()


def test_validate_file_reads_csv_and_parquet(tmp_path: Path, config: Config, flights_jan: pd.DataFrame) -> None:
    csv, parquet = tmp_path / "jan.csv", tmp_path / "jan.parquet"
    flights_jan.to_csv(csv, index=False)
    flights_jan.to_parquet(parquet, index=False)
    assert validate_file(csv, config).success
    report = validate_file(parquet, config, reference_path=csv)
    assert report.success, report.summary()
    assert "-jan-" in report.report.name


@pytest.mark.parametrize(("name", "content"), [("empty.csv", b""), ("data.txt", b"a,b\n1,2\n"),
                                               ("broken.parquet", b"not parquet at all")])
def test_validate_file_rejects_unusable_files(tmp_path: Path, config: Config, name: str, content: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=name):
        validate_file(path, config)


def test_reference_without_the_contract_columns_is_unusable(
    tmp_path: Path, config: Config, flights_jan: pd.DataFrame
) -> None:
    data, reference = tmp_path / "jan.csv", tmp_path / "ref.csv"
    flights_jan.to_csv(data, index=False)
    flights_jan.drop(columns=["carrier"]).to_csv(reference, index=False)
    with pytest.raises(DataError, match=r"ref\.csv.*carrier"):
        validate_file(data, config, reference_path=reference)


def test_to_json_has_exactly_the_contract_keys(config: Config, flights_jan: pd.DataFrame) -> None:
    report = validate_frame(flights_jan.drop(columns=["origin"]), config, reference=flights_jan)
    payload = report.to_json()
    assert set(payload) == {"success", "rows", "failed", "report"}
    assert payload["success"] is False and payload["rows"] == len(flights_jan)
    assert isinstance(payload["report"], str) and Path(payload["report"]).is_file()
    assert payload["failed"] == [{"expectation": "expect_column_to_exist", "column": "origin", "unexpected": 0}]
    assert json.loads(json.dumps(payload)) == payload
    assert FailedExpectation("e", None, 0) == FailedExpectation("e", None, 0, "a reason")


def test_quarantine_keeps_the_batch_and_lists_it(config: Config, flights_jan: pd.DataFrame) -> None:
    batch = with_rows(flights_jan, "carrier", 0.1, "ZZ")
    report = validate_frame(batch, config, reference=flights_jan, name="week 3")
    assert list_quarantine(config) == []
    folder = quarantine(batch, report, config, "week 3")
    assert folder.parent == config.state_dir.resolve() / "quarantine"
    kept = pd.read_parquet(folder / "data.parquet")
    pd.testing.assert_frame_equal(kept, batch, check_dtype=False)
    record = json.loads((folder / "report.json").read_text())
    assert {"success", "rows", "failed", "report", "reasons"} <= set(record)
    assert Path(record["report"]).is_file() and Path(record["report"]).parent == folder
    [entry] = list_quarantine(config)
    assert entry["name"] == "week 3" and entry["rows"] == len(batch) and entry["path"] == str(folder)
    assert any("carrier" in reason for reason in entry["reasons"])
    assert entry["time"]


def test_quarantine_keeps_a_batch_parquet_cannot_hold(config: Config, flights_jan: pd.DataFrame) -> None:
    batch = with_rows(flights_jan, "temp", 0.02, "hot")  # numbers and text in one column
    report = validate_frame(batch, config, reference=flights_jan)
    folder = quarantine(batch, report, config, "mixed")
    assert len(pd.read_csv(folder / "data.csv")) == len(batch)
    assert list_quarantine(config)[0]["reasons"]


def test_gx_never_sees_a_pii_column(config: Config, flights_jan: pd.DataFrame) -> None:
    view = gx_view(flights_jan.assign(extra=1), config)
    assert "tailnum" in flights_jan.columns and "tailnum" not in view.columns
    assert "extra" not in view.columns
    assert set(view.columns) == set(config.data.features) | {config.data.target, config.data.timestamp}


def test_pii_never_reaches_a_report(config: Config, flights_jan: pd.DataFrame) -> None:
    # Break the batch everywhere a value could be quoted, then look for any tail number in the output.
    batch = with_rows(flights_jan, "carrier", 0.1, "ZZ")
    batch = with_rows(batch, "temp", 0.02, "hot")
    batch.loc[:10, "arr_delayed"] = 5
    report = validate_frame(batch, config, reference=flights_jan, name="pii")
    folder = quarantine(batch, report, config, "pii")
    texts = [report.report.read_text(), json.dumps(report.to_json()), report.summary()]
    texts += [p.read_text() for p in folder.iterdir() if p.suffix in (".json", ".html")]
    texts += [p.read_text() for p in report.report.parent.glob("*.html")]
    tails = set(batch["tailnum"].dropna())
    for text in texts:
        assert "tailnum" not in text
        assert not any(tail in text for tail in tails)


def test_nullable_and_narrow_number_dtypes_are_numbers(config: Config, flights_jan: pd.DataFrame) -> None:
    frame = flights_jan.assign(dep_hour=flights_jan["dep_hour"].astype("Int64"),
                               temp=flights_jan["temp"].astype("Float64"),
                               distance=flights_jan["distance"].astype("float32"))
    report = validate_frame(frame, config, reference=flights_jan)
    assert report.success, report.summary()


def test_regression_target_must_be_numbers_without_nulls(tmp_path: Path, flights_jan: pd.DataFrame) -> None:
    regression = make_config(tmp_path / "state", data={
        "task": "regression", "target": "temp", "numerical": ["dep_hour", "distance", "wind_speed"]})
    frame = flights_jan.dropna(subset=["temp"]).reset_index(drop=True)
    assert validate_frame(frame, regression).success
    with_null = with_rows(frame, "temp", 0.001, np.nan)
    assert failures(validate_frame(with_null, regression, reference=frame)) == {
        ("expect_column_values_to_not_be_null", "temp")
    }
    as_text = frame.assign(temp=frame["temp"].map(str))
    assert failures(validate_frame(as_text, regression, reference=frame)) == {
        ("expect_column_values_to_be_in_type_list", "temp")
    }
