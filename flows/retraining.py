"""The retraining flow: recent labelled traffic → training pipeline → champion/challenger gate."""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from driftloop.config import Config
from driftloop.data_checks.provenance import prediction_log_source
from driftloop.errors import DataError
from driftloop.flows.monitoring import log_to_contract
from driftloop.flows.outcomes import RetrainingOutcome, Status
from driftloop.flows.training import training_pipeline
from driftloop.registry.gate import GateDecision, apply_gate
from driftloop.registry.store import CHAMPION, alias_version
from driftloop.serving.prediction_log import PredictionLog
from driftloop.state import prediction_log_path, state_path


def labelled_rows(config: Config, first_id: int, last_id: int):  # noqa: ANN201 - a DataFrame
    """Logged predictions in the id range whose labels have arrived, in the config's columns."""
    with PredictionLog(prediction_log_path(config)) as log:
        logged = log.read(first_id, last_id, labelled_only=True)
    if logged.empty:
        raise DataError(f"no labelled predictions between ids {first_id} and {last_id}")
    return log_to_contract(config, logged)


@task(cache_policy=NO_CACHE)
def gate_version(config: Config, version: str, first_id: int, last_id: int) -> GateDecision:
    """Champion vs challenger on the most recent labelled window; moves the aliases."""
    decision = apply_gate(config, version, labelled_rows(config, first_id, last_id))
    get_run_logger().info("gate: version %s %s: %s", version, "PROMOTED" if decision.promoted else "rejected",
                          decision.reason)
    return decision


@flow(name="retraining", validate_parameters=False)
def retraining_flow(config: Config, train_first_id: int, train_last_id: int, gate_first_id: int,
                    gate_last_id: int, progress: bool = True) -> RetrainingOutcome:
    """Train on labelled predictions `train_*`, gate on the later labelled window `gate_*`.

    The gate window is the governance checks' evaluation data too (no overlap with the batch, no training row from
    its period); a batch that fails validation or that they stop is quarantined, and the outcome's status
    (QUARANTINED or REFUSED) and `refusal` say why. A trained version's `gate` decision says whether it was
    promoted."""
    frame = labelled_rows(config, train_first_id, train_last_id)
    path = state_path(config, "data", f"retrain-{train_first_id}-{train_last_id}.parquet")
    frame.to_parquet(path, index=False)
    gate_path = state_path(config, "data", f"gate-{gate_first_id}-{gate_last_id}.parquet")
    labelled_rows(config, gate_first_id, gate_last_id).to_parquet(gate_path, index=False)
    champion = alias_version(config, CHAMPION)
    source = prediction_log_source(train_first_id, train_last_id, prediction_log_path(config))
    training = training_pipeline(config, str(path), reference_version=champion, progress=progress, source=source,
                                 evaluation_path=str(gate_path))
    if training.model is None:
        return RetrainingOutcome(training.status, training=training)
    decision = gate_version(config, training.model.model_version, gate_first_id, gate_last_id)
    return RetrainingOutcome(Status.TRAINED, training=training, gate=decision)
