"""The champion/challenger gate: a new version is promoted only if it beats the champion on every body of evidence.

The evidence (registry settings in core/config.py):

- the most recent labelled window: the challenger must beat the champion by more than `gate_margin`;
- with `gate_on_holdout`, the challenger's holdout, the time-later `training.holdout_fraction` of its training rows
  as stored with the version (registry/store.py `load_reference`): the same margin;
- each value of each `gate_slices` column with at least `min_slice_rows` rows in the recent window: the challenger
  may not be worse than the champion by more than `slice_tolerance`;
- live shadow traffic, when the challenger was scored in shadow mode (`serving.shadow`) on at least
  `min_shadow_rows` labelled requests the champion answered: the outputs both logged, not a re-scoring, and
  the same margin. A new version has none; `driftloop gate` judges the standing challenger again once it has;
- with `max_baseline_shortfall` set, the challenger's own baseline (HistGradientBoosting fitted on the same rows,
  scored on the same holdout at training time, training/baseline.py): the network may not trail it by more.

`judge` holds the rule on fixed figures; `evaluate` turns predictions into figures; `decide` loads the versions;
`apply_gate` moves the alias and records the decision in MLflow.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from driftloop.config import Config
from driftloop.errors import DataError
from driftloop.registry.store import (
    CHALLENGER,
    CHAMPION,
    TAG_LIMIT,
    alias_version,
    baseline_figures,
    load_reference,
    load_version,
    mlflow_client,
    now_iso,
    promote,
    set_alias,
    tag_version,
    version_tags,
)
from driftloop.scoring import HIGHER_IS_BETTER, score

# Predictions of one version on a table of rows (P(positive) for classification).
Scorer = Callable[[pd.DataFrame], np.ndarray]


@dataclass(frozen=True)
class Evidence:
    """Both versions' gate metric on one set of labelled rows: "recent", "holdout" or a slice "carrier=UA"."""

    name: str
    rows: int
    challenger: float | None
    champion: float | None

    def gain(self, metric: str) -> float | None:
        """How much better the challenger is (negative: worse), in the metric's units; None if undefined."""
        if self.challenger is None or self.champion is None:
            return None
        sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
        return sign * (self.challenger - self.champion)


@dataclass(frozen=True)
class BaselineCheck:
    """The challenger against its own baseline on its holdout (figures recorded at training time)."""

    model: str
    metric: str
    network: float
    baseline: float
    tolerance: float

    @property
    def shortfall(self) -> float:
        """How far the network trails: metric points (AUC, accuracy), or the error ratio minus 1 (RMSE, log loss)."""
        if HIGHER_IS_BETTER[self.metric]:
            return self.baseline - self.network
        return self.network / self.baseline - 1.0 if self.baseline > 0 else 0.0

    def fault(self) -> str | None:
        """Why the gate refuses the challenger, or None."""
        if self.shortfall <= self.tolerance:
            return None
        unit = "" if HIGHER_IS_BETTER[self.metric] else " (ratio)"
        return (f"trails its baseline {self.model} on its holdout ({self.metric} {self.network:.4f} vs "
                f"{self.baseline:.4f}, short by {self.shortfall:.3f}{unit} > registry.max_baseline_shortfall "
                f"{self.tolerance:g})")


def baseline_check(config: Config, tags: dict[str, str]) -> BaselineCheck | None:
    """The baseline comparison registry.max_baseline_shortfall asks for, from a version's tags; None when the key is
    null or the version recorded no baseline figures for the gate metric."""
    tolerance, metric = config.registry.max_baseline_shortfall, config.gate_metric()
    if tolerance is None:
        return None
    model, baseline, network = baseline_figures(tags)
    if model is None or metric not in baseline or metric not in network:
        return None
    return BaselineCheck(model, metric, network[metric], baseline[metric], tolerance)


@dataclass(frozen=True)
class Verdict:
    """The rule's answer on fixed figures."""

    promoted: bool
    reason: str
    failed_slices: tuple[Evidence, ...] = ()


@dataclass(frozen=True)
class GateDecision:
    """Why a version was or was not promoted, with the figures that decided it."""

    challenger_version: str
    champion_version: str | None
    metric: str
    challenger_score: float | None  # on the recent window
    champion_score: float | None
    margin: float
    window_rows: int
    promoted: bool
    reason: str
    holdout: Evidence | None = None
    holdout_source: str = "off"  # off, exact (every training row stored), sample (a uniform sample of them)
    slice_tolerance: float = 0.0
    slices_judged: int = 0
    failed_slices: tuple[Evidence, ...] = ()
    slices: tuple[Evidence, ...] = field(default=(), repr=False)  # every judged slice, for the JSON record
    decided_at: str = ""
    live: Evidence | None = None  # live shadow traffic, when there was enough of it
    baseline: BaselineCheck | None = None  # the challenger against its baseline (registry.max_baseline_shortfall)

    def to_json(self) -> dict:
        """Plain dict for logs and --json output."""
        return asdict(self)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def judge(metric: str, margin: float, tolerance: float, recent: Evidence, holdout: Evidence | None,
          slices: list[Evidence], live: Evidence | None = None, baseline: BaselineCheck | None = None) -> Verdict:
    """The gate rule on fixed figures: better by more than `margin` on recent rows, on the holdout and on live shadow
    rows (each when given), not worse by more than `tolerance` on any slice, and not trailing its `baseline` by more
    than its tolerance (when given). Slices passed here are already large enough to judge."""
    figures = f"{metric} {_fmt(recent.challenger)} vs champion {_fmt(recent.champion)} on {recent.rows:,} recent rows"
    for extra in (holdout, live):
        if extra is not None:
            figures += f", {_fmt(extra.challenger)} vs {_fmt(extra.champion)} on {extra.rows:,} {extra.name} rows"
    faults = []
    for evidence in (recent, holdout, live):
        if evidence is None:
            continue
        gain = evidence.gain(metric)
        if gain is None:
            faults.append(f"{metric} undefined on the {evidence.name} rows (one class only?)")
        elif gain <= margin:
            by = f" by more than {margin:g}" if margin else ""
            faults.append(f"not better{by} on {evidence.name} rows")
    failed = tuple(s for s in slices if (gain := s.gain(metric)) is not None and -gain > tolerance)
    if failed:
        worst = min(failed, key=lambda s: s.gain(metric) or 0.0)
        more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        faults.append(f"slice {worst.name} worse by {-(worst.gain(metric) or 0.0):.3f} > {tolerance:g}{more}")
    shortfall = baseline.fault() if baseline is not None else None
    if shortfall is not None:
        faults.append(shortfall)
    if faults:
        return Verdict(False, f"{figures}; {'; '.join(faults)} → kept as challenger", failed)
    return Verdict(True, f"{figures} → promoted", failed)


def compare(name: str, truth: np.ndarray, new: np.ndarray, old: np.ndarray, metric: str, task: str) -> Evidence:
    """Both versions' `metric` on the same labelled rows."""
    return Evidence(name, len(truth), score(truth, new, task).get(metric), score(truth, old, task).get(metric))


def slice_evidence(config: Config, window: pd.DataFrame, new: np.ndarray, old: np.ndarray) -> list[Evidence]:
    """Both versions on each value of each `registry.gate_slices` column with at least min_slice_rows rows."""
    registry, metric, task = config.registry, config.gate_metric(), config.data.task
    missing = [c for c in registry.gate_slices if c not in window.columns]
    if missing:
        raise DataError(f"registry.gate_slices: column(s) {', '.join(missing)} not in the gate window; "
                        f"list columns of the data contract")
    truth = window[config.data.target].to_numpy()
    found = []
    for column in registry.gate_slices:
        values = window[column].astype("string").fillna("<missing>").to_numpy()
        for value in sorted(set(values)):
            mask = values == value
            if mask.sum() >= registry.min_slice_rows:
                found.append(compare(f"{column}={value}", truth[mask], new[mask], old[mask], metric, task))
    return found


def shadow_evidence(config: Config, logged: pd.DataFrame, challenger: str, champion: str) -> Evidence | None:
    """Both versions' metric on labelled logged requests the champion answered and the challenger scored in shadow
    mode (prediction log columns); None with fewer than registry.min_shadow_rows such rows."""
    if logged.empty or "shadow_version" not in logged.columns:
        return None
    mask = ((logged["shadow_version"] == challenger) & (logged["model_version"] == champion)
            & logged["label"].notna() & logged["shadow_prediction"].notna())
    if int(mask.sum()) < config.registry.min_shadow_rows:
        return None
    rows = logged.loc[mask]
    return compare("live shadow", rows["label"].to_numpy(), rows["shadow_prediction"].to_numpy(dtype=float),
                   rows["prediction"].to_numpy(dtype=float), config.gate_metric(), config.data.task)


def evaluate(config: Config, challenger: str, champion: str, window: pd.DataFrame, holdout: pd.DataFrame | None,
             new: Scorer, old: Scorer, holdout_source: str = "exact", live: Evidence | None = None,
             baseline: BaselineCheck | None = None) -> GateDecision:
    """The decision from two versions' predictions on the recent `window` and, when given, the `holdout`, plus
    the `live` shadow evidence when there is some and the challenger's `baseline` check when asked for."""
    metric, registry, target, task = config.gate_metric(), config.registry, config.data.target, config.data.task
    new_recent, old_recent = np.asarray(new(window), dtype=float), np.asarray(old(window), dtype=float)
    recent = compare("recent", window[target].to_numpy(), new_recent, old_recent, metric, task)
    held = None
    if holdout is not None:
        held = compare("holdout", holdout[target].to_numpy(), np.asarray(new(holdout), dtype=float),
                       np.asarray(old(holdout), dtype=float), metric, task)
    slices = slice_evidence(config, window, new_recent, old_recent)
    verdict = judge(metric, registry.gate_margin, registry.slice_tolerance, recent, held, slices, live, baseline)
    return GateDecision(challenger, champion, metric, recent.challenger, recent.champion, registry.gate_margin,
                        recent.rows, verdict.promoted, verdict.reason, held, holdout_source if held else "off",
                        registry.slice_tolerance, len(slices), verdict.failed_slices, tuple(slices), now_iso(), live,
                        baseline)


def challenger_holdout(config: Config, version: str) -> tuple[pd.DataFrame, str]:
    """The version's holdout rows and how exact they are ("exact" or "sample").

    The registry stores a version's training rows as its reference, in time order, at most
    monitoring.reference_max_rows of them. Training held out the last `holdout_rows` of `train_rows + holdout_rows`
    (run params). All rows stored: exactly those. A sample: its time-later share of the same fraction, i.e. a
    uniform sample of (about) the holdout rows.
    """
    reference = load_reference(config, version)
    client = mlflow_client(config)
    params = client.get_run(client.get_model_version(config.model.name, version).run_id).data.params
    try:
        total = int(params["train_rows"]) + int(params["holdout_rows"])
        fraction = int(params["holdout_rows"]) / total
    except (KeyError, ValueError, ZeroDivisionError):
        total, fraction = -1, config.training.holdout_fraction
    source = "exact" if len(reference) == total else "sample"
    rows = max(1, int(round(len(reference) * fraction)))
    return reference.iloc[len(reference) - rows:].reset_index(drop=True), source


def decide(config: Config, challenger: str, champion: str | None, window: pd.DataFrame,
           holdout: pd.DataFrame | None = None, logged: pd.DataFrame | None = None) -> GateDecision:
    """Compare challenger and champion; no side effects. Without `holdout`, registry.gate_on_holdout loads the
    challenger's own (see challenger_holdout). `logged`: prediction log rows, searched for live shadow evidence."""
    metric, margin = config.gate_metric(), config.registry.gate_margin
    if champion is None:
        return GateDecision(challenger, None, metric, None, None, margin, len(window), True, "no champion yet",
                            decided_at=now_iso())
    source = "exact" if holdout is not None else "off"
    if holdout is None and config.registry.gate_on_holdout:
        holdout, source = challenger_holdout(config, challenger)
    new, old = load_version(config, challenger), load_version(config, champion)
    live = shadow_evidence(config, logged, challenger, champion) if logged is not None else None
    baseline = baseline_check(config, version_tags(config, challenger))
    return evaluate(config, challenger, champion, window, holdout if config.registry.gate_on_holdout else None,
                    new.predict, old.predict, source, live, baseline)


def _details(decision: GateDecision) -> str:
    """The decision as compact JSON under MLflow's tag limit: failed slices are cut first, then listed by count."""
    record = decision.to_json()
    record.pop("slices")
    record.pop("reason")  # in gate.reason
    failed = record["failed_slices"] = list(record["failed_slices"])
    text = json.dumps(record, separators=(",", ":"))
    while len(text) > TAG_LIMIT and failed:
        failed.pop()
        record["failed_slices_cut"] = len(decision.failed_slices) - len(failed)
        text = json.dumps(record, separators=(",", ":"))
    return text


def decision_tags(decision: GateDecision) -> dict[str, str]:
    """The model-version tags of a decision: gate.* figures, one line of reason and the full JSON (gate.details)."""
    tags = {"gate.decision": "promoted" if decision.promoted else "rejected",
            "gate.reason": decision.reason[:TAG_LIMIT], "gate.metric": decision.metric,
            "gate.window_rows": str(decision.window_rows), "gate.margin": f"{decision.margin:g}",
            "gate.decided_at": decision.decided_at,
            "gate.details": _details(decision)}
    if decision.challenger_score is not None:
        tags["gate.challenger_score"] = f"{decision.challenger_score:.6f}"
    if decision.champion_score is not None:
        tags["gate.champion_score"] = f"{decision.champion_score:.6f}"
    if decision.champion_version is not None:
        tags["gate.champion_version"] = decision.champion_version
    if decision.holdout is not None:
        tags["gate.holdout_rows"] = str(decision.holdout.rows)
        tags["gate.holdout_source"] = decision.holdout_source
        for role in ("challenger", "champion"):
            value = getattr(decision.holdout, role)
            if value is not None:
                tags[f"gate.holdout_{role}_score"] = f"{value:.6f}"
    if decision.live is not None:
        tags["gate.live_rows"] = str(decision.live.rows)
        for role in ("challenger", "champion"):
            value = getattr(decision.live, role)
            if value is not None:
                tags[f"gate.live_{role}_score"] = f"{value:.6f}"
    if decision.baseline is not None:
        tags["gate.baseline_shortfall"] = f"{decision.baseline.shortfall:.6f}"
    if decision.failed_slices:
        tags["gate.failed_slices"] = ",".join(s.name for s in decision.failed_slices)[:TAG_LIMIT]
    return tags


def _log_record(config: Config, version: str, decision: GateDecision) -> None:
    """The full decision, every judged slice included, as gate/decision.json in the version's training run."""
    client = mlflow_client(config)
    run_id = client.get_model_version(config.model.name, version).run_id
    if run_id:
        client.log_dict(run_id, decision.to_json(), "gate/decision.json")


def apply_gate(config: Config, challenger: str, window: pd.DataFrame, holdout: pd.DataFrame | None = None,
               logged: pd.DataFrame | None = None) -> GateDecision:
    """Decide, record the decision on the version, then move the alias (champion if promoted, else challenger):
    an alias never names a version whose decision is not written yet."""
    decision = decide(config, challenger, alias_version(config, CHAMPION), window, holdout, logged)
    tags = decision_tags(decision)
    if decision.promoted:
        promote(config, challenger, f"gate: {decision.reason}", decision=tags)
    else:
        tag_version(config, challenger, tags)
        set_alias(config, CHALLENGER, challenger)
    _log_record(config, challenger, decision)
    return decision
