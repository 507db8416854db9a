"""The champion/challenger gate: a new version is promoted only if it beats the champion on recent data."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import pandas as pd

from driftloop.config import Config
from driftloop.scoring import better, score
from registry.store import CHALLENGER, CHAMPION, alias_version, load_version, set_alias, tag_version


@dataclass(frozen=True)
class GateDecision:
    """Why a version was or was not promoted, with the figures that decided it."""

    challenger_version: str
    champion_version: str | None
    metric: str
    challenger_score: float | None
    champion_score: float | None
    margin: float
    window_rows: int
    promoted: bool
    reason: str

    def to_json(self) -> dict:
        """Plain dict for logs and --json output."""
        return asdict(self)


def _metric_on(config: Config, version: str, window: pd.DataFrame, metric: str) -> float | None:
    """One version's `metric` on labelled rows."""
    model = load_version(config, version)
    figures = score(window[config.data.target].to_numpy(), model.predict(window), config.data.task)
    return figures.get(metric)


def decide(config: Config, challenger: str, champion: str | None, window: pd.DataFrame) -> GateDecision:
    """Compare challenger and champion on the labelled `window`; no side effects."""
    metric, margin = config.gate_metric(), config.registry.gate_margin
    if champion is None:
        return GateDecision(challenger, None, metric, None, None, margin, len(window), True, "no champion yet")
    new = _metric_on(config, challenger, window, metric)
    old = _metric_on(config, champion, window, metric)
    if new is None or old is None:
        return GateDecision(challenger, champion, metric, new, old, margin, len(window), False,
                            f"{metric} undefined on the gate window (one class only?)")
    won = better(metric, new, old, margin)
    verdict = "beats" if won else "does not beat"
    reason = f"{metric} {new:.4f} {verdict} champion's {old:.4f} (margin {margin}) on {len(window)} rows"
    return GateDecision(challenger, champion, metric, new, old, margin, len(window), won, reason)


def apply_gate(config: Config, challenger: str, window: pd.DataFrame) -> GateDecision:
    """Decide, move the alias (champion if promoted, else challenger) and record the decision on the version."""
    decision = decide(config, challenger, alias_version(config, CHAMPION), window)
    set_alias(config, CHAMPION if decision.promoted else CHALLENGER, challenger)
    tags = {"gate.decision": "promoted" if decision.promoted else "rejected", "gate.reason": decision.reason,
            "gate.metric": decision.metric, "gate.window_rows": decision.window_rows}
    if decision.challenger_score is not None:
        tags["gate.challenger_score"] = f"{decision.challenger_score:.6f}"
    if decision.champion_score is not None:
        tags["gate.champion_score"] = f"{decision.champion_score:.6f}"
        tags["gate.champion_version"] = decision.champion_version
    tag_version(config, challenger, tags)
    return decision
