"""What a governance check found about a batch: the check's name, whether it blocks training, and why."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

# Checks a person may override with `driftloop approve`: they judge whether a batch is *plausible* (it drifted,
# its labels moved, its classes are lopsided, it does not look like the traffic), and a person can know that
# it is (a new route, a real change in the world). Leakage and validation failures are not among them: a
# leaked feature, an evaluation row inside the training data or a missing column make the model or its
# figures wrong whatever anyone knows, so the data has to be fixed instead.
OVERRIDABLE_CHECKS = frozenset({"balance.classes", "representativity", "guard.drift", "guard.label_rate",
                                "guard.champion_score"})


@dataclass(frozen=True)
class Finding:
    """One check's verdict on a batch; `figures` are the measured values behind `reason`."""

    check: str
    blocking: bool
    reason: str
    figures: dict[str, float] = field(default_factory=dict)
    approved_by: str | None = None  # who approved the batch despite this finding (it then no longer blocks)

    @property
    def overridable(self) -> bool:
        """Whether `driftloop approve` may let a batch with this finding through."""
        return self.check in OVERRIDABLE_CHECKS

    def approved(self, who: str) -> Finding:
        """This finding, overridden by `who`'s approval: reported, no longer blocking."""
        return replace(self, blocking=False, approved_by=who)

    def line(self) -> str:
        """One readable line: the check, its verdict and the reason with the figures."""
        verdict = "BLOCKS" if self.blocking else "approved" if self.approved_by else "warning"
        suffix = f" (approved by {self.approved_by})" if self.approved_by else ""
        return f"{self.check} [{verdict}]: {self.reason}{suffix}"

    def to_json(self) -> dict:
        """The finding in result dicts and in a quarantine entry's report.json."""
        return {"check": self.check, "blocking": self.blocking, "overridable": self.overridable,
                "reason": self.reason, "figures": self.figures, "approved_by": self.approved_by}

    @classmethod
    def from_json(cls, raw: dict) -> Finding:
        """A finding read back from report.json."""
        return cls(check=str(raw["check"]), blocking=bool(raw["blocking"]), reason=str(raw["reason"]),
                   figures=dict(raw.get("figures") or {}), approved_by=raw.get("approved_by"))


def blocking(findings: list[Finding]) -> list[Finding]:
    """The findings that stop the batch."""
    return [f for f in findings if f.blocking]
