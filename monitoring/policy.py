"""The retraining policy: retrain when the model got worse, not whenever a distribution moved.

- drift and a performance drop (actual, or estimated before labels arrive) → retrain;
- a performance drop without drift (concept drift: only labels show it) → retrain;
- drift without a drop (e.g. in a feature the model ignores) → reported, no retrain
  (unless monitoring.retrain_on_drift);
- a drop counts when the policy metric is worse than the baseline by more than
  monitoring.performance_margin *and* by more than chance at monitoring.performance_false_alarm_rate
  (standard errors of both figures), so that small windows do not retrain on noise;
- after a retrain, monitoring.cooldown_windows windows pass before the next one (one incident, one
  retrain: the new model needs labelled windows before it can be judged).

`decide` is pure: the caller carries the returned state to the next window.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from statistics import NormalDist

from driftloop.config import Config
from driftloop.monitoring.drift import DriftResult
from driftloop.monitoring.performance import Performance, worse_by


@dataclass(frozen=True)
class PolicyState:
    """What the policy remembers between windows."""

    windows: int = 0  # windows decided so far; the next window's index
    last_retrain: int | None = None  # index of the window that last triggered a retrain
    # The champion's actual performance to compare with (e.g. its holdout metrics); None: the reference's.
    baseline: dict[str, float] | None = None

    def to_json(self) -> dict:
        """Plain JSON, to keep between flow runs."""
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict) -> PolicyState:
        """The state saved by to_json."""
        return cls(**raw)


@dataclass(frozen=True)
class Judgement:
    """The policy metric of one window against its baseline."""

    source: str  # "actual" (labelled rows) or "estimated" (CBPE)
    metric: str
    value: float
    baseline: float
    drop: float  # how much worse than the baseline (negative: better)
    error: float  # standard error of the drop
    degraded: bool  # worse by more than the margin and beyond chance

    def describe(self) -> str:
        """One phrase for the reason."""
        direction = "down" if self.value < self.baseline else "up"  # of the value: for RMSE, down is better
        verdict = "a drop" if self.degraded else "no significant drop"
        return (f"{self.source} {self.metric} {self.value:.3f} vs {self.baseline:.3f} "
                f"({direction} {abs(self.drop):.3f} ± {self.error:.3f}: {verdict})")


@dataclass(frozen=True)
class Decision:
    """What to do after one window, why, and the state for the next window."""

    retrain: bool
    reason: str
    window: int
    drift: bool
    performance: Judgement | None
    state: PolicyState

    def to_json(self) -> dict:
        """Plain JSON for logs and artifacts."""
        return {"retrain": self.retrain, "reason": self.reason, "window": self.window, "drift": self.drift,
                "performance": asdict(self.performance) if self.performance else None}


def decide(state: PolicyState, result: DriftResult, config: Config) -> Decision:
    """Retrain or not after the window checked in `result`; the returned state goes to the next call."""
    index = state.windows
    judged = judge_performance(result.performance, config, state.baseline)
    degraded = judged is not None and judged.degraded
    drifted = drifted_names(result)
    where = f"drift in {', '.join(drifted)}" if drifted else "no drift"
    performance = judged.describe() if judged else "performance unknown (no labels, no estimate)"
    if degraded:
        wanted, reason = True, f"{where}; {performance}"
    elif result.drift_detected and config.monitoring.retrain_on_drift:
        wanted, reason = True, f"{where} (monitoring.retrain_on_drift); {performance}"
    elif result.drift_detected:
        wanted, reason = False, f"{where}; {performance}: reported, not retraining"
    else:
        wanted, reason = False, f"{where}; {performance}"
    cooldown = config.monitoring.cooldown_windows
    if wanted and state.last_retrain is not None and index - state.last_retrain <= cooldown:
        wanted = False
        reason = (f"cooldown: retrained at window {state.last_retrain}, {index - state.last_retrain} of "
                  f"{cooldown} windows ago; {reason}")
    after = replace(state, windows=index + 1, last_retrain=index if wanted else state.last_retrain)
    return Decision(wanted, reason, index, result.drift_detected, judged, after)


def new_champion(state: PolicyState, baseline: dict[str, float] | None = None) -> PolicyState:
    """The state once a new champion serves: its baseline (None: its reference's); the cooldown runs on."""
    return replace(state, baseline=dict(baseline) if baseline else None)


def judge_performance(performance: Performance | None, config: Config,
                      baseline: dict[str, float] | None = None) -> Judgement | None:
    """The window's policy metric against its baseline: actual when enough labels arrived, else estimated.

    Like is compared with like: actual with the baseline (or the reference's actual figure), the CBPE
    estimate with CBPE on the reference.
    """
    if performance is None:
        return None
    metric, settings = performance.metric, config.monitoring
    actual, reference = performance.actual, performance.reference
    if actual is not None and actual.rows >= settings.min_labelled_rows and metric in actual.values:
        if baseline and metric in baseline:
            base, base_error = baseline[metric], 0.0
        elif reference is not None and metric in reference.values:
            base, base_error = reference.values[metric], reference.errors.get(metric, 0.0)
        else:
            return None
        return _judge("actual", metric, actual.values[metric], actual.errors.get(metric, math.nan), base,
                      base_error, config)
    estimated, estimated_base = performance.estimated, performance.reference_estimated
    if estimated is None or estimated_base is None or metric not in estimated.values \
            or metric not in estimated_base.values:
        return None
    return _judge("estimated", metric, estimated.values[metric], estimated.errors.get(metric, math.nan),
                  estimated_base.values[metric], estimated_base.errors.get(metric, 0.0), config)


def drifted_names(result: DriftResult) -> list[str]:
    """The drifted feature columns, then the model output when it drifted."""
    names = [name for name, column in result.columns.items() if column.drifted]
    if result.prediction is not None and result.prediction.drifted:
        names.append("the model output")
    return names


def _judge(source: str, metric: str, value: float, error: float, base: float, base_error: float,
           config: Config) -> Judgement:
    """Worse by more than the margin and by more than z standard errors of the difference."""
    settings = config.monitoring
    drop = worse_by(metric, value, base)
    spread = math.sqrt(error ** 2 + base_error ** 2)
    z = NormalDist().inv_cdf(1 - settings.performance_false_alarm_rate)
    degraded = bool(drop > settings.performance_margin and math.isfinite(spread) and drop > z * spread)
    return Judgement(source, metric, value, base, drop, spread, degraded)
