"""MLflow registration, aliases and model loading: the only module that talks to MLflow."""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from driftloop.config import Config
from driftloop.data import reference_frame
from driftloop.errors import RegistryError
from driftloop.registry.digests import model_digests, recorded_digests, verify
from driftloop.registry.packaging import build_wheel, model_requirements
from driftloop.state import mlflow_artifact_root, mlflow_store_uri, mlflow_tracking_uri, state_path
from driftloop.state_templates import seed_database
from driftloop.training.artifacts import WEIGHTS, LoadedModel, load_model, predict, save_model

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.models.model import ModelInfo

    from driftloop.training.trainer import TrainResult

CHAMPION = "champion"
CHALLENGER = "challenger"
REFERENCE_ARTIFACT = "reference"
# The validation report pages of a version's training batch, in its run; the tag names our page there.
VALIDATION_ARTIFACT = "validation"
REPORT_URI_TAG = "validation.report_uri"
PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")
# The pyfunc artifact holding the wheel of driftloop its requirements install (registry/packaging.py).
WHEEL_ARTIFACT = "driftloop_wheel"
# Every move of the champion alias, oldest first, as JSON on the registered model.
HISTORY_TAG = "champion.history"
# MLflow stores of older servers cap a tag value at 5000 characters: the oldest moves are dropped beyond it.
TAG_LIMIT = 5000
# The baseline model's figures (training/baseline.py): run metrics and version tags baseline.<metric>, the run param
# and version tag baseline.model; the network's holdout figures as version tags holdout.<metric> beside them.
BASELINE_PREFIX = "baseline."
HOLDOUT_PREFIX = "holdout."
# The gate's decision on a version ("promoted" or "rejected"); the server serves only a promoted one (trust.py).
DECISION_TAG = "gate.decision"
PROMOTED = "promoted"


@dataclass(frozen=True)
class Registered:
    """A model version just registered."""

    name: str
    version: str
    run_id: str
    champion: bool


def mlflow_client(config: Config) -> MlflowClient:
    """A client on the config's tracking store (SQLite under state_dir by default; a new one starts from the
    install's migrated template, driftloop.state_templates)."""
    import mlflow

    uri = mlflow_tracking_uri(config)
    if not config.registry.tracking_uri and uri == mlflow_store_uri(config):  # not the stack's server, not a URI
        seed_database(state_path(config, "mlflow.db"), "mlflow")
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_id(config: Config, client: MlflowClient) -> str:
    """The config's experiment, created with its artifacts under state_dir when new."""
    found = client.get_experiment_by_name(config.registry.experiment)
    if found is not None:
        return found.experiment_id
    location = config.registry.artifact_location
    if location is None and not config.registry.tracking_uri:
        location = mlflow_artifact_root(config)
    return client.create_experiment(config.registry.experiment, artifact_location=location)


def alias_version(config: Config, alias: str = CHAMPION) -> str | None:
    """The version holding `alias`, or None when there is none (or no model yet)."""
    from mlflow.exceptions import MlflowException

    try:
        return str(mlflow_client(config).get_model_version_by_alias(config.model.name, alias).version)
    except MlflowException:
        return None


def set_alias(config: Config, alias: str, version: str) -> None:
    """Point `alias` at `version`."""
    mlflow_client(config).set_registered_model_alias(config.model.name, alias, version)


def now_iso() -> str:
    """The current UTC time, to the second, as recorded in history and rollback tags."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def champion_history(config: Config) -> list[dict]:
    """Every recorded move of the champion alias, oldest first: version, previous, at, event, reason.

    Empty when no model is registered, or when the alias was only ever moved by hand (set_alias).
    """
    from mlflow.exceptions import MlflowException

    try:
        raw = mlflow_client(config).get_registered_model(config.model.name).tags.get(HISTORY_TAG)
    except MlflowException:
        return []
    try:
        entries = json.loads(raw) if raw else []
    except json.JSONDecodeError:
        return []  # a hand-edited tag: start afresh rather than refuse every promotion
    return [e for e in entries if isinstance(e, dict) and "version" in e] if isinstance(entries, list) else []


def _write_history(config: Config, entries: list[dict]) -> None:
    """Store the history, dropping the oldest moves while it is over MLflow's tag limit."""
    text = json.dumps(entries, separators=(",", ":"))
    while len(text) > TAG_LIMIT and len(entries) > 1:
        entries = entries[1:]
        text = json.dumps(entries, separators=(",", ":"))
    mlflow_client(config).set_registered_model_tag(config.model.name, HISTORY_TAG, text)


def promote(config: Config, version: str, reason: str, event: str = "promoted",
            decision: dict[str, str] | None = None) -> str | None:
    """Make `version` the champion and record the move; returns the previous champion (None if there was none).

    `event` names why the alias moved (first, promoted, rollback). `decision`: the gate's tags for the version
    (gate.decision, figures); without it a promotion records gate.decision=promoted with `reason` (a rollback
    records none: its target was promoted before). The decision is written before the alias moves, so a failure
    in between leaves the alias where it was, and the server never sees a champion without its decision. The
    version loses the challenger alias if it held it. The history is read, extended and written back: two
    promotions at the same instant may lose one entry, never the alias move itself.
    """
    client = mlflow_client(config)
    name = config.model.name
    previous = alias_version(config, CHAMPION)
    at = now_iso()
    if decision is None and event != "rollback":
        decision = {DECISION_TAG: PROMOTED, "gate.reason": reason[:TAG_LIMIT]}
    tags = {**(decision or {}), "champion.since": at}
    verdict = tags.pop(DECISION_TAG, None)  # written last: a failure half-way leaves the old decision in force
    tag_version(config, version, tags if verdict is None else {**tags, DECISION_TAG: verdict})
    client.set_registered_model_alias(name, CHAMPION, version)
    if alias_version(config, CHALLENGER) == version:
        client.delete_registered_model_alias(name, CHALLENGER)
    entry = {"version": version, "previous": previous, "at": at, "event": event, "reason": reason[:160]}
    _write_history(config, [*champion_history(config), entry])
    if previous is not None and previous != version:
        tag_version(config, previous, {"champion.until": at})
    return previous


def model_aliases(config: Config) -> dict[str, str]:
    """Every alias of the configured model and the version it points at; empty when none is registered."""
    from mlflow.exceptions import MlflowException

    try:
        found = mlflow_client(config).get_registered_model(config.model.name).aliases
    except MlflowException:
        return {}
    return {alias: str(version) for alias, version in (found or {}).items()}


def list_versions(config: Config) -> list[ModelVersion]:
    """Every version of the configured model, oldest first; empty when none is registered. Their `aliases` are not
    filled in by every store: see model_aliases."""
    from mlflow.exceptions import MlflowException

    try:
        found = mlflow_client(config).search_model_versions(f"name = '{config.model.name}'")
    except MlflowException:
        return []
    return sorted(found, key=lambda v: int(v.version))


def tag_version(config: Config, version: str, tags: dict[str, str]) -> None:
    """Record figures or decisions on a model version."""
    client = mlflow_client(config)
    for key, value in tags.items():
        client.set_model_version_tag(config.model.name, version, key, str(value))


def version_tags(config: Config, version: str) -> dict[str, str]:
    """Tags of a model version (lineage and gate results)."""
    return dict(mlflow_client(config).get_model_version(config.model.name, version).tags)


def _training_figures(result: TrainResult) -> dict[str, float]:
    """The run's summary figures: loss, holdout metrics, stage costs and what the pipeline measured."""
    figures = {"final_loss": result.final_loss, "train_seconds": result.seconds,
               **{f"holdout_{k}": v for k, v in result.metrics.items()}}
    if result.partition is not None:
        figures["stage_imbalance"] = result.partition.imbalance
        figures.update({f"stage_{s}_cost": cost for s, cost in enumerate(result.partition.costs)})
    telemetry = result.telemetry
    if telemetry is not None:
        figures.update({"samples_per_second": telemetry.samples_per_second,
                        "bubble_fraction": telemetry.bubble_fraction,
                        "measured_stage_imbalance": telemetry.measured_imbalance})
        for s, (fwd, bwd) in enumerate(zip(telemetry.stage_forward_seconds, telemetry.stage_backward_seconds,
                                           strict=True)):
            figures.update({f"stage_{s}_forward_seconds": fwd, f"stage_{s}_backward_seconds": bwd})
        figures.update({f"rank_{r}_bubble": bubble for r, bubble in enumerate(telemetry.rank_bubble)})
    return {key: float(value) for key, value in figures.items() if math.isfinite(value)}


def _log_training(config: Config, result: TrainResult) -> None:
    """Parameters, per-step loss and step time, the pipeline's measurements and holdout metrics of the active run."""
    import mlflow
    from mlflow.entities import Metric

    params = {f"training.{k}": v for k, v in config.training.model_dump().items()}
    params.update({f"model.{k}": v for k, v in config.model.model_dump().items()})
    params.update({f"retraining.{k}": v for k, v in config.retraining.model_dump().items()})
    params.update({"training.sample_weights": result.weighted, "training.start": result.start[:500],
                   "training.best_epoch": result.best_epoch, "training.refit_steps": result.refit_steps})
    if result.baseline is not None:
        params["baseline.model"] = result.baseline.model
    params.update({"training.stages": result.stages, "training.schedule": result.schedule,
                   "training.microbatches": result.microbatches, "training.stages_per_rank": result.stages_per_rank,
                   "training.ranks": result.ranks, "training.launcher": result.launcher,
                   "training.device": result.device, "training.resumed_from": result.resumed_from,
                   "train_rows": result.train_rows,
                   "holdout_rows": result.holdout_rows})
    if result.partition is not None:
        params["training.stage_blocks"] = json.dumps([list(blocks) for blocks in result.partition.blocks])
    mlflow.log_params(params)
    now = int(time.time() * 1000)
    series = [Metric("train_loss", loss, now, step) for step, loss in enumerate(result.losses)]
    if result.telemetry is not None:
        series += [Metric("step_seconds", seconds, now, step)
                   for step, seconds in enumerate(result.telemetry.step_seconds)]
    run_id = mlflow.active_run().info.run_id
    client = mlflow_client(config)
    for start in range(0, len(series), 1000):  # MLflow takes at most 1000 metrics per batch
        client.log_batch(run_id, metrics=series[start:start + 1000])
    baseline = result.baseline.metrics if result.baseline is not None else {}
    mlflow.log_metrics({**_training_figures(result),
                        **{f"{BASELINE_PREFIX}{k}": float(v) for k, v in baseline.items() if math.isfinite(v)}})


def baseline_tags(result: TrainResult) -> dict[str, str]:
    """Version tags: the baseline's name and holdout figures, and the network's own on the same holdout (what
    `driftloop models` shows and registry.max_baseline_shortfall judges)."""
    if result.baseline is None:
        return {}
    tags = {f"{BASELINE_PREFIX}model": result.baseline.model}
    tags.update({f"{BASELINE_PREFIX}{k}": f"{v:.6f}" for k, v in result.baseline.metrics.items() if math.isfinite(v)})
    tags.update({f"{HOLDOUT_PREFIX}{k}": f"{v:.6f}" for k, v in result.metrics.items() if math.isfinite(v)})
    return tags


def baseline_figures(tags: dict[str, str]) -> tuple[str | None, dict[str, float], dict[str, float]]:
    """From a version's tags: (the baseline's name, its holdout figures, the network's holdout figures)."""
    def figures(prefix: str) -> dict[str, float]:
        found = {}
        for key, value in tags.items():
            if key.startswith(prefix) and key != f"{BASELINE_PREFIX}model":
                try:
                    found[key[len(prefix):]] = float(value)
                except ValueError:
                    continue
        return found

    return tags.get(f"{BASELINE_PREFIX}model"), figures(BASELINE_PREFIX), figures(HOLDOUT_PREFIX)


def _new_version(client: MlflowClient, name: str, info: ModelInfo, run_id: str, tags: dict[str, str]) -> str:
    """Register a logged model as a new version (the client API: the fluent one prints to stderr)."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name)
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    return str(client.create_model_version(name, info.model_uri, run_id=run_id, tags=tags,
                                           model_id=info.model_id).version)


def _log_reports(reports: Sequence[Path]) -> dict[str, str]:
    """Log the validation pages that exist under `validation/` of the active run; the tag naming the first there."""
    import mlflow

    logged = [Path(p) for p in reports if Path(p).is_file()]
    for page in logged:
        mlflow.log_artifact(str(page), VALIDATION_ARTIFACT)
    return {REPORT_URI_TAG: f"{mlflow.get_artifact_uri(VALIDATION_ARTIFACT)}/{logged[0].name}"} if logged else {}


def register(config: Config, result: TrainResult, lineage: dict[str, str], reference: pd.DataFrame,
             reports: Sequence[Path] = ()) -> Registered:
    """Log a trained model to MLflow, register a version with lineage tags; the first one becomes champion.

    `reports`: the validation pages of the training batch (ours first, then GX's Data Docs page), logged under
    `validation/` of the run; the tag validation.report_uri names the first there, on the run and the version."""
    import mlflow
    from mlflow.models import infer_signature

    client = mlflow_client(config)
    exp = experiment_id(config, client)
    # The monitor's reference: the training rows with this model's outputs on them, never PII.
    sample = reference_frame(reference, config, predict(result.model(), result.spec, reference))
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(experiment_id=exp) as run:
        lineage = {**lineage, **_log_reports(reports)}
        mlflow.set_tags(lineage)
        _log_training(config, result)
        folder = save_model(Path(tmp) / "model", result.state, result.spec, config.model)
        digests = model_digests(folder)  # checked on every load (registry/digests.py)
        mlflow.log_params(digests)
        sample.to_parquet(Path(tmp) / "reference.parquet", index=False)
        mlflow.log_artifact(str(Path(tmp) / "reference.parquet"), REFERENCE_ARTIFACT)
        # Numbers as float64 in the signature: an integer column could not take a missing value later.
        example = sample[config.data.features].head(5).astype({c: "float64" for c in config.data.numerical})
        signature = infer_signature(example, predict(result.model(), result.spec, example))
        # driftloop is not on the package index: the model carries its wheel (cached by content under state_dir).
        wheel = build_wheel(state_path(config, "wheels", "x").parent)
        info = mlflow.pyfunc.log_model(name="model", python_model=str(PYFUNC_CODE),
                                       artifacts={"model": str(folder), WHEEL_ARTIFACT: str(wheel)},
                                       signature=signature, input_example=example,
                                       pip_requirements=model_requirements(wheel))
        version = _new_version(client, config.model.name, info, run.info.run_id,
                               {**lineage, **digests, **baseline_tags(result)})
    first = alias_version(config, CHAMPION) is None
    if first:
        promote(config, version, "first model", event="first",
                decision={DECISION_TAG: PROMOTED, "gate.reason": "first model"})
    return Registered(config.model.name, version, run.info.run_id, first)


def _fetch_once(target: Path, fetch: Callable[[Path], None]) -> Path:
    """Fill `target` with `fetch` unless it exists; atomic, so a half-written folder is never used.

    The server and the flows may fetch the same version at once: the second rename loses and is dropped.
    """
    if target.exists():
        return target
    staging = Path(tempfile.mkdtemp(dir=target.parent))
    try:
        fetch(staging)
        staging.rename(target)
    except OSError:
        if not target.exists():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def model_version(config: Config, version: str) -> ModelVersion:
    """The registry's record of one version (its run id and tags), RegistryError when there is none."""
    from mlflow.exceptions import MlflowException

    try:
        return mlflow_client(config).get_model_version(config.model.name, version)
    except MlflowException as error:
        raise RegistryError(f"model {config.model.name} version {version}: {error.message}") from None


def run_cache(config: Config, run_id: str, kind: str) -> Path:
    """Where a run's artifacts of one kind are cached: keyed by the run id, which no other store shares, never by
    model name and version (another tracking_uri has its own "version 1")."""
    if not run_id:
        raise RegistryError(f"model {config.model.name}: a version without a training run cannot be loaded")
    return state_path(config, "cache", "runs", run_id, kind)


def _download(config: Config, mv: ModelVersion) -> Path:
    """The version's pyfunc folder, cached under state_dir by run id so each version is fetched once."""
    import mlflow

    mlflow_client(config)
    uri = f"models:/{config.model.name}/{mv.version}"
    return _fetch_once(run_cache(config, mv.run_id, "model"),
                       lambda staging: mlflow.artifacts.download_artifacts(uri, dst_path=str(staging)))


def _weights_folder(config: Config, mv: ModelVersion) -> Path:
    """The folder holding the version's weights, fetched (or found in the cache)."""
    from mlflow.exceptions import MlflowException

    try:
        folder = _download(config, mv)
    except MlflowException as error:
        raise RegistryError(f"model {config.model.name} version {mv.version}: {error.message}") from None
    weights = sorted(folder.rglob(WEIGHTS))
    if not weights:
        raise RegistryError(f"model {config.model.name} version {mv.version}: no {WEIGHTS} in its artifacts")
    return weights[0].parent


def recorded(config: Config, mv: ModelVersion) -> list[dict[str, str]]:
    """The digests recorded for a version: its run's parameters (immutable in MLflow) and its tags; RegistryError
    when neither has any and registry.require_digests is on."""
    from mlflow.exceptions import MlflowException

    try:
        params = mlflow_client(config).get_run(mv.run_id).data.params if mv.run_id else {}
    except MlflowException as error:
        raise RegistryError(f"model {config.model.name} version {mv.version}: its run {mv.run_id} cannot be read "
                            f"({error.message})") from None
    found = [d for d in (recorded_digests(params), recorded_digests(mv.tags or {})) if d]
    if not found and config.registry.require_digests:
        raise RegistryError(f"model {config.model.name} version {mv.version}: no sha256 of its files was recorded "
                            "at registration, so its weights cannot be checked; register it again (driftloop train), "
                            "or set registry.require_digests: false to load such versions unchecked")
    return found


def verified_folder(config: Config, version: str) -> Path:
    """The version's model folder, its files checked against the digests recorded at registration.

    A cached copy that fails the check is dropped and fetched again once; a fresh copy that fails is refused
    (registry/digests.py DigestMismatch): the artifact store's files changed after registration.
    """
    mv = model_version(config, version)
    records = recorded(config, mv)
    what = f"model {config.model.name} version {version}"
    cache = run_cache(config, mv.run_id, "model")
    cached = cache.exists()
    folder = _weights_folder(config, mv)
    try:
        for record in records:
            verify(folder, record, what)
    except RegistryError:
        if not cached:
            raise
        shutil.rmtree(cache, ignore_errors=True)
        folder = _weights_folder(config, mv)
        for record in records:
            verify(folder, record, what)
    return folder


def load_version(config: Config, version: str) -> LoadedModel:
    """Load a registered version: its files checked against their recorded sha256, safetensors weights and JSON
    only (pickled artifacts are refused)."""
    return load_model(verified_folder(config, version), version=version)


def load_alias(config: Config, alias: str = CHAMPION) -> LoadedModel:
    """Load the version holding `alias`."""
    version = alias_version(config, alias)
    if version is None:
        raise RegistryError(f"model {config.model.name} has no '{alias}' yet: run `driftloop train` first")
    return load_version(config, version)


def load_reference(config: Config, version: str) -> pd.DataFrame:
    """The training rows a version was trained on (the monitor's reference)."""
    import mlflow

    run_id = model_version(config, version).run_id
    target = _fetch_once(run_cache(config, run_id, REFERENCE_ARTIFACT),
                         lambda staging: mlflow.artifacts.download_artifacts(
                             run_id=run_id, artifact_path=REFERENCE_ARTIFACT, dst_path=str(staging)))
    files = sorted(target.rglob("*.parquet"))
    if not files:
        shutil.rmtree(target, ignore_errors=True)
        raise RegistryError(f"model {config.model.name} version {version}: no reference data in run {run_id}")
    return pd.read_parquet(files[0])


def holdout_figures(config: Config, version: str) -> dict[str, float]:
    """A version's metrics on its time-later holdout (the policy's performance baseline)."""
    client = mlflow_client(config)
    run = client.get_run(client.get_model_version(config.model.name, version).run_id)
    prefix = "holdout_"
    return {k[len(prefix):]: v for k, v in run.data.metrics.items() if k.startswith(prefix)}
