"""The retraining flow: labelled traffic, chosen by the retraining data policy → training pipeline →
champion/challenger gate."""

from __future__ import annotations

import numpy as np
import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from driftloop.config import Config
from driftloop.data import read_table
from driftloop.data_checks.provenance import prediction_log_source
from driftloop.errors import DataError
from driftloop.flows.monitoring import log_to_contract
from driftloop.flows.outcomes import RetrainingOutcome, Status
from driftloop.flows.training import training_pipeline
from driftloop.registry.gate import GateDecision, apply_gate
from driftloop.registry.store import CHAMPION, alias_version
from driftloop.serving.prediction_log import log_name, read_window
from driftloop.state import state_path
from driftloop.training.data_policy import describe_policy, select_training_rows


def labelled_rows(config: Config, first_id: int, last_id: int):  # noqa: ANN201 - a DataFrame
    """Logged predictions in the id range whose labels have arrived, in the config's columns (read in chunks of
    serving.log_read_chunk_rows)."""
    logged = read_window(config, first_id, last_id, labelled_only=True)
    if logged.empty:
        raise DataError(f"no labelled predictions between ids {first_id} and {last_id}")
    return log_to_contract(config, logged)


def retraining_time(config: Config, candidates: pd.DataFrame, gate: pd.DataFrame) -> pd.Timestamp | None:
    """When the retraining happens, as the data policy sees it (ages, max_age): the gate window's first event, or
    just after the last candidate row when that is later (windows cut by row count may share a timestamp across
    the cut: every candidate the caller chose stays a candidate); None without data.timestamp."""
    column = config.data.timestamp
    if not column or column not in gate.columns or gate.empty:
        return None
    last = pd.to_datetime(candidates[column], utc=True).max() + pd.Timedelta(1, "ns")
    return max(pd.to_datetime(gate[column], utc=True).min(), last)


def with_history(config: Config, frame: pd.DataFrame, history_path: str | None) -> pd.DataFrame:
    """`frame` after the labelled rows of `history_path` (earlier data, e.g. the first model's training file), in the
    columns both have, never the PII columns (the log holds them dropped or hashed, the file as they are)."""
    if not history_path:
        return frame
    history = read_table(history_path)
    columns = [c for c in frame.columns if c in history.columns and c not in config.data.pii]
    return pd.concat([history[columns], frame[columns]], ignore_index=True)


@task(cache_policy=NO_CACHE)
def choose_rows(config: Config, candidates: pd.DataFrame, gate: pd.DataFrame) -> tuple[pd.DataFrame,
                                                                                     np.ndarray | None]:
    """The retraining data policy (config `retraining`) applied to every candidate row."""
    rows, weights = select_training_rows(candidates, config.retraining, retraining_time(config, candidates, gate),
                                         config.data.timestamp)
    get_run_logger().info("retraining data (%s): %d of %d labelled rows%s", describe_policy(config.retraining),
                          len(rows), len(candidates), ", recency-weighted" if weights is not None else "")
    if rows.empty:
        raise DataError(f"the retraining data policy ({describe_policy(config.retraining)}) keeps none of the "
                        f"{len(candidates)} labelled rows: widen retraining.max_age or retraining.max_rows")
    return rows, weights


@task(cache_policy=NO_CACHE)
def gate_version(config: Config, version: str, first_id: int, last_id: int) -> GateDecision:
    """Champion vs challenger on the most recent labelled window; moves the aliases."""
    decision = apply_gate(config, version, labelled_rows(config, first_id, last_id))
    get_run_logger().info("gate: version %s %s: %s", version, "PROMOTED" if decision.promoted else "rejected",
                          decision.reason)
    return decision


@flow(name="retraining", validate_parameters=False)
def retraining_flow(config: Config, train_first_id: int, train_last_id: int, gate_first_id: int,
                    gate_last_id: int, progress: bool = True, history_path: str | None = None) -> RetrainingOutcome:
    """Train on labelled predictions `train_*` (after the labelled rows of `history_path`, when given), as the
    retraining data policy (config `retraining`) chooses among them; gate on the later labelled window `gate_*`.

    The gate window is the governance checks' evaluation data too (no overlap with the batch, no training row from
    its period); a batch that fails validation or that they stop is quarantined, and the outcome's status
    (QUARANTINED or REFUSED) and `refusal` say why. A trained version's `gate` decision says whether it was
    promoted."""
    gate = labelled_rows(config, gate_first_id, gate_last_id)
    gate_path = state_path(config, "data", f"gate-{gate_first_id}-{gate_last_id}.parquet")
    gate.to_parquet(gate_path, index=False)
    candidates = with_history(config, labelled_rows(config, train_first_id, train_last_id), history_path)
    frame, weights = choose_rows(config, candidates, gate)
    path = state_path(config, "data", f"retrain-{train_first_id}-{train_last_id}.parquet")
    frame.to_parquet(path, index=False)
    weights_path = None
    if weights is not None:
        weights_path = path.with_suffix(".weights.npy")
        np.save(weights_path, weights)
    champion = alias_version(config, CHAMPION)
    source = prediction_log_source(train_first_id, train_last_id, log_name(config))
    training = training_pipeline(config, str(path), reference_version=champion, progress=progress, source=source,
                                 evaluation_path=str(gate_path),
                                 weights_path=str(weights_path) if weights_path else None,
                                 warm_start=config.retraining.warm_start)
    if training.model is None:
        return RetrainingOutcome(training.status, training=training)
    decision = gate_version(config, training.model.model_version, gate_first_id, gate_last_id)
    return RetrainingOutcome(Status.TRAINED, training=training, gate=decision)
