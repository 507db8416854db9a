"""Training a TabularNet: one process, or a pipeline of stages over ranks, with the same loop and the same result."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional

from driftloop.config import Config, ModelConfig
from driftloop.data import require_columns, split_by_fraction
from driftloop.errors import TrainingError
from driftloop.state import state_path
from driftloop.training import checkpoint
from driftloop.training.artifacts import predict
from driftloop.training.baseline import BaselineResult, fit_baseline
from driftloop.training.checkpoint import CheckpointJob
from driftloop.training.features import FeatureSpec, encode, encode_target, fit_spec, numeric_column
from driftloop.training.launcher import RankSetup, free_port, join_torchrun, launch, run_here
from driftloop.training.model import TabularNet, activation_width, build_model, build_stage
from driftloop.training.partition import Partition, plan_partition
from driftloop.training.pipeline import PipelineSettings, ScaledLoss, build_schedule, check_settings, rank_device
from driftloop.training.telemetry import StageClock, Telemetry, TrainingExporter, summarize
from driftloop.training.validation import EarlyStopping, lr_factor, model_loss, staged_loss, validation_split
from driftloop.training.warm_start import WarmStart, start_point

DATA = "data.safetensors"
LOSSES = "losses.json"
VALIDATION = "validation.json"
METRICS_FILE = ("metrics", "training.prom")  # under state_dir
# Test hook: a rank whose number this variable holds raises at its first step (proves a failure cannot hang).
FAIL_RANK_ENV = "DRIFTLOOP_FAIL_RANK"
# The rows' sample weights travel beside them through the splits in this column, then into the target tensor.
WEIGHT_COLUMN = "__driftloop_sample_weight__"
INITIAL_PREFIX = "init."  # initial weights (warm start) in the ranks' data file
WIDE_PARAMETER = "input.wide."  # the wide path's parameter names start so (training.model.WidePath)

StepFn = Callable[[torch.Tensor], float | None]
Report = Callable[[int, int, float], None]
# Called after each optimizer step with (epoch, global step number from 1); checkpoints hang here.
AfterStep = Callable[[int, int], None]
# Called at the end of each epoch (and at the run's last step) with (epoch, global step); True stops the run.
EndEpoch = Callable[[int, int], bool]
# What the rank holding the last stage reports after each step: (epoch, step number from 1, loss, step seconds).
StepReport = Callable[[int, int, float, float], None]


@dataclass(frozen=True)
class TrainResult:
    """A trained model's weights and spec, with the figures of its training run."""

    state: dict[str, torch.Tensor]
    spec: FeatureSpec
    final_loss: float
    losses: list[float]
    metrics: dict[str, float]
    stages: int
    schedule: str
    microbatches: int
    train_rows: int
    holdout_rows: int
    seconds: float
    model_config: ModelConfig = field(default_factory=ModelConfig)
    stages_per_rank: int = 1
    ranks: int = 1
    launcher: str = "local"
    device: str = "cpu"
    partition: Partition | None = None  # blocks and cost of each stage, and their imbalance
    telemetry: Telemetry | None = None  # per-step times, per-stage compute, measured bubble (this run's steps)
    resumed_from: int = 0  # the global step of the checkpoint this run resumed from (0: from scratch)
    validation_rows: int = 0  # rows set aside from the training rows to choose the epoch (training.validation_fraction)
    validation_losses: list[float] = field(default_factory=list)  # after each epoch (and the last step)
    best_epoch: int = -1  # the epoch whose weights were kept (-1: no validation, the last weights)
    weighted: bool = False  # whether sample weights (retraining.recency_half_life) weighed the training loss
    start: str = "scratch"  # where the weights started: "scratch", "warm start from ...", or why not warm
    baseline: BaselineResult | None = None  # HistGradientBoosting on the same rows and holdout (training.baseline)
    refit_steps: int = 0  # optimizer steps of the refit on all training rows (training.refit; 0: none)

    def model(self) -> TabularNet:
        """The whole model with these weights, in eval mode."""
        with torch.random.fork_rng(devices=[]):  # build_model seeds the global RNG; keep the caller's
            net = build_model(self.spec, self.model_config, seed=0)
        net.load_state_dict(self.state)
        return net.eval()


@dataclass(frozen=True)
class LoopSettings:
    """What the training loop needs, the same in every rank."""

    epochs: int
    batch_size: int
    microbatches: int
    seed: int
    learning_rate: float
    weight_decay: float
    max_steps: int | None = None
    lr_schedule: str = "constant"
    warmup_fraction: float = 0.0
    min_lr_fraction: float = 1.0
    patience: int = 1
    min_delta: float = 0.0
    wide_lr_factor: float = 1.0

    def set_learning_rate(self, optimizer: torch.optim.Optimizer, step: int, total: int) -> None:
        """The schedule's learning rate for optimizer step `step` (from 0) of `total`: a function of the step alone,
        so every rank, and a resumed run, sets the same one."""
        lr = self.learning_rate * lr_factor(step, total, self.lr_schedule, self.warmup_fraction,
                                            self.min_lr_fraction)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_factor", 1.0)


@dataclass(frozen=True)
class RankJob:
    """Everything a rank needs; the tensors themselves travel through `folder`, not through pickle."""

    folder: Path
    spec_json: str
    model: ModelConfig
    pipeline: PipelineSettings
    loop: LoopSettings
    blocks: tuple[tuple[int, int], ...]  # per stage: its residual blocks (training.partition)
    checkpoint: CheckpointJob | None = None


class WeightedLoss(nn.Module):
    """The training loss with a weight per row: the target's first column is the label, its second the weight.

    The mean over the microbatch of weight x row loss, so each microbatch's loss is computed on its own rows alone,
    as every pipeline schedule needs (weights scaled to mean 1 keep the loss's size)."""

    def __init__(self, task: str) -> None:
        super().__init__()
        self.task = task

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        label, weight = target[:, 0], target[:, 1]
        if self.task == "classification":
            rows = functional.binary_cross_entropy_with_logits(output, label, reduction="none")
        else:
            rows = (output - label) ** 2
        return (rows * weight).mean()


def loss_module(task: str, weighted: bool = False) -> nn.Module:
    """BCE on logits for classification, MSE on the standardised target for regression; `weighted`: per-row
    weights in the target's second column (WeightedLoss)."""
    if weighted:
        return WeightedLoss(task)
    return nn.BCEWithLogitsLoss() if task == "classification" else nn.MSELoss()


def is_weighted(y: torch.Tensor) -> bool:
    """Whether a training target carries sample weights (a second column)."""
    return y.dim() == 2


def load_initial(modules: dict[int, nn.Module], initial: dict[str, torch.Tensor] | None) -> None:
    """Start each stage from `initial`'s weights (the whole model's names) instead of its random ones."""
    if not initial:
        return
    for module in modules.values():
        module.load_state_dict({name: initial[name] for name in module.state_dict()})


def make_optimizer(module: nn.Module, loop: LoopSettings) -> torch.optim.Optimizer:
    """AdamW over the parameters this process owns (elementwise, so splitting it over stages changes nothing); the
    wide path's parameters in a group of their own, at loop.wide_lr_factor times the learning rate."""
    named = list(module.named_parameters())
    wide = [p for name, p in named if WIDE_PARAMETER in name]
    deep = [p for name, p in named if WIDE_PARAMETER not in name]
    groups = [{"params": deep, "lr_factor": 1.0}]
    if wide:
        groups.append({"params": wide, "lr_factor": loop.wide_lr_factor})
    optimizer = torch.optim.AdamW(groups, lr=loop.learning_rate, weight_decay=loop.weight_decay)
    for group in optimizer.param_groups:
        group["lr"] = loop.learning_rate * group["lr_factor"]
    return optimizer


def epoch_order(rows: int, seed: int, epoch: int) -> torch.Tensor:
    """The row order of one epoch: the same in every rank, since it depends only on (seed, epoch)."""
    generator = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % 2**63)
    return torch.randperm(rows, generator=generator)


def step_loss(microbatch_losses: list[torch.Tensor]) -> float:
    """The batch's mean loss: the sum of the microbatch losses, each already divided by the microbatch count."""
    return float(sum(float(loss.detach()) for loss in microbatch_losses))


def total_steps(rows: int, loop: LoopSettings) -> int:
    """Optimizer steps of the whole run if nothing stops it early: every epoch, capped at training.max_steps."""
    steps = rows // loop.batch_size * loop.epochs
    return steps if loop.max_steps is None else min(steps, loop.max_steps)


def run_loop(step: StepFn, rows: int, loop: LoopSettings, report: Report | None = None, start: int = 0,
             after_step: AfterStep | None = None, losses: list[float] | None = None,
             end_epoch: EndEpoch | None = None) -> list[float]:
    """Run every epoch's full batches through `step` from global step `start` (a resumed run); returns the losses
    `step` reports (last stage only), appended to `losses` (a resumed run's earlier ones) when given.

    The last incomplete batch is dropped so that every step has the same static shapes. The position is all a
    resumed run needs: each epoch's order depends only on (seed, epoch). `end_epoch` runs after each epoch's last
    step (and after the run's last step, when training.max_steps ends it inside an epoch), before `after_step`, so
    that a checkpoint taken there holds that epoch's validation; when it answers True the run stops.
    """
    steps = rows // loop.batch_size
    losses = [] if losses is None else losses
    total = total_steps(rows, loop)
    if steps == 0 or start >= total:
        return losses
    for epoch in range(start // steps, loop.epochs):
        order = epoch_order(rows, loop.seed, epoch)
        for index in range(start - epoch * steps if epoch == start // steps else 0, steps):
            loss = step(order[index * loop.batch_size:(index + 1) * loop.batch_size])
            done = epoch * steps + index + 1
            if loss is not None:
                losses.append(loss)
                if report is not None:
                    report(epoch, done, loss)
            stop = end_epoch is not None and (index == steps - 1 or done == total) and end_epoch(epoch, done)
            if after_step is not None and not stop:  # a stopped run needs no checkpoint
                after_step(epoch, done)
            if stop or done == total:
                return losses
    return losses


def _single_process(x: torch.Tensor, y: torch.Tensor, spec: FeatureSpec, model_config: ModelConfig,
                    loop: LoopSettings, threads: int, device: torch.device, on_step: StepReport | None,
                    saving: CheckpointJob | None = None, xv: torch.Tensor | None = None,
                    yv: torch.Tensor | None = None,
                    initial: dict[str, torch.Tensor] | None = None) -> tuple[dict[str, torch.Tensor], list[float],
                                                                            dict[str, Any], EarlyStopping]:
    """Train the whole model here, accumulating gradients over microbatches exactly as the pipeline does; with
    validation rows (xv, yv), stop early and keep the best epoch's weights. `initial`: weights to start from."""
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    clock = StageClock([0], device)
    x, y = x.to(device), y.to(device)
    stopper = EarlyStopping(loop.patience, loop.min_delta)
    try:
        with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG as it was
            model = build_model(spec, model_config, loop.seed)
            load_initial({0: model}, initial)
            model = model.to(device).train()
            optimizer = make_optimizer(model, loop)
            loss_fn = ScaledLoss(loss_module(spec.task, is_weighted(y)), loop.microbatches)
            total = total_steps(len(x), loop)
            position = [0]  # optimizer steps done (set to the checkpoint's step on resume)

            def step(rows: torch.Tensor) -> float:
                started = clock.now()
                loop.set_learning_rate(optimizer, position[0], total)
                position[0] += 1
                optimizer.zero_grad(set_to_none=True)
                rows = rows.to(device)
                parts = []
                # tensor_split is how the schedules cut a batch into microbatches.
                for xb, yb in zip(x[rows].tensor_split(loop.microbatches), y[rows].tensor_split(loop.microbatches),
                                  strict=True):
                    with clock.span(0, "forward"):
                        out = model(xb)
                    loss = loss_fn(out, yb)
                    with clock.span(0, "backward"):
                        loss.backward()
                    parts.append(loss.detach())
                accumulated = clock.now()
                optimizer.step()
                clock.step_done(accumulated - started, clock.now() - started)
                return step_loss(parts)

            def report(epoch: int, index: int, loss: float) -> None:
                if on_step is not None:
                    on_step(epoch, index, loss, clock.steps[-1].seconds)

            # No process group here (nor needed): DCP reads and writes as a world of one.
            past, start = _resume({0: model}, optimizer, saving, last=True, distributed=False,
                                  stopper=stopper if xv is not None else None, steps=len(x) // loop.batch_size)
            position[0] = start

            def after_step(epoch: int, done: int) -> None:
                if saving is not None and saving.due(done, total):
                    state = checkpoint.rank_state({0: model}, optimizer, past, extra=_stopper_state(stopper))
                    checkpoint.save(saving, done, state, rank=0, stages=1, distributed=False)

            def end_epoch(epoch: int, done: int) -> bool:
                assert xv is not None and yv is not None
                loss = model_loss(model, xv.to(device), yv.to(device), spec.task, loop.batch_size)
                return stopper.record(loss, {0: model})

            losses = run_loop(step, len(x), loop, report, start, after_step, losses=past,
                              end_epoch=end_epoch if xv is not None else None)
            stopper.restore({0: model})
    finally:
        torch.set_num_threads(previous_threads)
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}, losses, clock.to_json(), stopper


def _injected_failure(rank: int) -> None:
    """The test hook behind FAIL_RANK_ENV."""
    if os.environ.get(FAIL_RANK_ENV, "") == str(rank):
        raise RuntimeError(f"injected failure ({FAIL_RANK_ENV}={rank})")


def _stopper_state(stopper: EarlyStopping) -> dict[str, torch.Tensor]:
    """What a checkpoint keeps of early stopping: the validation losses so far and this rank's best weights."""
    if not stopper.losses:
        return {}
    state = {"loop.validation": torch.tensor(stopper.losses, dtype=torch.float64)}
    if stopper.best_state is not None:
        state.update({f"best.{name}": tensor for name, tensor in stopper.best_state.items()})
    return state


def _resume(modules: dict[int, nn.Module], optimizer: torch.optim.Optimizer, saving: CheckpointJob | None, *,
            last: bool, distributed: bool, stopper: EarlyStopping | None = None,
            steps: int = 1) -> tuple[list[float], int]:
    """Load the checkpoint to resume from, if any: (the losses before it, on the last stage's rank; its step).

    With early stopping (`stopper`), also its validation losses (one per epoch finished: the checkpoint's step over
    `steps`, the steps per epoch) and this rank's best weights, into `stopper`."""
    if saving is None or saving.resume is None:
        return [], 0
    extra: dict[str, torch.Tensor] = {}
    epochs_done = saving.resume.step // max(1, steps)
    if stopper is not None and epochs_done:
        extra["loop.validation"] = torch.zeros(epochs_done, dtype=torch.float64)
        best = {name: torch.empty_like(tensor) for name, tensor in
                {n: t for s in sorted(modules) for n, t in modules[s].state_dict().items()}.items()}
        extra.update({f"best.{name}": tensor for name, tensor in best.items()})
    losses = checkpoint.load(saving.resume, modules, optimizer, with_losses=last, distributed=distributed,
                             extra=extra)
    if stopper is not None and epochs_done:
        stopper.losses = extra["loop.validation"].tolist()
        stopper.best_state = {name[len("best."):]: tensor for name, tensor in extra.items()
                              if name.startswith("best.")}
    return losses, saving.resume.step


def pipeline_rank(rank: int, world_size: int, job: RankJob, messages: Any) -> None:
    """One rank: build only the stages it owns (with the whole model's initial weights), resume them from a
    checkpoint if there is one, train them with the schedule, save checkpoints on the way, and leave the rank's
    weights, timings (and the losses, on the last stage's rank) in job.folder."""
    settings = job.pipeline
    device = rank_device(settings, rank)
    data = load_file(str(job.folder / DATA))
    x, y = data["x"].to(device), data["y"].to(device)
    xv, yv = (data["xv"].to(device), data["yv"].to(device)) if len(data.get("xv", ())) else (None, None)
    spec = FeatureSpec.from_json(job.spec_json)
    local = settings.rank_stages(rank)
    ranges = [range(start, stop) for start, stop in job.blocks]
    # Same seed everywhere: each stage gets exactly the whole model's initial weights, built for itself alone.
    modules = {stage: build_stage(spec, job.model, job.loop.seed, stage, settings.stages, ranges) for stage in local}
    load_initial(modules, {name[len(INITIAL_PREFIX):]: tensor for name, tensor in data.items()
                           if name.startswith(INITIAL_PREFIX)})
    modules = {stage: module.to(device).train() for stage, module in modules.items()}
    clock = StageClock(local, device)
    schedule = build_schedule(modules, settings, loss_module(spec.task, is_weighted(y)), width=spec.width,
                              hidden=activation_width(job.model),
                              device=device, clock=clock)
    optimizer = make_optimizer(nn.ModuleList(modules[s] for s in local), job.loop)
    first, last = 0 in modules, settings.stages - 1 in modules
    saving = job.checkpoint
    stopper = EarlyStopping(job.loop.patience, job.loop.min_delta)
    past, start = _resume(modules, optimizer, saving, last=last, distributed=True,
                          stopper=stopper if xv is not None else None, steps=len(x) // job.loop.batch_size)
    total = total_steps(len(x), job.loop)
    position = [start]  # global steps done so far (the kill hook's clock)
    owners = [settings.stage_rank(stage) for stage in range(settings.stages)]

    def step(rows: torch.Tensor) -> float | None:
        _injected_failure(rank)
        checkpoint.injected_kill(rank, position[0] + 1)
        job.loop.set_learning_rate(optimizer, position[0], total)
        position[0] += 1
        started = clock.now()
        optimizer.zero_grad(set_to_none=True)
        rows = rows.to(device)
        losses: list[torch.Tensor] | None = [] if last else None
        args = (x[rows],) if first else ()
        schedule.step(*args, target=y[rows] if last else None, losses=losses, return_outputs=False)
        scheduled = clock.now()
        optimizer.step()
        clock.step_done(scheduled - started, clock.now() - started)
        return step_loss(losses) if losses is not None else None

    def report(epoch: int, index: int, loss: float) -> None:
        messages.put((epoch, index, loss, clock.steps[-1].seconds))

    def after_step(epoch: int, done: int) -> None:
        if saving is not None and saving.due(done, total):
            state = checkpoint.rank_state(modules, optimizer, past if last else None, extra=_stopper_state(stopper))
            checkpoint.save(saving, done, state, rank=rank, stages=settings.stages, distributed=True)

    def end_epoch(epoch: int, done: int) -> bool:
        assert xv is not None and yv is not None
        # Every rank gets the same loss (broadcast), so every rank takes the same decision.
        loss = staged_loss(modules, owners, xv, yv, spec.task, job.loop.batch_size, activation_width(job.model),
                           device)
        return stopper.record(loss, modules)

    # `past` grows with this run's losses: a checkpoint holds every loss since the first step.
    losses = run_loop(step, len(x), job.loop, report if last and messages is not None else None, start, after_step,
                      losses=past, end_epoch=end_epoch if xv is not None else None)
    stopper.restore(modules)
    state = {k: v.detach().cpu().contiguous() for s in local for k, v in modules[s].state_dict().items()}
    save_file(state, str(job.folder / f"rank{rank}.safetensors"))
    (job.folder / f"telemetry{rank}.json").write_text(json.dumps(clock.to_json()))
    if last:
        (job.folder / LOSSES).write_text(json.dumps(losses))
        (job.folder / VALIDATION).write_text(json.dumps(stopper.losses))


def merge_ranks(folder: Path, ranks: int, expected: list[str]) -> dict[str, torch.Tensor]:
    """The whole model's state from the ranks' files; TrainingError if a name is missing, extra or doubled."""
    return merge_parts([load_file(str(folder / f"rank{rank}.safetensors")) for rank in range(ranks)], expected)


def merge_parts(parts: list[dict[str, torch.Tensor]], expected: list[str]) -> dict[str, torch.Tensor]:
    """The whole model's state from each rank's part (in rank order); TrainingError if a name is missing, extra
    or doubled."""
    state: dict[str, torch.Tensor] = {}
    for rank, part in enumerate(parts):
        doubled = sorted(set(part) & set(state))
        if doubled:
            raise TrainingError(f"rank {rank} saved parameters another rank also owns: {doubled[:3]}")
        state.update(part)
    if sorted(state) != sorted(expected):
        missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        raise TrainingError(f"merged stage weights do not match the model: missing {missing[:3]}, extra {extra[:3]}")
    return {name: state[name] for name in expected}


def _data_file(folder: Path, x: torch.Tensor, y: torch.Tensor, validation: tuple[torch.Tensor, torch.Tensor],
               initial: dict[str, torch.Tensor] | None = None) -> None:
    """The rows every rank reads: training (x, y) and validation (xv, yv; empty without a validation split), and
    the weights to start from (warm start), if any."""
    xv, yv = validation
    tensors = {"x": x.contiguous(), "y": y.contiguous(), "xv": xv.contiguous(), "yv": yv.contiguous()}
    tensors.update({INITIAL_PREFIX + name: tensor.contiguous() for name, tensor in (initial or {}).items()})
    save_file(tensors, str(folder / DATA))


def _pipelined(x: torch.Tensor, y: torch.Tensor, spec: FeatureSpec, config: Config, settings: PipelineSettings,
               partition: Partition, loop: LoopSettings, on_step: StepReport, saving: CheckpointJob | None = None,
               validation: tuple[torch.Tensor, torch.Tensor] | None = None,
               initial: dict[str, torch.Tensor] | None = None) -> tuple[dict[str, torch.Tensor], list[float],
                                                                       list[dict[str, Any]], list[float]]:
    """Train the stages on their ranks (processes here, or this process) and merge their weights and timings;
    also returns the validation losses (one per epoch; empty without validation rows). `initial`: weights to
    start from."""
    with tempfile.TemporaryDirectory(prefix="driftloop-train-") as tmp:
        folder = Path(tmp)
        _data_file(folder, x, y, validation or _no_validation(x), initial)
        job = RankJob(folder, spec.to_json(), config.model, settings, loop, partition.blocks, saving)
        backend = "nccl" if settings.device == "cuda" and settings.launcher == "local" else "gloo"
        setup = RankSetup(settings.ranks, free_port(), config.training.threads_per_rank, config.training.timeout_s,
                          folder, backend)
        start = run_here if settings.launcher == "single_process" else launch
        start(pipeline_rank, job, setup, lambda item: on_step(*item))
        with torch.random.fork_rng(devices=[]):
            expected = list(build_model(spec, config.model, 0).state_dict())
        state = merge_ranks(folder, settings.ranks, expected)
        losses = json.loads((folder / LOSSES).read_text())
        validated = json.loads((folder / VALIDATION).read_text())
        timings = [json.loads((folder / f"telemetry{rank}.json").read_text()) for rank in range(settings.ranks)]
    return state, losses, timings, validated


def with_weights(frame: pd.DataFrame, weights: np.ndarray) -> pd.DataFrame:
    """`frame` with its rows' sample weights in WEIGHT_COLUMN, so that every split carries them along; TrainingError
    unless there is one finite, non-negative weight per row and some are positive."""
    weights = np.asarray(weights, dtype="float64")
    if weights.shape != (len(frame),):
        raise TrainingError(f"sample weights: {weights.size} given for {len(frame)} training rows")
    if not np.isfinite(weights).all() or (weights < 0).any() or not (weights > 0).any():
        raise TrainingError("sample weights must be finite, non-negative and not all zero")
    return frame.assign(**{WEIGHT_COLUMN: weights})


def _no_validation(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Empty validation tensors (no split): the ranks then train every epoch."""
    return x[:0], torch.zeros(0)


def _torchrun(x: torch.Tensor, y: torch.Tensor, spec: FeatureSpec, config: Config, settings: PipelineSettings,
              partition: Partition, loop: LoopSettings, saving: CheckpointJob,
              validation: tuple[torch.Tensor, torch.Tensor] | None = None,
              initial: dict[str, torch.Tensor] | None = None) -> tuple[dict[str, torch.Tensor],
                                                                                    list[float],
                                                                                    list[dict[str, Any]], Partition,
                                                                                    CheckpointJob, list[float]]:
    """This worker's rank of the pipeline torchrun started (training.launcher torchrun); every worker returns the
    whole run: merged weights, losses, timings, and rank 0's partition and checkpoint, which all ranks used."""
    t = config.training
    created = join_torchrun(settings.ranks, "nccl" if settings.device == "cuda" else "gloo", t.threads_per_rank,
                            t.timeout_s)
    try:
        rank, world = dist.get_rank(), dist.get_world_size()
        # Rank 0 decides: a measured ("time") partition differs from machine to machine, and so could the view of
        # the checkpoint folder while another node writes.
        agreed: list[Any] = [partition, saving]
        dist.broadcast_object_list(agreed, src=0)
        partition, saving = agreed
        with tempfile.TemporaryDirectory(prefix="driftloop-torchrun-") as tmp:
            folder = Path(tmp)
            _data_file(folder, x, y, validation or _no_validation(x), initial)
            job = RankJob(folder, spec.to_json(), config.model, settings, loop, partition.blocks, saving)
            pipeline_rank(rank, world, job, None)
            mine = (load_file(str(folder / f"rank{rank}.safetensors")),
                    json.loads((folder / f"telemetry{rank}.json").read_text()),
                    json.loads((folder / LOSSES).read_text()) if (folder / LOSSES).is_file() else None,
                    json.loads((folder / VALIDATION).read_text()) if (folder / VALIDATION).is_file() else None)
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, mine)
    finally:
        if created:
            dist.destroy_process_group()
    with torch.random.fork_rng(devices=[]):
        expected = list(build_model(spec, config.model, 0).state_dict())
    state = merge_parts([part for part, _, _, _ in gathered], expected)
    losses = next(found for _, _, found, _ in gathered if found is not None)
    validated = next(found for _, _, _, found in gathered if found is not None)
    return state, losses, [timing for _, timing, _, _ in gathered], partition, saving, validated


def holdout_metrics(net: TabularNet, spec: FeatureSpec, holdout: pd.DataFrame) -> dict[str, float]:
    """driftloop.scoring.score on the holdout, plus the training loss there (`holdout_loss`)."""
    # Imported here: scikit-learn costs each spawned rank most of a second and only the parent scores.
    from driftloop.scoring import score

    if holdout.empty:
        return {}
    metrics = score(numeric_column(holdout, spec.target), predict(net, spec, holdout), spec.task)
    with torch.inference_mode():
        loss = loss_module(spec.task)(net(encode(holdout, spec)), encode_target(holdout, spec))
    return {**metrics, "holdout_loss": float(loss)}


class _ProgressView:
    """A rich progress bar on stderr (stdout stays free for --json); a no-op when quiet."""

    def __init__(self, enabled: bool, total: int, epochs: int, label: str, batch_size: int) -> None:
        self.epochs = epochs
        self.batch_size = batch_size
        self.bar: Progress | None = None
        if enabled:
            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("epoch {task.fields[epoch]}/{task.fields[epochs]}"),
                                TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[rate]} rows/s"),
                                TimeElapsedColumn(), console=Console(stderr=True))
            self.task = self.bar.add_task(label, total=total, epoch=0, epochs=epochs, loss="-", rate="-")

    def __enter__(self) -> _ProgressView:
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    def update(self, epoch: int, index: int, loss: float, seconds: float) -> None:
        """One training step done."""
        if self.bar is not None:
            rate = f"{self.batch_size / seconds:,.0f}" if seconds > 0 else "-"
            self.bar.update(self.task, completed=index, epoch=epoch + 1, loss=f"{loss:.4f}", rate=rate)


def fitted_batch_size(batch_size: int, rows: int, microbatches: int, min_epoch_steps: int = 1) -> int:
    """training.batch_size, shrunk for a small dataset to the largest multiple of the microbatches that gives an
    epoch at least `min_epoch_steps` steps (training.min_epoch_steps), and never below one microbatch per row."""
    if rows < microbatches:
        raise TrainingError(f"training data has {rows} rows, fewer than training.microbatches ({microbatches}): "
                            "train on more rows")
    fitting = max(rows // max(1, min_epoch_steps), microbatches)
    if fitting >= batch_size:
        return batch_size
    return fitting // microbatches * microbatches


def _partition(settings: PipelineSettings, spec: FeatureSpec, config: Config, x: torch.Tensor, y: torch.Tensor,
               loop: LoopSettings) -> Partition:
    """Each stage's blocks by training.partition; "time" profiles the first microbatch once, here."""
    rows = epoch_order(len(x), loop.seed, 0)[:settings.microbatch_size]
    device = rank_device(settings, 0)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(config.training.threads_per_rank)  # time each unit as a rank will run it
    try:
        with torch.random.fork_rng(devices=[]):  # building and profiling draw random numbers: not the caller's
            model = build_model(spec, config.model, loop.seed).to(device).train()
            return plan_partition(settings.partition, model, settings.stages,
                                  (x[rows].to(device), y[rows].to(device)), loss_module(spec.task, is_weighted(y)))
    finally:
        torch.set_num_threads(previous_threads)


def _exporter(config: Config, settings: PipelineSettings) -> TrainingExporter:
    """The Prometheus textfile of this run under state_dir, described by its pipeline set-up."""
    exporter = TrainingExporter(state_path(config, *METRICS_FILE), config.model.name, settings.batch_size)
    exporter.start({"schedule": settings.schedule, "stages": str(settings.stages),
                    "stages_per_rank": str(settings.stages_per_rank), "ranks": str(settings.ranks),
                    "microbatches": str(settings.microbatches), "launcher": settings.launcher,
                    "device": settings.device, "partition": settings.partition})
    return exporter


def checkpoint_job(config: Config, spec: FeatureSpec, loop: LoopSettings, x: torch.Tensor,
                   y: torch.Tensor, start: str = "scratch") -> CheckpointJob:
    """This run's checkpoint folder and interval, and the checkpoint to resume from (training.resume); `start`
    (where the weights start) is part of the run's identity."""
    trajectory: dict[str, Any] = {"batch_size": loop.batch_size, "seed": loop.seed,
                                  "learning_rate": loop.learning_rate, "weight_decay": loop.weight_decay}
    if start != "scratch":
        trajectory["start"] = start
    if loop.lr_schedule != "constant":  # the schedule's length shapes every step's learning rate
        trajectory.update(lr_schedule=loop.lr_schedule, warmup_fraction=loop.warmup_fraction,
                          min_lr_fraction=loop.min_lr_fraction, steps=total_steps(len(x), loop))
    key = checkpoint.run_key(spec.to_json(), config.model.model_dump_json(), trajectory, x, y)
    folder = state_path(config, "checkpoints", key, "x").parent
    return CheckpointJob(folder, config.training.checkpoint_every, checkpoint.prepare(folder, config.training.resume))


def encoded(frame: pd.DataFrame, spec: FeatureSpec, weights: np.ndarray | None) -> tuple[torch.Tensor,
                                                                                         torch.Tensor]:
    """The rows' input and target tensors; with sample weights, the target's second column holds them."""
    x, y = encode(frame, spec), encode_target(frame, spec)
    if weights is not None:
        y = torch.stack([y, torch.from_numpy(weights)], dim=1)
    return x, y


def refit_loop(loop: LoopSettings, best_epoch: int, fit_rows: int, all_rows: int) -> LoopSettings:
    """The refit's loop (training.refit): the epochs the kept weights had trained, over all `all_rows` rows, with
    the learning-rate schedule over that run, and never more than training.max_steps. When max_steps ended the
    first run inside the kept epoch, the refit stops at as many steps scaled by the rows."""
    per_epoch = fit_rows // loop.batch_size
    kept = min((best_epoch + 1) * per_epoch, total_steps(fit_rows, loop))
    cap = loop.max_steps
    if kept < (best_epoch + 1) * per_epoch:
        scaled = max(1, math.ceil(kept * all_rows / fit_rows))
        cap = scaled if cap is None else min(cap, scaled)
    return replace(loop, epochs=best_epoch + 1, max_steps=cap)


@dataclass
class _Run:
    """One training pass on the launcher of the settings, with the run's progress bar and metrics file."""

    config: Config
    settings: PipelineSettings
    partition: Partition
    exporter: TrainingExporter
    progress: bool
    label: str

    def fit(self, x: torch.Tensor, y: torch.Tensor, spec: FeatureSpec, loop: LoopSettings, saving: CheckpointJob,
            validation: tuple[torch.Tensor, torch.Tensor] | None,
            initial: dict[str, torch.Tensor] | None) -> tuple[dict[str, torch.Tensor], list[float],
                                                              list[dict[str, Any]], list[float], Partition,
                                                              CheckpointJob]:
        """Train (x, y) with `loop`; (weights, losses, timings, validation losses, partition, checkpoint job)."""
        config, settings, partition = self.config, self.settings, self.partition
        t = config.training
        with _ProgressView(self.progress, total_steps(len(x), loop), loop.epochs, self.label,
                           loop.batch_size) as view:

            def on_step(epoch: int, index: int, loss: float, seconds: float) -> None:
                view.update(epoch, index, loss, seconds)
                self.exporter.step(epoch, index, loss, seconds)

            if settings.stages == 1:
                xv, yv = validation if validation is not None else (None, None)
                state, losses, timing, stopper = _single_process(x, y, spec, config.model, loop, t.threads_per_rank,
                                                                 rank_device(settings, 0), on_step, saving, xv, yv,
                                                                 initial)
                return state, losses, [timing], stopper.losses, partition, saving
            if settings.launcher == "torchrun":
                state, losses, timings, partition, saving, validated = _torchrun(x, y, spec, config, settings,
                                                                                 partition, loop, saving,
                                                                                 validation, initial)
                return state, losses, timings, validated, partition, saving
            state, losses, timings, validated = _pipelined(x, y, spec, config, settings, partition, loop, on_step,
                                                           saving, validation, initial)
            return state, losses, timings, validated, partition, saving


def train(frame: pd.DataFrame, config: Config, holdout: pd.DataFrame | None = None, *, stages: int | None = None,
          schedule: str | None = None, microbatches: int | None = None, seed: int | None = None,
          progress: bool = True, sample_weights: np.ndarray | None = None,
          warm_start: WarmStart | None = None) -> TrainResult:
    """Train on time-ordered `frame`; the holdout is `holdout` or else the latest training.holdout_fraction of rows.

    training.validation_fraction of the remaining rows (the latest with data.timestamp, else a random draw) choose
    the epoch: the run stops after training.patience epochs without a better validation loss and keeps the best
    epoch's weights. The learning rate follows training.lr_schedule.

    Keyword arguments override config.training. stages == 1 trains the whole model in this process; more stages
    run torch's pipeline schedule over training.launcher's ranks. Every setting is checked before any process
    starts. Measurements go to TrainResult.telemetry and to state_dir/metrics/training.prom.

    With training.checkpoint_every, checkpoints go to state_dir/checkpoints/<run key>/; a run started again on
    the same data and settings resumes from its last one (training.resume auto), with any number of stages.
    The checkpoints are deleted once the run has finished.

    `sample_weights` (one per row of `frame`, e.g. the retraining data policy's recency weights) weigh each row's
    training loss; validation and holdout figures stay unweighted. `warm_start`: earlier weights to continue from,
    used when they fit the new rows (training/warm_start.py; TrainResult.start says which).
    """
    started = time.perf_counter()
    t = config.training
    settings = check_settings(config, stages=stages, schedule=schedule, microbatches=microbatches)
    columns = config.data.features + [config.data.target]
    require_columns(frame, columns, "training data")
    if sample_weights is not None:
        frame = with_weights(frame, sample_weights)
    if holdout is None:
        if len(frame) < 2:
            raise TrainingError(f"training data has {len(frame)} row(s): too few to hold any out")
        frame, holdout = split_by_fraction(frame, t.holdout_fraction)
    else:
        require_columns(holdout, columns, "holdout data")
    seed = t.seed if seed is None else seed
    baseline_rows = frame  # the baseline fits every training row, the network's validation rows too
    frame, held = validation_split(frame, t.validation_fraction, config.data.timestamp, seed)
    weights = frame.pop(WEIGHT_COLUMN).to_numpy(dtype="float32") if sample_weights is not None else None
    held = held.drop(columns=WEIGHT_COLUMN, errors="ignore")
    holdout = holdout.drop(columns=WEIGHT_COLUMN, errors="ignore")
    batch_size = fitted_batch_size(t.batch_size, len(frame), settings.microbatches, t.min_epoch_steps)
    settings = replace(settings, batch_size=batch_size)
    loop = LoopSettings(t.epochs, batch_size, settings.microbatches, seed, t.learning_rate, t.weight_decay,
                        max_steps=t.max_steps, lr_schedule=t.lr_schedule, warmup_fraction=t.warmup_fraction,
                        min_lr_fraction=t.min_lr_fraction, patience=t.patience, min_delta=t.min_delta,
                        wide_lr_factor=t.wide_lr_factor)

    begin = start_point(fit_spec(frame, config.data, config.model), warm_start, config.model)
    spec = begin.spec
    x, y = encoded(frame, spec, weights)
    validation = (encode(held, spec), encode_target(held, spec)) if len(held) else None
    partition = _partition(settings, spec, config, x, y, loop)
    saving = checkpoint_job(config, spec, loop, x, y, begin.note)
    steps = total_steps(len(frame), loop)
    if saving.resume is not None and saving.resume.step > steps:
        raise TrainingError(f"the checkpoint in {saving.resume.path} is past the end of this run ({steps} steps): "
                            "raise training.epochs, or set training.resume never to start afresh")
    label = "training" if settings.stages == 1 else f"training ({settings.stages} stages, {settings.schedule})"
    exporter = _exporter(config, settings)
    run = _Run(config, settings, partition, exporter, progress, label)
    state, losses, timings, validated, partition, saving = run.fit(x, y, spec, loop, saving, validation, begin.state)
    resumed_from = saving.resume.step if saving.resume else 0
    best_epoch = EarlyStopping(loop.patience, loop.min_delta, validated).best_epoch
    fitted, refit_steps, folders = frame, 0, [saving.folder]
    if t.refit and validation is not None and best_epoch >= 0:
        # The epoch is chosen; now every training row (the validation rows are the time-latest) trains that long.
        fitted = baseline_rows.drop(columns=WEIGHT_COLUMN, errors="ignore")
        refit_weights = baseline_rows[WEIGHT_COLUMN].to_numpy(dtype="float32") if weights is not None else None
        begin = start_point(fit_spec(fitted, config.data, config.model), warm_start, config.model)
        spec = begin.spec
        x, y = encoded(fitted, spec, refit_weights)
        loop = refit_loop(loop, best_epoch, len(frame), len(fitted))
        saving = checkpoint_job(config, spec, loop, x, y, begin.note)
        run.label = f"{label}: refit on all {len(fitted):,} rows"
        state, losses, timings, _, partition, saving = run.fit(x, y, spec, loop, saving, None, begin.state)
        refit_steps, resumed_from = len(losses), saving.resume.step if saving.resume else 0
        folders.append(saving.folder)
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)  # finished: nothing left to resume
    telemetry = summarize(timings, settings.stages, batch_size)
    exporter.finish(telemetry, partition.costs, partition.unit, partition.imbalance)

    per_epoch = len(fitted) // batch_size
    last_epoch = losses[-per_epoch:]  # fewer when training.max_steps ended the run inside its first epoch
    final_loss = float(sum(last_epoch) / len(last_epoch)) if last_epoch else math.nan
    result = TrainResult(state=state, spec=spec, final_loss=final_loss, losses=losses, metrics={},
                         stages=settings.stages, schedule=settings.schedule, microbatches=settings.microbatches,
                         train_rows=len(fitted), holdout_rows=len(holdout), seconds=0.0, model_config=config.model,
                         stages_per_rank=settings.stages_per_rank, ranks=settings.ranks,
                         launcher=settings.launcher, device=settings.device, partition=partition,
                         telemetry=telemetry, resumed_from=resumed_from,
                         validation_rows=len(held), validation_losses=validated, best_epoch=best_epoch,
                         weighted=weights is not None, start=begin.note, refit_steps=refit_steps)
    metrics = holdout_metrics(result.model(), spec, holdout)
    baseline = None
    if t.baseline:
        weights_all = baseline_rows[WEIGHT_COLUMN].to_numpy() if WEIGHT_COLUMN in baseline_rows else None
        baseline = fit_baseline(baseline_rows, holdout, spec, seed, weights_all, t.threads_per_rank)
    return replace(result, metrics=metrics, baseline=baseline, seconds=time.perf_counter() - started)
