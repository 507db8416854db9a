"""The training pipeline flow: validate the batch, train pipeline-parallel, register with lineage."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from driftloop.config import Config
from driftloop.data import read_table, sort_by_time
from driftloop.data_checks.findings import Finding
from driftloop.data_checks.provenance import gx_page, record_batch, record_model, validation_markdown
from driftloop.data_checks.quarantine import quarantine
from driftloop.data_checks.validate import ValidationReport, check_usable, validate_frame
from driftloop.datasets import load_flights
from driftloop.flows.governance import governance_gate
from driftloop.flows.links import link_version
from driftloop.flows.outcomes import Refusal, TrainedModel, TrainingOutcome
from driftloop.flows.prefect_api import wait_until_ready
from driftloop.registry.lineage import build_lineage
from driftloop.registry.provenance import report_links
from driftloop.registry.store import CHAMPION, Registered, alias_version, load_reference, load_version, register
from driftloop.state import state_path
from driftloop.training.launcher import TorchrunPlan, plan_torchrun
from driftloop.training.pipeline import check_settings
from driftloop.training.trainer import TrainResult, train
from driftloop.training.warm_start import WarmStart


def prepare_training_data(config: Config, data: Path | None) -> Path:
    """The file to train on: `data` if given (`driftloop train` checks it before the flow starts), else the demo's
    months."""
    if data is not None:
        return data
    flights = load_flights()
    until = pd.Timestamp(config.demo.train_until, tz="UTC")
    path = state_path(config, "data", "train.parquet")
    flights[flights["time_hour"] < until].to_parquet(path, index=False)
    return path


def checked_training_data(config: Config, data: Path | None, overrides: dict[str, int | str | None]) -> Path:
    """`driftloop train`'s input, checked before anything starts: the pipeline settings with the command line's
    `overrides`, then the file to train on (unreadable file, timestamps that do not parse, a broken saved suite).
    Raised inside the flow, Prefect would print these errors with a traceback; here they are one line."""
    check_settings(config, **overrides)
    path = Path(prepare_training_data(config, data))
    check_usable(sort_by_time(read_table(path), config.data), config, str(path))
    return path


def train_file(config: Config, data: Path | None, progress: bool = True,
               **overrides: int | str | None) -> TrainingOutcome:
    """`driftloop train`: check the input, then validate, train and register (the training pipeline)."""
    path = checked_training_data(config, data, overrides)
    wait_until_ready()  # Prefect's temporary API, when `driftloop train` started it early
    return training_pipeline(config, str(path), progress=progress, **overrides)


def torchrun_plan(config: Config, data: Path | None, **overrides: int | str | None) -> TorchrunPlan:
    """`driftloop train` with training.launcher torchrun: check the input, write the effective config and return
    the torchrun command(s) that train on it, for a person to run on the nodes."""
    path = checked_training_data(config, data, overrides)
    return plan_torchrun(config, path, overrides)


@task(cache_policy=NO_CACHE)
def validate_batch(config: Config, frame: pd.DataFrame, reference: pd.DataFrame | None, name: str) -> ValidationReport:
    """Great Expectations gate on the training batch."""
    report = validate_frame(frame, config, reference=reference, name=name)
    get_run_logger().info("validation %s: %s", "passed" if report.success else "FAILED", report.summary())
    return report


@task(cache_policy=NO_CACHE)
def quarantine_batch(config: Config, frame: pd.DataFrame, report: ValidationReport, name: str,
                     findings: Sequence[Finding] = ()) -> Path:
    """Keep a failing batch aside with its report (and the governance findings that stopped it)."""
    path = quarantine(frame, report, config, name, findings)
    get_run_logger().warning("batch %s quarantined in %s", name, path)
    return path


@task(cache_policy=NO_CACHE)
def champion_weights(config: Config, version: str | None) -> WarmStart | None:
    """The weights a warm start (retraining.warm_start) continues from: `version`'s; None without one."""
    if version is None:
        get_run_logger().info("warm start: no champion yet, training from scratch")
        return None
    loaded = load_version(config, version)
    return WarmStart(loaded.spec, {k: v.detach().clone() for k, v in loaded.net.state_dict().items()},
                     f"champion v{version}")


@task(cache_policy=NO_CACHE)
def train_model(config: Config, frame: pd.DataFrame, progress: bool, sample_weights: np.ndarray | None = None,
                warm_start: WarmStart | None = None, **overrides: int | str | None) -> TrainResult:
    """Pipeline-parallel training with a time-later holdout."""
    result = train(frame, config, progress=progress, sample_weights=sample_weights, warm_start=warm_start,
                   **overrides)
    logger = get_run_logger()
    logger.info("trained %d stages (%s) from %s: final loss %.4f, holdout %s", result.stages, result.schedule,
                result.start, result.final_loss, {k: round(v, 4) for k, v in result.metrics.items()})
    if warm_start is not None and not result.start.startswith("warm start"):
        logger.warning("retraining.warm_start: %s", result.start)  # why it trained from scratch after all
    if result.baseline is not None:
        logger.info("baseline %s on the same holdout: %s", result.baseline.model,
                    {k: round(v, 4) for k, v in result.baseline.metrics.items()})
    return result


@task(cache_policy=NO_CACHE)
def register_model(config: Config, result: TrainResult, lineage: dict[str, str], frame: pd.DataFrame,
                   report: ValidationReport | None = None) -> Registered:
    """Log to MLflow and register a version, with the batch's validation pages in its run; the first ever becomes
    champion."""
    pages = [report.report, gx_page(report.report)] if report is not None else []
    registered = register(config, result, lineage, frame, reports=pages)
    get_run_logger().info("registered %s version %s%s", registered.name, registered.version,
                          " as champion" if registered.champion else "")
    return registered


@task(cache_policy=NO_CACHE)
def record_offer(config: Config, frame: pd.DataFrame, report: ValidationReport, name: str, source: str,
                 status: str, quarantined: Path | None = None) -> dict:
    """The batch's provenance record (state_dir/batches/) gets this offer: accepted or quarantined."""
    return record_batch(frame, report, config, name=name, source=source, status=status, quarantine=quarantined,
                        flow_run_id=flow_run.id)


def validation_artifact_key(config: Config) -> str:
    """The Prefect artifact key of a model's validations (keys allow lowercase letters, digits and dashes)."""
    return "validation-" + (re.sub(r"[^a-z0-9-]+", "-", config.model.name.lower()).strip("-") or "model")


@task(cache_policy=NO_CACHE)
def publish_validation(config: Config, record: dict, registered: Registered | None) -> None:
    """The Prefect artifact: verdict, figures, links to the Data Docs pages and, once trained, the MLflow run."""
    links = report_links(config, registered.version, registered.run_id) if registered is not None else []
    if registered is not None:  # and the other way: the version's MLflow page links its pages (flows/links.py)
        link_version(config, registered.version, registered.run_id, record, str(flow_run.id))
    create_markdown_artifact(validation_markdown(record, config.model.name, links), key=validation_artifact_key(config),
                             description=f"validation of batch {record['name']} ({record['fingerprint']})")


@flow(name="training-pipeline", validate_parameters=False)
def training_pipeline(config: Config, data_path: str, reference_version: str | None = None, progress: bool = True,
                      stages: int | None = None, schedule: str | None = None, microbatches: int | None = None,
                      seed: int | None = None, source: str | None = None,
                      evaluation_path: str | None = None, weights_path: str | None = None,
                      warm_start: bool = False) -> TrainingOutcome:
    """Validate → governance → train → register. A batch that fails validation (status QUARANTINED), or that a
    governance check stops (flows/governance.py, status REFUSED), is quarantined and nothing is trained; the outcome's
    `refusal` says why.

    `reference_version`: validate ranges and categories against that model's training data (retraining);
    without it the profile comes from the batch itself (a first model). `source`: where the batch came from, for
    its provenance record (default: the file). Every offer is recorded and published as a Prefect artifact.
    `evaluation_path`: data the new version will be judged on besides its holdout (a retraining's gate window),
    checked for overlap with the batch. The governance guard compares the batch with `reference_version`, else
    with the champion when there is one. `weights_path`: a .npy file of one training-loss weight per row of the
    file (the retraining data policy's recency weights). `warm_start`: continue from the weights of
    `reference_version` (else the champion) when they fit (training/warm_start.py).
    """
    name = Path(data_path).stem
    source = source or str(Path(data_path).resolve())
    frame = sort_by_time(read_table(data_path), config.data)
    reference = load_reference(config, reference_version) if reference_version else None
    report = validate_batch(config, frame, reference, name)
    if not report.success:
        folder = quarantine_batch(config, frame, report, name)
        publish_validation(config, record_offer(config, frame, report, name, source, "quarantined", folder), None)
        return TrainingOutcome(report, refusal=Refusal(data_path, report, folder))
    evaluation = sort_by_time(read_table(evaluation_path), config.data) if evaluation_path else None
    governance = governance_gate(config, frame, reference_version or alias_version(config, CHAMPION), evaluation)
    if not governance.passed:
        folder = quarantine_batch(config, frame, report, name, governance.findings)
        publish_validation(config, record_offer(config, frame, report, name, source, "quarantined", folder), None)
        return TrainingOutcome(report, governance, refusal=Refusal(data_path, report, folder, governance))
    # Every check has passed: the batch is accepted for training.
    record = record_offer(config, frame, report, name, source, "accepted")
    weights = np.load(weights_path) if weights_path else None
    start = champion_weights(config, reference_version or alias_version(config, CHAMPION)) if warm_start else None
    result = train_model(config, frame, progress, weights, start, stages=stages, schedule=schedule,
                         microbatches=microbatches, seed=seed)
    lineage = build_lineage(config, frame, report.success, str(report.report), flow_run.id,
                            batches=[record["fingerprint"]])
    registered = register_model(config, result, lineage, frame, report)
    record = record_model(config, record, registered.name, registered.version, registered.run_id)
    publish_validation(config, record, registered)
    return TrainingOutcome(report, governance, model=TrainedModel.of(result, registered))
