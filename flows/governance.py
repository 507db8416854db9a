"""The governance gate: what a careful data team checks after the GX contract and before a batch is trained on.

Chains data_checks' leakage and label checks with the drift monitor (is the batch like the traffic? like the
champion's data?) and the registry (the champion's training data, its predictions on the batch). Every check
gives a Finding: blocking ones stop the batch unless a person approved it (`driftloop approve`) and the check
is one an approval may override; the rest are warnings in the flow's log and in the result.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from driftloop.config import Config
from driftloop.data import split_by_fraction
from driftloop.data_checks.approvals import Approval, find_approval
from driftloop.data_checks.balance import champion_agreement, class_balance, label_shift
from driftloop.data_checks.findings import Finding, blocking
from driftloop.data_checks.leakage import feature_leakage, overlap_finding, time_finding
from driftloop.data_checks.validate import batch_fingerprint
from driftloop.flows.monitoring import log_to_contract
from driftloop.monitoring.drift import check_drift
from driftloop.registry.store import load_reference, load_version
from driftloop.serving.prediction_log import log_exists, open_log

# Samples for the drift checks are drawn with a fixed seed: the same batch always gets the same verdict.
SAMPLE_SEED = 0


@dataclass(frozen=True)
class GovernanceResult:
    """The gate's verdict on one batch: its fingerprint, every finding, and the approval that was honoured."""

    fingerprint: str
    findings: list[Finding]
    approval: Approval | None = None

    @property
    def passed(self) -> bool:
        """No finding stops the batch."""
        return not blocking(self.findings)

    def reasons(self) -> list[str]:
        """One line per finding that stops the batch."""
        return [f.line() for f in blocking(self.findings)]

    def warnings(self) -> list[str]:
        """One line per finding that does not stop it (warnings, and findings a person approved)."""
        return [f.line() for f in self.findings if not f.blocking]

    def summary(self) -> str:
        """One readable line: what stops the batch, or that it passed (with how many warnings)."""
        if not self.passed:
            return f"{len(self.reasons())} governance check(s) failed: " + "; ".join(self.reasons())
        note = f" ({len(self.warnings())} warning(s): {'; '.join(self.warnings())})" if self.warnings() else ""
        return "governance checks passed" + note

    def to_json(self) -> dict:
        """The `governance` entry of the training pipeline's result."""
        return {"passed": self.passed, "fingerprint": self.fingerprint, "summary": self.summary(),
                "findings": [f.to_json() for f in self.findings],
                "approval": self.approval.to_json() if self.approval else None}


def features_sample(frame: pd.DataFrame, config: Config) -> pd.DataFrame:
    """The feature columns of at most governance.drift_rows rows of `frame` (the same rows every time)."""
    rows = frame[config.data.features]
    if len(rows) <= config.governance.drift_rows:
        return rows.reset_index(drop=True)
    return rows.sample(config.governance.drift_rows, random_state=SAMPLE_SEED).reset_index(drop=True)


def drifted_columns(reference: pd.DataFrame, current: pd.DataFrame, config: Config) -> tuple[list[str], int]:
    """The feature columns the calibrated monitor finds drifted in a sample of `current` against `reference`, and
    the sample's size."""
    sample = features_sample(current, config)
    result = check_drift(reference[config.data.features], sample, config)
    return [name for name, column in result.columns.items() if column.drifted], len(sample)


def leakage_checks(config: Config, frame: pd.DataFrame, evaluation: pd.DataFrame | None) -> list[Finding]:
    """Leaked features; evaluation rows among the training rows and training rows from the evaluation period, for
    the trainer's holdout (the time-later training.holdout_fraction) and, when given, the gate's window."""
    findings = feature_leakage(frame, config)
    pairs = []
    if len(frame) >= 2:  # the trainer's own split (training/trainer.py)
        fit, holdout = split_by_fraction(frame, config.training.holdout_fraction)
        pairs.append((fit, holdout, "holdout"))
    if evaluation is not None:
        pairs.append((frame, evaluation, "gate window"))
    for training, held, what in pairs:
        findings += [f for f in (overlap_finding(training, held, config, what),
                                 time_finding(training, held, config, what)) if f is not None]
    return findings


def guard_checks(config: Config, frame: pd.DataFrame, champion: str) -> list[Finding]:
    """The poisoning guard against the champion: drift from its training data, the label rate's change, and its own
    score on the batch's labels."""
    reference = load_reference(config, champion)
    findings = [f for f in (label_shift(frame, reference, config),
                            champion_agreement(frame, load_version(config, champion).predict(frame), champion, config))
                if f is not None]
    limit = config.governance.max_drift_share
    if limit is None:
        return findings
    drifted, rows = drifted_columns(reference, frame, config)
    share = len(drifted) / len(config.data.features)
    if share > limit:
        findings.append(Finding(
            "guard.drift", True,
            f"{len(drifted)} of {len(config.data.features)} feature columns drift from the champion's (v{champion}) "
            f"training data: {', '.join(drifted)} (share {share:.2f} > governance.max_drift_share {limit:g}; "
            f"calibrated monitor on {rows} rows)",
            {"drift_share": round(share, 4), "limit": limit, "rows": rows}))
    return findings


def recent_traffic(config: Config) -> pd.DataFrame | None:
    """The traffic of the last governance.representativity_windows windows' worth of the prediction log: the rows
    of the last that-many times monitoring.window (a duration back from the latest event time, or a row count), or
    None (no log, nothing logged, or the check is off).

    Read from the end of the log, a growing number of rows at a time, until the rows read reach back that far or
    the whole log was read.
    """
    wanted = config.governance.representativity_windows
    if wanted == 0 or not log_exists(config):
        return None
    size = config.monitoring.window
    with open_log(config, config.data.pii) as log:
        last = log.last_id()
        span = wanted * size if isinstance(size, int) else config.monitoring.max_window_rows
        while True:
            first = max(1, last - span + 1)
            logged = log.read(first_id=first)
            if logged.empty or isinstance(size, int):
                break
            since = logged["event_time"].max() - wanted * pd.Timedelta(size)
            if first == 1 or logged["event_time"].min() <= since:
                logged = logged[logged["event_time"] > since]
                break
            span *= 4
    return None if logged.empty else log_to_contract(config, logged).reset_index(drop=True)


def representativity_check(config: Config, frame: pd.DataFrame) -> Finding | None:
    """Does the recent traffic look like the batch? The calibrated monitor on a sample of the last logged windows,
    with the batch as its reference (what the monitor would say once a model trained on it serves)."""
    traffic = recent_traffic(config)
    if traffic is None or len(frame) < 2:
        return None
    drifted, rows = drifted_columns(frame, traffic, config)
    if not drifted:
        return None
    blocks = config.governance.representativity_blocks
    windows = config.governance.representativity_windows
    return Finding(
        "representativity", blocks,
        f"the last {windows} window(s) of logged traffic ({len(traffic):,} rows) drift from the batch in "
        f"{', '.join(drifted)} (calibrated monitor on {rows} rows): a model trained on it meets traffic unlike its "
        f"training data{'' if blocks else ' (a warning: governance.representativity_blocks is off)'}",
        {"drifted_columns": len(drifted), "traffic_rows": len(traffic), "rows": rows})


def honour_approval(findings: list[Finding], approval: Approval | None) -> list[Finding]:
    """The findings with those the approval overrides turned into approved warnings (overridable checks only)."""
    if approval is None:
        return findings
    return [f.approved(approval.who) if f.blocking and f.overridable and f.check in approval.overrides else f
            for f in findings]


def run_checks(config: Config, frame: pd.DataFrame, champion: str | None,
               evaluation: pd.DataFrame | None = None) -> GovernanceResult:
    """Every governance check on a batch that passed validation; `champion`: the version the guard compares with
    (none for a first model), `evaluation`: data the new model will be judged on besides its holdout."""
    fingerprint = batch_fingerprint(frame)
    findings = leakage_checks(config, frame, evaluation)
    findings += [f for f in (class_balance(frame, config), representativity_check(config, frame)) if f is not None]
    if champion is not None:
        findings += guard_checks(config, frame, champion)
    approval = find_approval(config, fingerprint)
    honoured = honour_approval(findings, approval)
    used = approval if any(f.approved_by for f in honoured) else None
    return GovernanceResult(fingerprint, honoured, used)


@task(cache_policy=NO_CACHE)
def governance_gate(config: Config, frame: pd.DataFrame, champion: str | None,
                    evaluation: pd.DataFrame | None = None) -> GovernanceResult:
    """The governance checks, each finding in the flow's log at INFO, and a stopped batch named in one warning (the
    caller reports the findings too, and says where the batch went)."""
    result = run_checks(config, frame, champion, evaluation)
    logger = get_run_logger()
    for finding in result.findings:  # INFO: warnings are returned and the caller reports them in its own words
        logger.info("governance: %s", finding.line())
    if result.passed:
        logger.info("governance checks passed")
    else:
        logger.warning("governance: batch stopped by %s", ", ".join(f.check for f in blocking(result.findings)))
    return result
