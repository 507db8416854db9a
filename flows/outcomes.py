"""What the flows return: typed outcomes with a status, so that callers read fields instead of probing dict keys.

`Refusal` is the one place that says why a batch was kept out of training (failed validation, or governance
findings with the `driftloop approve` hint); the CLI, the retraining deployment and the demo all print it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

from driftloop.data_checks.findings import blocking

if TYPE_CHECKING:  # annotations only: loading them pulls torch, GX and MLflow into whoever reads an outcome
    from driftloop.data_checks.validate import ValidationReport
    from driftloop.flows.governance import GovernanceResult
    from driftloop.monitoring.drift import DriftResult
    from driftloop.monitoring.policy import Decision
    from driftloop.registry.gate import GateDecision
    from driftloop.registry.store import Registered
    from driftloop.training.trainer import TrainResult


class Status(StrEnum):
    """How a flow ended."""

    TRAINED = "trained"  # a version was registered (a retraining's gate then promoted it or not)
    QUARANTINED = "quarantined"  # the batch failed validation: kept aside, no approval lets it through
    REFUSED = "refused"  # governance findings stopped the batch: kept aside, `driftloop approve` may let it through
    SKIPPED = "skipped"  # nothing to do: no new labelled window, no complete window of traffic
    CHECKED = "checked"  # the monitor checked at least one window


@dataclass(frozen=True)
class TrainedModel:
    """A version the training pipeline registered, with the figures of its training run."""

    run_id: str
    model_version: str
    final_loss: float
    stages: int
    schedule: str
    microbatches: int
    stages_per_rank: int
    ranks: int
    resumed_from: int
    metrics: dict[str, float]
    champion: bool  # the first version ever: champion without a gate
    baseline: dict | None = None  # {"model": ..., "metrics": {...}}: HistGradientBoosting on the same rows and holdout
    start: str = "scratch"  # where the weights started (warm start, or why not)

    @classmethod
    def of(cls, result: TrainResult, registered: Registered) -> TrainedModel:
        """The registered version of a training result."""
        return cls(registered.run_id, registered.version, result.final_loss, result.stages, result.schedule,
                   result.microbatches, result.stages_per_rank, result.ranks, result.resumed_from,
                   dict(result.metrics), registered.champion,
                   result.baseline.to_json() if result.baseline is not None else None, result.start)

    def to_json(self) -> dict:
        """The `driftloop train --json` object (the keys docs/concepts/loop.md lists, then ranks and resume);
        `champion` is not in it."""
        return {"run_id": self.run_id, "model_version": self.model_version, "final_loss": self.final_loss,
                "stages": self.stages, "schedule": self.schedule, "microbatches": self.microbatches,
                "stages_per_rank": self.stages_per_rank, "ranks": self.ranks, "resumed_from": self.resumed_from,
                "metrics": self.metrics, "baseline": self.baseline}


@dataclass(frozen=True)
class Refusal:
    """A batch kept out of training: the file, its validation, the governance verdict (when validation passed) and
    the quarantine folder it went to."""

    batch: str
    validation: ValidationReport
    quarantine: Path
    governance: GovernanceResult | None = None

    @property
    def status(self) -> Status:
        """QUARANTINED for failed validation, REFUSED for governance findings."""
        return Status.QUARANTINED if not self.validation.success else Status.REFUSED

    @property
    def fingerprint(self) -> str | None:
        """The batch's fingerprint, for `driftloop approve` (governance refusals only)."""
        return self.governance.fingerprint if self.governance is not None else None

    @property
    def approvable(self) -> bool:
        """Whether a person's approval can let the batch through: every stopping finding is overridable."""
        return self.governance is not None and all(f.overridable for f in blocking(self.governance.findings))

    def summary(self) -> str:
        """One line: what failed."""
        if self.status is Status.QUARANTINED:
            return f"validation failed: {self.validation.summary()}"
        return self.governance.summary() if self.governance is not None else ""

    def reasons(self) -> list[str]:
        """One line per reason, `check: reason` for the governance findings that stop the batch."""
        if self.status is Status.QUARANTINED:
            return [self.validation.summary()]
        return [f"{f.check}: {f.reason}" for f in blocking(self.governance.findings)] if self.governance else []

    def lines(self) -> list[str]:
        """What a person reads: why, every finding (warnings too), where the batch went and how to let it through
        when a person may."""
        if self.status is Status.QUARANTINED or self.governance is None:
            lines = [f"training refused: {self.batch} failed validation: {self.validation.summary()}"]
        else:
            findings = self.governance.findings
            lines = [f"training refused: {self.batch} failed {len(blocking(findings))} governance check(s):"]
            lines += [f"  {reason}" for reason in self.reasons()]
            lines += [f"  (warning) {f.check}: {f.reason}" for f in findings if not f.blocking]
        lines.append(f"quarantined in {self.quarantine}")
        if self.approvable:
            lines.append(f"if the batch is right as it is: driftloop approve {self.quarantine.name} --reason TEXT")
        return lines

    def to_json(self) -> dict:
        """The refusal in JSON results: status, summary, one reason a line, the fingerprint and the verdicts."""
        return {"status": str(self.status), "summary": self.summary(), "reasons": self.reasons(),
                "quarantine": str(self.quarantine), "fingerprint": self.fingerprint,
                "validation": {**self.validation.to_json(), "summary": self.validation.summary()},
                "governance": self.governance.to_json() if self.governance is not None else None}


@dataclass(frozen=True)
class TrainingOutcome:
    """The training pipeline's result: TRAINED with the registered `model`, or QUARANTINED / REFUSED with the
    `refusal`. `validation` is the batch's GX verdict, `governance` the checks' (None when validation failed)."""

    validation: ValidationReport
    governance: GovernanceResult | None = None
    model: TrainedModel | None = None
    refusal: Refusal | None = None

    @property
    def status(self) -> Status:
        """TRAINED, or the refusal's status."""
        return self.refusal.status if self.refusal is not None else Status.TRAINED

    def to_json(self) -> dict:
        """Status, the verdicts, and the model or the refusal."""
        return {"status": str(self.status),
                "validation": {**self.validation.to_json(), "summary": self.validation.summary()},
                "governance": self.governance.to_json() if self.governance is not None else None,
                "model": self.model.to_json() if self.model is not None else None,
                "refusal": self.refusal.to_json() if self.refusal is not None else None}


@dataclass(frozen=True)
class RetrainingOutcome:
    """A retraining: SKIPPED (with why), QUARANTINED / REFUSED (the training's refusal), or TRAINED with the gate's
    decision on the new version (`promoted`). `reason`: what started it, or why it was skipped."""

    status: Status
    reason: str = ""
    training: TrainingOutcome | None = None
    gate: GateDecision | None = None

    @classmethod
    def skipped(cls, reason: str) -> RetrainingOutcome:
        """A retraining that had nothing to do."""
        return cls(Status.SKIPPED, reason)

    @property
    def model(self) -> TrainedModel | None:
        """The version trained, if any."""
        return self.training.model if self.training is not None else None

    @property
    def refusal(self) -> Refusal | None:
        """Why the batch was kept out of training, if it was."""
        return self.training.refusal if self.training is not None else None

    @property
    def promoted(self) -> bool:
        """The new version became champion."""
        return self.gate is not None and self.gate.promoted

    def to_json(self) -> dict:
        """Status, reason, the model and the gate's decision, or the refusal."""
        return {"status": str(self.status), "reason": self.reason, "promoted": self.promoted,
                "model": self.model.to_json() if self.model is not None else None,
                "gate": self.gate.to_json() if self.gate is not None else None,
                "refusal": self.refusal.to_json() if self.refusal is not None else None}


@dataclass(frozen=True)
class MonitoringOutcome:
    """One checked window of logged traffic: drift and performance against the `champion`'s reference, and what the
    retraining policy made of it (`decision.state` goes to the next window)."""

    label: str
    champion: str
    drift: DriftResult
    decision: Decision
    performance: dict[str, float] = field(default_factory=dict)  # the live model's metrics on the labelled rows

    @property
    def rows(self) -> int:
        """Rows in the window."""
        return self.drift.rows

    @property
    def policy(self) -> dict:
        """The policy's state after this window (JSON), for the next check."""
        return self.decision.state.to_json()

    def to_json(self) -> dict:
        """The window's figures, the decision and the policy state."""
        return {"label": self.label, "rows": self.rows, "champion": self.champion, "drift": self.drift.to_json(),
                "performance": self.performance, "decision": self.decision.to_json(), "policy": self.policy}


@dataclass(frozen=True)
class MonitorRun:
    """A run of the deployed monitor: each complete window it checked, and the newer rows still waiting."""

    windows: tuple[MonitoringOutcome, ...] = ()
    pending_rows: int = 0

    @property
    def status(self) -> Status:
        """CHECKED when at least one window was checked, else SKIPPED."""
        return Status.CHECKED if self.windows else Status.SKIPPED

    def to_json(self) -> dict:
        """Status, each window's label and decision, the waiting rows."""
        return {"status": str(self.status), "pending_rows": self.pending_rows,
                "checked": [{"window": w.label, "decision": w.decision.to_json()} for w in self.windows]}
