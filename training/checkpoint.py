"""Checkpoints of a training run with torch.distributed.checkpoint (DCP), and resuming from them.

A checkpoint holds, under the whole model's parameter names, the weights (`model.<name>`), the AdamW state
(`optim.<name>.<exp_avg|exp_avg_sq|step>`), the losses so far (`loop.losses`, from the rank with the last stage)
and, in `progress.json`, the loop position (the global step; the epoch follows from it). Each rank saves and loads
only the keys of the stages it owns, so a checkpoint taken with N stages resumes with M: DCP's default planner
loads a subset of a checkpoint's keys. No random state is saved: the row order depends only on (seed, epoch), and
with dropout 0 nothing else draws random numbers while training.

Atomic: every rank writes into `step-N.partial/`; once DCP has returned on every rank (its last collective runs
after all ranks have written), rank 0 adds progress.json and renames the folder to `step-N/`. A rename is atomic,
so a folder named `step-N` is complete, and a run killed while writing leaves only a `.partial` folder, which is
ignored and removed at the next start.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from driftloop.errors import TrainingError

PROGRESS = "progress.json"
PARTIAL = ".partial"
KEEP = 2  # complete checkpoints kept per run: the newest, and one before it
# Test hook: "RANK:STEP" makes that rank SIGKILL itself at the start of global step STEP (counted from 1).
KILL_AT_ENV = "DRIFTLOOP_KILL_RANK_AT"
_STEP_FOLDER = re.compile(r"^step-(\d+)$")


@dataclass(frozen=True)
class Checkpoint:
    """One complete checkpoint on disk."""

    path: Path
    step: int  # optimizer steps done when it was taken
    stages: int  # how many stages the run that took it had (informative: any count can resume it)


@dataclass(frozen=True)
class CheckpointJob:
    """What every rank needs to save and resume: the run's folder, the interval, where to resume from."""

    folder: Path  # state_dir/checkpoints/<run key>
    every: int  # training.checkpoint_every; 0 = never save
    resume: Checkpoint | None = None

    def due(self, step: int, total: int) -> bool:
        """Whether to save after global step `step` (not after the last one: the run's result is saved anyway)."""
        return self.every > 0 and step % self.every == 0 and step < total


def run_key(spec_json: str, model_json: str, trajectory: Mapping[str, object], x: torch.Tensor,
            y: torch.Tensor) -> str:
    """What makes two runs the same run: feature spec, network, optimisation settings and the data itself.

    The stage count, schedule, launcher, partition and epoch count are left out on purpose: a run may resume with
    other stages, and with more epochs it continues the same trajectory.
    """
    digest = hashlib.sha256()
    for text in (spec_json, model_json, json.dumps(dict(trajectory), sort_keys=True)):
        digest.update(text.encode())
    for tensor in (x, y):
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def complete_checkpoints(folder: Path) -> list[Checkpoint]:
    """The complete checkpoints in `folder`, oldest first (a folder without progress.json or DCP's metadata is
    not one)."""
    found = []
    if not folder.is_dir():
        return found
    for path in folder.iterdir():
        match = _STEP_FOLDER.match(path.name)
        if not (match and path.is_dir() and (path / PROGRESS).is_file() and (path / ".metadata").is_file()):
            continue
        try:
            progress = json.loads((path / PROGRESS).read_text())
        except (OSError, ValueError):
            continue
        found.append(Checkpoint(path, int(match.group(1)), int(progress.get("stages", 0))))
    return sorted(found, key=lambda c: c.step)


def prepare(folder: Path, resume: str) -> Checkpoint | None:
    """Before any rank starts: the checkpoint to resume from (training.resume auto), or a clean slate (never).

    Leftovers of an interrupted save (`.partial` folders) are removed either way.
    """
    if resume == "never":
        shutil.rmtree(folder, ignore_errors=True)
        return None
    if folder.is_dir():
        for path in folder.glob(f"*{PARTIAL}"):
            shutil.rmtree(path, ignore_errors=True)
    found = complete_checkpoints(folder)
    return found[-1] if found else None


@contextmanager
def _quiet(distributed: bool) -> Iterator[None]:
    """Without a process group DCP warns that it assumes one process, on every call: that is the intent here."""
    with warnings.catch_warnings():
        if not distributed:
            warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
        yield


def _named_parameters(modules: Mapping[int, nn.Module]) -> list[tuple[str, nn.Parameter]]:
    """This rank's parameters under the whole model's names, in stage order."""
    return [(name, p) for stage in sorted(modules) for name, p in modules[stage].named_parameters()]


def rank_state(modules: Mapping[int, nn.Module], optimizer: torch.optim.Optimizer,
               losses: Sequence[float] | None, extra: Mapping[str, torch.Tensor] | None = None) -> dict[str,
                                                                                                  torch.Tensor]:
    """The keys this rank saves: its stages' weights and AdamW state, the losses if it has the last stage, and
    `extra` (early stopping's validation losses and best weights, `loop.validation` and `best.<name>`)."""
    state = {f"model.{name}": tensor for stage in sorted(modules)
             for name, tensor in modules[stage].state_dict().items()}
    for name, param in _named_parameters(modules):
        for key, value in optimizer.state.get(param, {}).items():
            state[f"optim.{name}.{key}"] = value
    if losses is not None:
        state["loop.losses"] = torch.tensor(list(losses), dtype=torch.float64)
    state.update(extra or {})
    return state


def save(job: CheckpointJob, step: int, state: dict[str, torch.Tensor], *, rank: int, stages: int,
         distributed: bool) -> None:
    """Write one checkpoint of global step `step`; every rank of the group calls it (a collective)."""
    import torch.distributed.checkpoint as dcp  # here: its import costs every rank a second, checkpoints or not

    partial = job.folder / f"step-{step}{PARTIAL}"
    with _quiet(distributed):
        dcp.save(state, checkpoint_id=str(partial), no_dist=not distributed)
    if rank != 0:
        return
    (partial / PROGRESS).write_text(json.dumps({"step": step, "stages": stages, "time": time.time()}))
    final = job.folder / f"step-{step}"
    shutil.rmtree(final, ignore_errors=True)  # a stale one from an earlier attempt at the same run
    partial.rename(final)
    for old in complete_checkpoints(job.folder)[:-KEEP]:
        shutil.rmtree(old.path, ignore_errors=True)


def load(checkpoint: Checkpoint, modules: Mapping[int, nn.Module], optimizer: torch.optim.Optimizer, *,
         with_losses: bool, distributed: bool, extra: Mapping[str, torch.Tensor] | None = None) -> list[float]:
    """Load this rank's keys from `checkpoint` into its stages and optimizer, and into the tensors of `extra` (in
    place); returns the losses so far (empty unless `with_losses`). Every rank of the group calls it (a
    collective)."""
    import torch.distributed.checkpoint as dcp

    named = _named_parameters(modules)
    state = {f"model.{name}": tensor for stage in sorted(modules)
             for name, tensor in modules[stage].state_dict().items()}
    moments: dict[str, dict[str, torch.Tensor]] = {}
    for name, param in named:
        # AdamW's own layout (torch.optim.adamw, not capturable, not fused): a float32 step count on the CPU.
        moments[name] = {"step": torch.zeros((), dtype=torch.float32),
                         "exp_avg": torch.zeros_like(param, memory_format=torch.preserve_format),
                         "exp_avg_sq": torch.zeros_like(param, memory_format=torch.preserve_format)}
        state.update({f"optim.{name}.{key}": value for key, value in moments[name].items()})
    if with_losses:
        state["loop.losses"] = torch.zeros(checkpoint.step, dtype=torch.float64)
    state.update(extra or {})
    try:
        with torch.no_grad(), _quiet(distributed):  # DCP copies into the parameters in place
            dcp.load(state, checkpoint_id=str(checkpoint.path), no_dist=not distributed)
    except Exception as error:  # DCP wraps each rank's failure in its own exception types
        raise TrainingError(f"checkpoint {checkpoint.path} does not fit this run ({type(error).__name__}: "
                            f"{str(error).strip().splitlines()[0] if str(error).strip() else ''}): set "
                            "training.resume never to start afresh") from None
    for name, param in named:
        optimizer.state[param] = moments[name]
    return state["loop.losses"].tolist() if with_losses else []


def injected_kill(rank: int, step: int) -> None:
    """The test hook behind KILL_AT_ENV: die like a node that loses power, with no chance to clean up."""
    target = os.environ.get(KILL_AT_ENV, "")
    if target == f"{rank}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)
