"""int8 dynamic quantization of the served model, kept only if it scores like the float model.

The evidence, in order of preference:

1. labelled rows among the most recent logged ones (at least MIN_LABELLED_ROWS, and both classes for
   AUC): the gate metric (Config.gate_metric(): auc / rmse by default) of the quantized model must be
   within serving.quantize_tolerance of the float model's, in either direction (a change either way means
   the model no longer behaves like the version the gate approved);
2. otherwise, predictions on recent logged rows, or on rows drawn from the model's own feature spec when
   the log is empty: the largest |quantized - float| must be within the tolerance (probability units for
   classification, target units for regression).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from driftloop.config import Config
from driftloop.scoring import score
from driftloop.serving.prediction_log import LogBase
from driftloop.training.artifacts import LoadedModel, quantize

# Recent log rows searched for labels, and rows compared when there are no labels.
EVIDENCE_ROWS = 5000
COMPARE_ROWS = 1000
MIN_LABELLED_ROWS = 200
SYNTHETIC_ROWS = 512

logger = logging.getLogger("driftloop.serving")


@dataclass(frozen=True)
class QuantizeDecision:
    """The model to serve and why: the quantized one if it passed, else the float one."""

    model: LoadedModel
    accepted: bool
    reason: str


def synthetic_rows(model: LoadedModel, n: int = SYNTHETIC_ROWS, seed: int = 0) -> list[dict[str, Any]]:
    """Rows drawn from the spec: numbers ~ N(mean, std) of training, categories uniform over the vocabulary."""
    rng = np.random.default_rng(seed)
    spec = model.spec
    columns: dict[str, list[Any]] = {}
    for column, mean, std in zip(spec.numerical, spec.means, spec.stds, strict=True):
        columns[column] = rng.normal(mean, std, n).tolist()
    for column in spec.categorical:
        vocab = spec.vocab.get(column) or [None]
        columns[column] = [vocab[i] for i in rng.integers(0, len(vocab), n)]
    return [{c: values[i] for c, values in columns.items()} for i in range(n)]


def frame_rows(frame: pd.DataFrame, model: LoadedModel) -> list[dict[str, Any]]:
    """Logged rows as the JSON-like dicts predict_rows takes; columns the log lacks are missing (null)."""
    needed = model.spec.numerical + model.spec.categorical
    present = [c for c in needed if c in frame.columns]
    rows = frame[present].astype(object).where(frame[present].notna(), None).to_dict("records")
    return [{c: row.get(c) for c in needed} for row in rows]


def recent_rows(log: LogBase) -> pd.DataFrame:
    """The last EVIDENCE_ROWS logged rows (empty when the log is)."""
    last = log.last_id()
    return log.read(first_id=max(1, last - EVIDENCE_ROWS + 1)) if last else pd.DataFrame()


def decide(float_model: LoadedModel, quantized: LoadedModel, config: Config, recent: pd.DataFrame) -> tuple[bool, str]:
    """(accepted, reason) for serving `quantized` instead of `float_model`; see the module docstring."""
    tolerance = config.serving.quantize_tolerance
    metric = config.gate_metric()
    labelled = recent[recent["label"].notna()] if "label" in recent.columns else recent.iloc[0:0]
    if len(labelled) >= MIN_LABELLED_ROWS:
        rows, truth = frame_rows(labelled, float_model), labelled["label"].to_numpy()
        before = score(truth, float_model.predict_rows(rows), config.data.task).get(metric)
        after = score(truth, quantized.predict_rows(rows), config.data.task).get(metric)
        if before is not None and after is not None:
            delta = abs(after - before)
            verdict = "within" if delta <= tolerance else "beyond"
            return delta <= tolerance, (f"{metric} {after:.5f} (int8) vs {before:.5f} (float) on {len(rows)} labelled "
                                        f"logged rows: |Δ| {delta:.5f} {verdict} serving.quantize_tolerance "
                                        f"{tolerance}")
    if len(recent):
        rows, source = frame_rows(recent.tail(COMPARE_ROWS), float_model), "recent logged rows"
    else:
        rows, source = synthetic_rows(float_model), "rows drawn from the model's feature spec"
    delta = float(np.max(np.abs(quantized.predict_rows(rows) - float_model.predict_rows(rows))))
    verdict = "within" if delta <= tolerance else "beyond"
    return delta <= tolerance, (f"max |Δ prediction| {delta:.5f} on {len(rows)} {source} (no labelled evidence "
                                f"for {metric}) {verdict} serving.quantize_tolerance {tolerance}")


def quantize_if_close(model: LoadedModel, config: Config, log: LogBase) -> QuantizeDecision:
    """The int8 model if it passes `decide`, else `model`; never raises (float is always a safe answer)."""
    try:
        candidate = quantize(model)
        accepted, reason = decide(model, candidate, config, recent_rows(log))
    except Exception as error:  # quantization is an optimisation: any failure serves the float model
        logger.exception("int8 quantization of version %s failed; serving the float model", model.version)
        return QuantizeDecision(model, False, f"quantization failed: {error}")
    if not accepted:
        logger.warning("version %s: int8 model refused, serving float: %s", model.version, reason)
        return QuantizeDecision(model, False, reason)
    logger.info("version %s: serving the int8 model: %s", model.version, reason)
    return QuantizeDecision(candidate, True, reason)
