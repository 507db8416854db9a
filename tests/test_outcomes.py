"""The flows' typed outcomes: one wording of a refusal, the `train --json` keys, the statuses; and `driftloop train`
printing them (the flow replaced by a stub: these tests train nothing)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from driftloop.data_checks.findings import Finding
from driftloop.data_checks.validate import FailedExpectation, ValidationReport
from driftloop.flows import training as training_flows
from driftloop.flows.governance import GovernanceResult
from driftloop.flows.outcomes import MonitorRun, Refusal, RetrainingOutcome, Status, TrainedModel, TrainingOutcome
from tests.helpers import cli_here, make_config

PASSED = ValidationReport(True, 500, [], Path("/reports/batch.html"), evaluated=12)
FAILED = ValidationReport(False, 500, [FailedExpectation("expect_column_to_exist", "distance", 0,
                                                         "column distance is missing")],
                          Path("/reports/batch.html"), evaluated=12)
MODEL = TrainedModel("run42", "3", 0.4321, 2, "1F1B", 4, 1, 2, 0, {"auc": 0.71}, champion=False)
DRIFT = Finding("guard.drift", True, "10 of 10 feature columns drift", {"drift_share": 1.0})
LEAK = Finding("leakage.feature", True, "feature leak alone predicts arr_delayed")
WARNING = Finding("representativity", False, "the last window drifts from the batch")
QUARANTINE = Path("/state/quarantine/20261204-april-abcdef")


def governance(*findings: Finding) -> GovernanceResult:
    """A governance verdict with these findings."""
    return GovernanceResult("abcdef0123456789", list(findings))


def test_a_failed_validation_is_quarantined_and_cannot_be_approved() -> None:
    refusal = Refusal("april.csv", FAILED, QUARANTINE)
    assert refusal.status is Status.QUARANTINED and not refusal.approvable and refusal.fingerprint is None
    assert refusal.lines() == [
        "training refused: april.csv failed validation: 1 of 12 expectations failed: column distance is missing "
        "(expect_column_to_exist)",
        f"quarantined in {QUARANTINE}"]
    assert refusal.summary().startswith("validation failed: 1 of 12") and refusal.reasons() == [FAILED.summary()]


def test_governance_findings_are_refused_with_every_finding_and_the_approve_hint() -> None:
    refusal = Refusal("april.csv", PASSED, QUARANTINE, governance(DRIFT, WARNING))
    assert refusal.status is Status.REFUSED and refusal.approvable and refusal.fingerprint == "abcdef0123456789"
    assert refusal.lines() == [
        "training refused: april.csv failed 1 governance check(s):",
        "  guard.drift: 10 of 10 feature columns drift",
        "  (warning) representativity: the last window drifts from the batch",
        f"quarantined in {QUARANTINE}",
        f"if the batch is right as it is: driftloop approve {QUARANTINE.name} --reason TEXT"]
    assert refusal.reasons() == ["guard.drift: 10 of 10 feature columns drift"]
    raw = refusal.to_json()
    assert raw["status"] == "refused" and raw["quarantine"] == str(QUARANTINE) and raw["fingerprint"]
    assert raw["governance"]["findings"][0]["check"] == "guard.drift" and raw["validation"]["success"] is True


def test_a_finding_no_approval_overrides_gets_no_hint() -> None:
    refusal = Refusal("april.csv", PASSED, QUARANTINE, governance(DRIFT, LEAK))
    assert not refusal.approvable and not any("driftloop approve" in line for line in refusal.lines())


def test_the_train_json_object_keeps_its_keys() -> None:
    assert list(MODEL.to_json()) == ["run_id", "model_version", "final_loss", "stages", "schedule", "microbatches",
                                     "stages_per_rank", "ranks", "resumed_from", "metrics", "baseline"]
    assert MODEL.to_json()["metrics"] == {"auc": 0.71} and MODEL.to_json()["model_version"] == "3"


def test_outcome_statuses() -> None:
    trained = TrainingOutcome(PASSED, governance(), model=MODEL)
    verdict = governance(DRIFT)
    refused = TrainingOutcome(PASSED, verdict, refusal=Refusal("b.csv", PASSED, QUARANTINE, verdict))
    assert trained.status is Status.TRAINED and refused.status is Status.REFUSED
    assert trained.to_json()["model"]["run_id"] == "run42" and refused.to_json()["refusal"]["status"] == "refused"
    retrained = RetrainingOutcome(Status.REFUSED, training=refused)
    assert retrained.refusal is refused.refusal and retrained.model is None and not retrained.promoted
    skipped = RetrainingOutcome.skipped("no new labelled window since version 3")
    assert skipped.status is Status.SKIPPED and skipped.to_json()["reason"].endswith("version 3")
    assert MonitorRun(pending_rows=12).status is Status.SKIPPED and MonitorRun().to_json()["checked"] == []


@pytest.fixture
def config_yaml(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(make_config(tmp_path / "state").model_dump(mode="json")))
    return path


@pytest.mark.parametrize("outcome, code, stderr", [
    (TrainingOutcome(FAILED, refusal=Refusal("april.csv", FAILED, QUARANTINE)), 2,
     Refusal("april.csv", FAILED, QUARANTINE).lines()),
    (TrainingOutcome(PASSED, governance(DRIFT), refusal=Refusal("april.csv", PASSED, QUARANTINE, governance(DRIFT))),
     2, Refusal("april.csv", PASSED, QUARANTINE, governance(DRIFT)).lines()),
    (TrainingOutcome(PASSED, governance(), model=MODEL), 0, [
        "trained 2 stages on 2 rank(s) (1F1B, 4 microbatches): final loss 0.4321; holdout auc 0.7100",
        "model flights-delay version 3: registered (gate decides promotion); run run42"]),
])
def test_train_prints_the_outcome(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                  restored_environ: None, config_yaml: Path, outcome: TrainingOutcome, code: int,
                                  stderr: list[str]) -> None:
    monkeypatch.setattr(training_flows, "train_file", lambda *args, **kwargs: outcome)
    result = cli_here(capsys, "train", "--config", str(config_yaml), "--data", "april.csv")
    assert result.returncode == code and result.stdout == ""
    assert result.stderr.splitlines() == stderr


def test_train_json_prints_the_model(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                     restored_environ: None, config_yaml: Path) -> None:
    monkeypatch.setattr(training_flows, "train_file", lambda *args, **kwargs: TrainingOutcome(PASSED, model=MODEL))
    result = cli_here(capsys, "train", "--config", str(config_yaml), "--data", "april.csv", "--json")
    assert result.returncode == 0 and json.loads(result.stdout) == MODEL.to_json()
