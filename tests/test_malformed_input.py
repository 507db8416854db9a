"""Malformed input through the real CLI: one clear line and a non-zero exit, never a traceback.

Exit 2: the file cannot be used (empty, not CSV or Parquet, not UTF-8, ragged, a repeated column name, none of the
contract's columns). Exit 1: a readable batch whose values fail expectations (huge or infinite numbers, text in a
numerical column, unknown or very long categories, PII-looking text). A UTF-8 byte-order mark is fine (exit 0).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from driftloop.cli import main
from driftloop.config import demo_config_path
from tests.helpers import demo_suite_path, run_cli

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10\x00\x00\x00\x10\x08\x06\x00\x00\x00" + bytes(range(256))
LONG = "Q" * 100_000


@pytest.fixture(scope="module")
def good(flights_jan: pd.DataFrame) -> pd.DataFrame:
    """400 real January flights: they pass the demo's saved suite."""
    return flights_jan.head(400).copy()


@pytest.fixture
def demo_config(tmp_path: Path) -> Path:
    """The shipped demo config (with its saved suite) and a private state dir."""
    raw = yaml.safe_load(demo_config_path().read_text())
    raw["state_dir"] = str(tmp_path / "state")
    raw["validation"]["suite"] = str(demo_suite_path())
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def with_values(frame: pd.DataFrame, column: str, value: object, rows: int = 40) -> pd.DataFrame:
    """`frame` with `value` in `column` on its first `rows` rows (the column becomes object when needed)."""
    changed = frame.copy()
    changed[column] = changed[column].astype(object)
    changed.loc[: rows - 1, column] = value
    return changed


def csv_bytes(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(index=False).encode("utf-8")


def duplicate_parquet(frame: pd.DataFrame, path: Path) -> None:
    table = pa.Table.from_pandas(frame[["carrier", "origin"]], preserve_index=False)
    pq.write_table(table.rename_columns(["carrier", "carrier"]), path)


# name -> (file name, writer(frame, path), exit code, fragment the one stderr line must hold)
Writer = Callable[[pd.DataFrame, Path], None]
CASES: dict[str, tuple[str, Writer, int, str]] = {
    "zero bytes": ("empty.csv", lambda f, p: p.write_bytes(b""), 2, "file is empty"),
    "header only": ("header.csv", lambda f, p: p.write_bytes(csv_bytes(f.head(0))), 2, "no rows"),
    "png as csv": ("image.csv", lambda f, p: p.write_bytes(PNG), 2, "PNG image"),
    "png as parquet": ("image.parquet", lambda f, p: p.write_bytes(PNG), 2, "PNG image"),
    "random bytes as csv": ("noise.csv", lambda f, p: p.write_bytes(random.Random(0).randbytes(4096)), 2,
                            "binary data"),
    "random bytes as parquet": ("noise.parquet", lambda f, p: p.write_bytes(random.Random(0).randbytes(4096)), 2,
                                "not a Parquet file"),
    "csv text as parquet": ("text.parquet", lambda f, p: p.write_bytes(csv_bytes(f)), 2, "name it .csv"),
    "parquet as csv": ("table.csv", lambda f, p: f.to_parquet(p), 2, "name it .parquet"),
    "a directory": ("folder.csv", lambda f, p: p.mkdir(), 2, "is a directory"),
    "utf-16": ("utf16.csv", lambda f, p: p.write_bytes(f.to_csv(index=False).encode("utf-16")), 2, "UTF-16"),
    "latin-1 with accents": ("latin1.csv", lambda f, p: p.write_bytes(
        with_values(f, "dest", "Bogotá", rows=3).to_csv(index=False).encode("latin-1")), 2, "not UTF-8"),
    "ragged rows": ("ragged.csv", lambda f, p: p.write_bytes(csv_bytes(f) + b"1,2,3,4,5,6,7,8,9,10,11,12,13,14,15\n"),
                    2, "not a valid CSV"),
    "duplicate csv header": ("dupes.csv", lambda f, p: p.write_bytes(
        csv_bytes(f).replace(b"origin", b"carrier", 1)), 2, "column carrier appears more than once"),
    "duplicate parquet columns": ("dupes.parquet", duplicate_parquet, 2, "column carrier appears more than once"),
    "none of the contract's columns": ("other.csv", lambda f, p: p.write_bytes(b"a,b\n1,2\n3,4\n"), 2,
                                       "none of the data contract's columns"),
    "1e308": ("huge.csv", lambda f, p: p.write_bytes(csv_bytes(with_values(f, "distance", 1e308))), 1,
              "column distance has 40 values outside"),
    "infinity": ("inf.csv", lambda f, p: p.write_bytes(csv_bytes(with_values(f, "temp", float("inf")))), 1,
                 "column temp has 40 values outside"),
    "20-digit integers": ("bigint.csv", lambda f, p: p.write_bytes(
        csv_bytes(with_values(f, "dep_hour", 99999999999999999999))), 1, "column dep_hour"),
    "very long strings": ("long.csv", lambda f, p: p.write_bytes(csv_bytes(with_values(f, "carrier", LONG))), 1,
                          "column carrier has 40 values outside"),
    "text in a numerical column": ("mixed_num.csv", lambda f, p: p.write_bytes(
        csv_bytes(with_values(f, "temp", "warm"))), 1, "column temp has type str, expected a number"),
    "numbers in a categorical column": ("mixed_cat.csv", lambda f, p: p.write_bytes(
        csv_bytes(with_values(f, "carrier", 12345))), 1, "column carrier has 40 values outside"),
    "e-mail addresses in free text": ("emails.csv", lambda f, p: p.write_bytes(csv_bytes(
        f.assign(notes="on time").pipe(with_values, "notes", "mail jane.doe@example.org", rows=12))), 1,
        "column notes holds 12 values that look like e-mail addresses"),
    "phone numbers in free text": ("phones.csv", lambda f, p: p.write_bytes(csv_bytes(
        f.assign(notes="on time").pipe(with_values, "notes", "call +1 212 555 0147", rows=5))), 1,
        "column notes holds 5 values that look like phone numbers"),
    "utf-8 byte-order mark": ("bom.csv", lambda f, p: p.write_bytes(b"\xef\xbb\xbf" + csv_bytes(f)), 0, "passed"),
}


def check_outcome(code: int, stderr: str, path: Path, case: str, state: Path) -> None:
    """The exit code, and one line naming the problem (unusable input), or the verdict and the report's path."""
    expected, fragment = CASES[case][2], CASES[case][3]
    assert "Traceback" not in stderr, stderr
    assert code == expected, stderr
    lines = stderr.strip().splitlines()
    assert fragment in lines[0] and str(path) in lines[0], stderr
    if code == 2:  # unusable input: exactly one line, and nothing validated or written
        assert len(lines) == 1 and lines[0].startswith("error: ")
        assert not (state / "reports").exists()
    else:  # a verdict, then where its report is
        assert len(lines) == 2 and lines[1].startswith("report: ")
    assert LONG[:100] not in stderr  # a quoted value is cut short


@pytest.mark.parametrize("case", list(CASES))
def test_validate_never_crashes(tmp_path: Path, demo_config: Path, good: pd.DataFrame, restored_environ: None,
                                capsys: pytest.CaptureFixture[str], case: str) -> None:
    name, write, _, _ = CASES[case]
    path = tmp_path / name
    write(good, path)
    code = main(["validate", "--config", str(demo_config), "--data", str(path)])
    check_outcome(code, capsys.readouterr().err, path, case, tmp_path / "state")


# The console script runs the same `main` as the test above, which covers every case: here one case per kind of
# outcome (unreadable, wrong encoding, broken CSV, huge values, PII), each a process start of several seconds.
CONSOLE_CASES = ["zero bytes", "png as parquet", "utf-16", "ragged rows", "very long strings",
                 "e-mail addresses in free text"]


@pytest.mark.slow
@pytest.mark.parametrize("case", CONSOLE_CASES)
def test_validate_console_script_never_crashes(tmp_path: Path, demo_config: Path, good: pd.DataFrame,
                                               case: str) -> None:
    name, write, _, _ = CASES[case]
    path = tmp_path / name
    write(good, path)
    result = run_cli("validate", "--config", str(demo_config), "--data", str(path), cwd=tmp_path)
    check_outcome(result.returncode, result.stderr, path, case, tmp_path / "state")


@pytest.mark.slow
@pytest.mark.parametrize("case", ["png as csv", "latin-1 with accents", "none of the contract's columns"])
def test_train_refuses_unusable_files_in_one_line(tmp_path: Path, demo_config: Path, good: pd.DataFrame,
                                                  case: str) -> None:
    name, write, code, fragment = CASES[case]
    path = tmp_path / name
    write(good, path)
    result = run_cli("train", "--config", str(demo_config), "--data", str(path), cwd=tmp_path)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert fragment in result.stderr


@pytest.mark.slow
def test_train_names_unparseable_timestamps_without_a_traceback(tmp_path: Path, demo_config: Path,
                                                                 good: pd.DataFrame) -> None:
    path = tmp_path / "times.csv"
    path.write_bytes(csv_bytes(with_values(good, "time_hour", "soon", rows=3)))
    result = run_cli("train", "--config", str(demo_config), "--data", str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: column time_hour: not parseable as timestamps"
    validated = run_cli("validate", "--config", str(demo_config), "--data", str(path), cwd=tmp_path)
    assert validated.returncode == 1 and "column time_hour has 3 missing or unparseable timestamps" in validated.stderr
