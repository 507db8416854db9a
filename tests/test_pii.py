"""Personal data: declared PII columns dropped or keyed-hashed, PII-looking text flagged and never quoted."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import stat
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from driftloop.config import Config
from driftloop.data import reference_frame
from driftloop.data_checks import list_quarantine, quarantine, validate_frame
from driftloop.data_checks.contract import gx_view
from driftloop.errors import ConfigError
from driftloop.pii import PII_KEY_ENV, PiiPolicy, pii_kind, pii_policy
from driftloop.serving.prediction_log import PredictionLog
from tests.helpers import make_config, run_cli

ADDRESSES = [f"jane.doe{i}@example.org" for i in range(12)]
PHONES = ["+1 212 555 0147", "(718) 555-0199", "+44 20 7946 0958"]


@pytest.fixture
def hashing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Config:
    """The demo config with data.pii_policy: hash, its key in the state dir."""
    monkeypatch.delenv(PII_KEY_ENV, raising=False)
    return make_config(tmp_path / "state", data={"pii_policy": "hash"})


def with_notes(frame: pd.DataFrame, values: list[str]) -> pd.DataFrame:
    """`frame` with a free-text `notes` column (outside the contract) holding `values` on its first rows."""
    notes = ["on time, no remarks"] * len(frame)
    notes[: len(values)] = [f"passenger wrote from {v} about the delay" for v in values]
    return frame.assign(notes=notes)


def every_output(report_path: Path, folder: Path, report_json: dict, summary: str) -> list[str]:
    """Every text a validation and its quarantine produce: our page, GX's page, report.json, the listing."""
    texts = [json.dumps(report_json), summary]
    texts += [p.read_text() for p in report_path.parent.glob("*.html")]
    texts += [p.read_text() for p in folder.iterdir() if p.suffix in (".json", ".html")]
    return texts


def test_hash_is_keyed_joinable_and_not_a_plain_digest(hashing: Config) -> None:
    policy = pii_policy(hashing)
    key_file = Path(hashing.state_dir).resolve() / "secrets" / "pii.key"
    assert key_file.is_file() and stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert policy.value("N14228") == pii_policy(hashing).value("N14228")  # the same key on the next read
    assert policy.value("N14228") != policy.value("N14229")
    # A dictionary attack on a plain digest finds the value; without the key it finds nothing.
    assert policy.value("N14228") != hashlib.sha256(b"N14228").hexdigest()
    assert PiiPolicy(policy.columns, b"another key of 32 characters....").value("N14228") != policy.value("N14228")
    assert policy.value(7) == policy.value(7.0) == policy.value("7") == policy.value(np.int64(7))
    assert policy.value(None) is None and policy.value(float("nan")) is None


def test_the_key_comes_from_the_environment_first(hashing: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PII_KEY_ENV, "k" * 40)
    assert pii_policy(hashing).key == b"k" * 40
    assert not (Path(hashing.state_dir).resolve() / "secrets" / "pii.key").exists()
    monkeypatch.setenv(PII_KEY_ENV, "short")
    with pytest.raises(ConfigError, match=PII_KEY_ENV):
        pii_policy(hashing)


def test_a_short_key_file_is_refused_naming_it(hashing: Config) -> None:
    key_file = Path(hashing.state_dir).resolve() / "secrets" / "pii.key"
    key_file.parent.mkdir(parents=True)
    key_file.write_text("abc\n")
    with pytest.raises(ConfigError, match=str(key_file)):
        pii_policy(hashing)


@pytest.mark.parametrize("policy", ["drop", "hash"])
def test_prediction_log_and_reference_follow_the_policy(tmp_path: Path, flights_jan: pd.DataFrame,
                                                        monkeypatch: pytest.MonkeyPatch, policy: str) -> None:
    monkeypatch.delenv(PII_KEY_ENV, raising=False)
    config = make_config(tmp_path / "state", data={"pii_policy": policy})
    rows = flights_jan.head(3)
    tails = rows["tailnum"].tolist()
    with PredictionLog(tmp_path / "p.db", pii=pii_policy(config)) as log:
        log.append([{"tailnum": t, "carrier": "UA"} for t in tails], [0.1, 0.2, 0.3], "1")
    with sqlite3.connect(tmp_path / "p.db") as db:  # what is on disk, as stored
        stored = [json.loads(features) for (features,) in db.execute("SELECT features FROM predictions")]
    reference = reference_frame(flights_jan, config)
    text = json.dumps(stored) + reference.to_csv()
    assert not any(tail in text for tail in set(flights_jan["tailnum"].dropna()))
    if policy == "drop":
        assert all("tailnum" not in row for row in stored) and "tailnum" not in reference
    else:  # hashed in both places, with one key: a logged prediction joins the reference by its hash
        hashes = [pii_policy(config).value(t) for t in tails]
        assert [row["tailnum"] for row in stored] == hashes
        assert set(hashes) <= set(reference["tailnum"])
    assert list(reference.columns[: len(config.data.features)]) == config.data.features


def test_email_addresses_in_free_text_fail_and_are_never_quoted(config: Config, flights_jan: pd.DataFrame) -> None:
    batch = with_notes(flights_jan, ADDRESSES)
    report = validate_frame(batch, config, reference=flights_jan, name="notes")
    assert not report.success
    assert [(f.column, f.unexpected) for f in report.failed] == [("notes", 12)]
    assert report.failed[0].reason == ("column notes holds 12 values that look like e-mail addresses; declare it "
                                       "under data.pii or drop it")
    folder = quarantine(batch, report, config, "notes")
    listed = list_quarantine(config)
    assert listed[0]["reasons"] == report.reasons()
    texts = every_output(report.report, folder, report.to_json(), report.summary()) + [json.dumps(listed)]
    assert len(texts) >= 6  # our page and GX's (reports and quarantine), report.json, the JSON, the listing
    for text in texts:
        assert "@example.org" not in text and not any(a in text for a in ADDRESSES)
    # The raw batch kept in quarantine is the raw data: it may hold them (documented), under the state dir.
    assert (folder / "data.parquet").is_file()


def test_phone_numbers_fail_and_mostly_comes_from_the_config(tmp_path: Path, flights_jan: pd.DataFrame) -> None:
    batch = with_notes(flights_jan, PHONES * 20)  # 60 of 4,000 rows: 1.5%
    report = validate_frame(batch, make_config(tmp_path / "state"), reference=flights_jan)
    assert [f.reason for f in report.failed] == [
        "column notes holds 60 values that look like phone numbers; declare it under data.pii or drop it"]
    assert not any(p in report.report.read_text() for p in PHONES)
    relaxed = make_config(tmp_path / "state", validation={"pii_scan_mostly": 0.98})
    assert validate_frame(batch, relaxed, reference=flights_jan).success


def test_pii_looking_values_in_contract_columns_are_redacted(config: Config, flights_jan: pd.DataFrame) -> None:
    batch = flights_jan.copy()
    batch["temp"] = batch["temp"].astype(object)
    batch.loc[:3, "temp"] = ADDRESSES[:4]  # numbers and e-mail addresses in a numerical column
    batch["dest"] = batch["dest"].astype(object)
    batch.loc[:3, "dest"] = ADDRESSES[4:8]
    report = validate_frame(batch, config, name="contract")  # profiled from the batch itself
    kinds = {(f.expectation, f.column) for f in report.failed}
    assert ("expect_column_values_to_not_match_regex", "dest") in kinds
    assert ("expect_column_values_to_not_match_regex", "temp") in kinds
    assert "looks like e-mail addresses" in " ".join(f.reason for f in report.failed)  # redacted examples
    folder = quarantine(batch, report, config, "contract")
    for text in every_output(report.report, folder, report.to_json(), report.summary()):
        assert not any(a in text for a in ADDRESSES)


def test_declared_pii_is_not_scanned_and_never_seen(tmp_path: Path, flights_jan: pd.DataFrame) -> None:
    config = make_config(tmp_path / "state", data={"pii": ["tailnum", "notes"]})
    batch = with_notes(flights_jan, ADDRESSES)
    assert "notes" not in gx_view(batch, config).columns
    report = validate_frame(batch, config, reference=flights_jan)
    assert report.success, report.summary()
    assert not any(a in report.report.read_text() for a in ADDRESSES)


def test_bundled_columns_do_not_look_like_pii(flights: pd.DataFrame) -> None:
    text = flights[["carrier", "origin", "dest"]].astype(str)
    text["time_hour"] = flights["time_hour"].astype(str)  # as a CSV holds it
    for column in text:
        looks = text[column].drop_duplicates().map(pii_kind).dropna()
        assert looks.empty, (column, looks.head().tolist())


@pytest.mark.slow
def test_train_refuses_and_quarantines_a_batch_with_email_addresses(tmp_path: Path, flights_jan: pd.DataFrame
                                                                    ) -> None:
    import yaml

    config = make_config(tmp_path / "state")
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    data = tmp_path / "crafted.csv"
    with_notes(flights_jan, ADDRESSES).to_csv(data, index=False)
    result = run_cli("train", "--config", str(config_path), "--data", str(data), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "column notes holds 12 values that look like e-mail addresses" in result.stderr
    entries = list_quarantine(config)
    assert [e["name"] for e in entries] == ["crafted"]
    assert "column notes holds 12 values that look like e-mail addresses" in entries[0]["reasons"][0]
    # Nowhere under the state dir but the raw batch kept in quarantine (nor on the console) is an address.
    raw_batch = Path(entries[0]["path"]) / "data.parquet"
    for path in Path(config.state_dir).rglob("*"):
        if path.is_file() and path != raw_batch:
            content = path.read_bytes()
            assert not any(a.encode() in content for a in ADDRESSES), path
    assert not any(a in result.stderr + result.stdout for a in ADDRESSES)
    assert os.path.getsize(raw_batch) > 0
