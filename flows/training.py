"""The training pipeline flow: validate the batch, train pipeline-parallel, register with lineage."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from data_checks.quarantine import quarantine
from data_checks.validate import ValidationReport, validate_frame
from driftloop.config import Config
from driftloop.data import read_table, sort_by_time
from driftloop.datasets import load_flights
from driftloop.state import state_path
from registry.lineage import build_lineage
from registry.store import Registered, load_reference, register
from training.trainer import TrainResult, train


def prepare_training_data(config: Config, data: Path | None) -> Path:
    """The file to train on: `data` if given (read once to fail early on a bad file), else the demo's months."""
    if data is not None:
        read_table(data)
        return data
    flights = load_flights()
    until = pd.Timestamp(config.demo.train_until, tz="UTC")
    path = state_path(config, "data", "train.parquet")
    flights[flights["time_hour"] < until].to_parquet(path, index=False)
    return path


@task(cache_policy=NO_CACHE)
def validate_batch(config: Config, frame: pd.DataFrame, reference: pd.DataFrame | None, name: str) -> ValidationReport:
    """Great Expectations gate on the training batch."""
    report = validate_frame(frame, config, reference=reference, name=name)
    get_run_logger().info("validation %s: %s", "passed" if report.success else "FAILED", report.summary())
    return report


@task(cache_policy=NO_CACHE)
def quarantine_batch(config: Config, frame: pd.DataFrame, report: ValidationReport, name: str) -> Path:
    """Keep a failing batch aside with its report."""
    path = quarantine(frame, report, config, name)
    get_run_logger().warning("batch %s quarantined in %s", name, path)
    return path


@task(cache_policy=NO_CACHE)
def train_model(config: Config, frame: pd.DataFrame, progress: bool, **overrides: int | str | None) -> TrainResult:
    """Pipeline-parallel training with a time-later holdout."""
    result = train(frame, config, progress=progress, **overrides)
    get_run_logger().info("trained %d stages (%s): final loss %.4f, holdout %s", result.stages, result.schedule,
                          result.final_loss, {k: round(v, 4) for k, v in result.metrics.items()})
    return result


@task(cache_policy=NO_CACHE)
def register_model(config: Config, result: TrainResult, lineage: dict[str, str], frame: pd.DataFrame) -> Registered:
    """Log to MLflow and register a version; the first ever becomes champion."""
    registered = register(config, result, lineage, frame)
    get_run_logger().info("registered %s version %s%s", registered.name, registered.version,
                          " as champion" if registered.champion else "")
    return registered


def train_payload(result: TrainResult, registered: Registered) -> dict:
    """The `driftloop train --json` object."""
    return {"run_id": registered.run_id, "model_version": registered.version, "final_loss": result.final_loss,
            "stages": result.stages, "schedule": result.schedule, "microbatches": result.microbatches,
            "stages_per_rank": result.stages_per_rank, "ranks": result.ranks, "resumed_from": result.resumed_from,
            "metrics": result.metrics}


@flow(name="training-pipeline", validate_parameters=False)
def training_pipeline(config: Config, data_path: str, reference_version: str | None = None, progress: bool = True,
                      stages: int | None = None, schedule: str | None = None, microbatches: int | None = None,
                      seed: int | None = None) -> dict:
    """Validate → train → register. A batch that fails validation is quarantined and nothing is trained.

    `reference_version`: validate ranges and categories against that model's training data (retraining);
    without it the profile comes from the batch itself (a first model).
    """
    name = Path(data_path).stem
    frame = sort_by_time(read_table(data_path), config.data)
    reference = load_reference(config, reference_version) if reference_version else None
    report = validate_batch(config, frame, reference, name)
    validation = {**report.to_json(), "summary": report.summary()}
    if not report.success:
        return {"validation": validation, "quarantine": str(quarantine_batch(config, frame, report, name))}
    result = train_model(config, frame, progress, stages=stages, schedule=schedule, microbatches=microbatches,
                         seed=seed)
    lineage = build_lineage(config, frame, report.success, str(report.report), flow_run.id)
    registered = register_model(config, result, lineage, frame)
    return {"validation": validation, "train": train_payload(result, registered), "champion": registered.champion}
