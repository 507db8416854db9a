"""Suites generated, then owned: `driftloop checks init` writes a reference file's profile as a GX suite file.

The file is GX's own JSON form of an ExpectationSuite (`ExpectationSuite.to_json_dict`, indented), so GX reads it
as it is and a person can review it, edit it (widen a range, add a category or any GX expectation) and commit it.
With validation.suite set, validation uses that file instead of profiling a reference at validation time;
nothing regenerates it behind the user's back: a suite that no longer covers the config says so and stops.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import great_expectations as gx
from great_expectations.core.expectation_suite import expectationSuiteSchema
from great_expectations.exceptions import GreatExpectationsError
from marshmallow import ValidationError as SchemaError

from driftloop.config import Config
from driftloop.data import fingerprint, read_table
from driftloop.data_checks.contract import contract_columns
from driftloop.data_checks.suite import build_suite, check_reference
from driftloop.errors import ConfigError
from driftloop.state import write_atomic

GENERATOR = "driftloop checks init"
JSON_INDENT = 2
# Keyword arguments through which a GX expectation names the column(s) it checks.
COLUMN_KWARGS = ("column", "column_A", "column_B")
COLUMN_LIST_KWARGS = ("column_list", "column_set")


@dataclass(frozen=True)
class SuiteWritten:
    """What `checks init` wrote: where, how many expectations on which columns, from which reference."""

    path: Path
    expectations: int
    columns: list[str]
    reference: Path
    rows: int
    fingerprint: str

    def to_json(self) -> dict:
        """The `driftloop checks init --json` object."""
        return {"suite": str(self.path), "expectations": self.expectations, "columns": self.columns,
                "reference": str(self.reference), "rows": self.rows, "fingerprint": self.fingerprint}


def init_suite(config: Config, reference_path: Path, out: Path | None = None, force: bool = False) -> SuiteWritten:
    """Profile `reference_path` and write the suite to `out` (default: validation.suite); never overwrite unasked."""
    target = out if out is not None else config.validation.suite
    if target is None:
        raise ConfigError("no file to write the suite to: pass --out PATH, or set validation.suite in the config")
    target = Path(target)
    if target.is_dir():
        raise ConfigError(f"{target}: is a directory; name the suite file to write (e.g. {target}/suite.json)")
    if target.exists() and not force:
        raise ConfigError(f"{target}: a suite exists there and may hold your edits; pass --force to overwrite it")
    frame = read_table(reference_path)
    check_reference(frame, config, str(reference_path))
    fp = fingerprint(frame)
    meta = {
        "generated_by": GENERATOR,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        # The suite's own location is no part of what it was generated from.
        "config_digest": config_digest(config),
        "reference": {"file": Path(reference_path).name, "fingerprint": fp, "rows": len(frame)},
        "settings": config.validation.model_dump(mode="json", exclude={"suite", "pii_scan_mostly"}),
    }
    suite = build_suite(config, frame, meta=meta)
    write_suite(suite, target)
    return SuiteWritten(path=target, expectations=len(suite.expectations), columns=sorted(suite_columns(suite)),
                        reference=Path(reference_path), rows=len(frame), fingerprint=fp)


def config_digest(config: Config) -> str:
    """`Config.digest` of the config without validation.suite (an absolute path after load_config)."""
    return config.model_copy(update={"validation": config.validation.model_copy(update={"suite": None})}).digest()


def write_suite(suite: gx.ExpectationSuite, path: Path) -> None:
    """GX's JSON of the suite, written atomically (a reader never sees half a suite)."""
    write_atomic(path, json.dumps(suite.to_json_dict(), indent=JSON_INDENT, allow_nan=False) + "\n")


def saved_suite(config: Config) -> gx.ExpectationSuite | None:
    """The suite validation.suite names, read and checked against the config; None when it is not set."""
    path = config.validation.suite
    return None if path is None else read_suite(Path(path), config)


def read_suite(path: Path, config: Config) -> gx.ExpectationSuite:
    """Read a suite file; ConfigError naming the file if it is missing, not JSON, not a GX suite, or incomplete."""
    where = f"{path} (validation.suite)"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{where}: suite file not found; write it with `driftloop checks init --config CONFIG "
                          "--data REFERENCE`") from None
    except OSError as error:
        raise ConfigError(f"{where}: cannot read the suite ({error.strerror or error})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: not UTF-8 text, so not a JSON suite") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"{where}: not valid JSON (line {error.lineno}, column {error.colno}: {error.msg})") from None
    suite = parse_suite(raw, where)
    check_coverage(suite, config, where)
    return suite


def parse_suite(raw: Any, where: str) -> gx.ExpectationSuite:
    """A GX suite from its JSON form; every expectation is checked (GX itself would log and skip a bad one)."""
    if not isinstance(raw, dict) or "expectations" not in raw or "name" not in raw:
        raise ConfigError(f"{where}: not a Great Expectations suite (a JSON object with a name and expectations)")
    try:
        loaded = expectationSuiteSchema.load(raw)
    except SchemaError as error:
        raise ConfigError(f"{where}: not a valid Great Expectations suite ({_schema_message(error.messages)})"
                          ) from None
    for index, configuration in enumerate(loaded["expectations"], start=1):
        try:
            configuration.to_domain_obj()
        except (GreatExpectationsError, ValueError, TypeError) as error:
            raise ConfigError(f"{where}: expectation {index} ({configuration.type}) is not valid: "
                              f"{_expectation_message(error)}") from None
    return gx.ExpectationSuite(**loaded)


def _schema_message(messages: Any) -> str:
    """The first of marshmallow's nested messages, with its path: expectations.0.color: Unknown field."""
    path: list[str] = []
    while isinstance(messages, dict) and messages:
        key, messages = next(iter(messages.items()))
        path.append(str(key))
    if isinstance(messages, list) and messages:
        messages = messages[0]
    return f"{'.'.join(path)}: {messages}" if path else str(messages)


def _expectation_message(error: Exception) -> str:
    """One line from GX's (pydantic's) complaint about an expectation's arguments."""
    errors = getattr(error, "errors", None)
    if callable(errors):
        first = errors()[0]
        return f"{'.'.join(str(p) for p in first.get('loc', ()))}: {first.get('msg')}"
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def suite_columns(suite: gx.ExpectationSuite) -> set[str]:
    """Every column some expectation of the suite names."""
    columns: set[str] = set()
    for expectation in suite.expectations:
        kwargs = expectation.configuration.kwargs
        columns.update(str(kwargs[k]) for k in COLUMN_KWARGS if kwargs.get(k) is not None)
        for key in COLUMN_LIST_KWARGS:
            columns.update(str(c) for c in kwargs.get(key) or [])
    return columns


def check_coverage(suite: gx.ExpectationSuite, config: Config, where: str) -> None:
    """The suite must check every column of the data contract, and only those (validation sees no others)."""
    named = suite_columns(suite)
    contract = contract_columns(config)
    missing = [c for c in contract if c not in named]
    if missing:
        raise ConfigError(f"{where}: no expectation on column {missing[0]} of the data contract; add one (at least "
                          "expect_column_to_exist) or regenerate the suite with `driftloop checks init --force`")
    pii = sorted(named & set(config.data.pii))
    if pii:
        raise ConfigError(f"{where}: expectation on column {pii[0]}, declared under data.pii: PII never reaches "
                          "validation; remove that expectation")
    stray = sorted(named - set(contract))
    if stray:
        raise ConfigError(f"{where}: expectation on column {stray[0]}, which is not in the data contract (data."
                          "numerical, categorical, target, timestamp); remove it or add the column to the config")
