"""Warm start (retraining.warm_start): a retraining continues from the champion's weights instead of from scratch.

The weights only mean the same thing with the same inputs, so a warm start keeps the champion's feature spec (its
scaling and category vocabulary) too. It is refused, and training starts from scratch, when the features, the task,
the scaling or the network's shapes differ, or when the new rows hold categories the champion never saw (each would
otherwise be scored as "unknown"); the reason is returned for the logs and the run's params.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from driftloop.config import ModelConfig
from driftloop.training.features import FeatureSpec
from driftloop.training.model import build_model


@dataclass(frozen=True)
class WarmStart:
    """A model to continue from: its spec, its weights and where it came from ("champion v3")."""

    spec: FeatureSpec
    state: dict[str, torch.Tensor]
    source: str


@dataclass(frozen=True)
class StartPoint:
    """What a run starts from: the spec it encodes with, the initial weights (None: from scratch) and why."""

    spec: FeatureSpec
    state: dict[str, torch.Tensor] | None
    note: str

    @property
    def warm(self) -> bool:
        """Whether the run continues from earlier weights."""
        return self.state is not None


def unseen_categories(new: FeatureSpec, old: FeatureSpec) -> dict[str, list[str]]:
    """Per categorical column, the categories of `new` that `old` never saw."""
    found = {c: sorted(set(new.vocab[c]) - set(old.vocab.get(c, []))) for c in new.categorical}
    return {c: values for c, values in found.items() if values}


def mismatch(new: FeatureSpec, old: FeatureSpec, model: ModelConfig, state: dict[str, torch.Tensor]) -> str | None:
    """Why `old`'s weights cannot start a model of `new`'s data, or None when they can."""
    if (new.task, new.target) != (old.task, old.target):
        return f"the champion predicts {old.target} ({old.task}), this run {new.target} ({new.task})"
    if (new.numerical, new.categorical) != (old.numerical, old.categorical):
        return "the champion was trained on other feature columns"
    if new.scaling != old.scaling:
        return f"the champion scales numbers with {old.scaling}, model.scaling is now {new.scaling}"
    unseen = unseen_categories(new, old)
    if unseen:
        column, values = next(iter(unseen.items()))
        more = f" (and {len(unseen) - 1} more column(s))" if len(unseen) > 1 else ""
        return f"column {column} has {len(values)} categor(ies) the champion never saw, e.g. {values[0]!r}{more}"
    with torch.random.fork_rng(devices=[]):  # build_model seeds the global RNG
        expected = {k: tuple(v.shape) for k, v in build_model(old, model, seed=0).state_dict().items()}
    if expected != {k: tuple(v.shape) for k, v in state.items()}:
        return "the champion's network has other shapes than the model settings now give (model.*)"
    return None


def start_point(new: FeatureSpec, warm: WarmStart | None, model: ModelConfig) -> StartPoint:
    """Continue from `warm` when it fits the new rows (with its spec), else start from scratch (with `new`)."""
    if warm is None:
        return StartPoint(new, None, "scratch")
    reason = mismatch(new, warm.spec, model, warm.state)
    if reason is not None:
        return StartPoint(new, None, f"scratch: no warm start from {warm.source}: {reason}")
    return StartPoint(warm.spec, warm.state, f"warm start from {warm.source}")
