"""Everything about torch.distributed.pipelining: the settings and rules of each schedule, which stages each rank
runs, the timed stages and the schedule of one rank.

Pitfalls this file guards against (docs/concepts/pipeline.md):
- schedules are built with `scale_grads=False` and the loss is divided by the microbatch count here, because
  torch's own gradient scaling is wrong under gradient accumulation (torchtitan #1733);
- stages are given static example shapes, so no stage runs shape inference on real data;
- every stage keeps the whole model's parameter names (training.model.cut_stage);
- each schedule's rules (read from torch 2.13's schedules.py, and checked against its constructors by
  tests/test_training.py) are checked in the parent, before any process starts.

The zero-bubble schedules (InterleavedZeroBubble, ZBVZeroBubble, DualPipeV) split each backward into an input-grad
and a weight-grad step (torch's stage_backward_input / stage_backward_weight, which walk the autograd graph). That
needs: a stage input that requires grad (the static examples below say so; otherwise nothing reaches earlier
stages), no torch.compile on the stage module (torch refuses it), and stage outputs that are not views (torch
detaches them in place). The first stage has no input gradient to compute: torch runs its whole backward at the
weight-grad step.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from driftloop.config import SCHEDULES, Config
from driftloop.errors import TrainingError
from driftloop.training.telemetry import StageClock

if TYPE_CHECKING:
    from torch.distributed.pipelining.schedules import _PipelineSchedule

# torch.distributed.pipelining (with DTensor and sympy: a second of CPU) is imported only where a schedule is built,
# in the ranks (the fork server preloads it: training/fork_server.py), never by the parent that checks settings.
PIPELINING = "torch.distributed.pipelining"


@functools.cache
def schedule_classes() -> dict[str, type[_PipelineSchedule]]:
    """torch's schedule class of each schedule name."""
    from torch.distributed import pipelining

    return {"GPipe": pipelining.ScheduleGPipe, "1F1B": pipelining.Schedule1F1B,
            "Interleaved1F1B": pipelining.ScheduleInterleaved1F1B, "LoopedBFS": pipelining.ScheduleLoopedBFS,
            "InterleavedZeroBubble": pipelining.ScheduleInterleavedZeroBubble,
            "ZBVZeroBubble": pipelining.ScheduleZBVZeroBubble, "DualPipeV": pipelining.ScheduleDualPipeV}


def __getattr__(name: str) -> Any:
    """SCHEDULE_CLASSES and TimedStage, made on first use (see PIPELINING)."""
    if name == "SCHEDULE_CLASSES":
        return schedule_classes()
    if name == "TimedStage":
        return timed_stage_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
# torch's PipelineScheduleSingle: exactly one stage per rank.
SINGLE_STAGE = frozenset({"GPipe", "1F1B"})
# Exactly two stages per rank, placed in a V: rank r runs stages r and 2 * ranks - 1 - r.
V_SHAPED = frozenset({"ZBVZeroBubble", "DualPipeV"})
# Their number of microbatches must be a multiple of max(1, microbatches // ranks) ("rounds").
ROUNDS = frozenset({"Interleaved1F1B", "InterleavedZeroBubble"})
# The multi-stage schedule that runs each single-stage schedule's order over several stages per rank.
MULTI_STAGE_TWIN = {"GPipe": "LoopedBFS", "1F1B": "Interleaved1F1B"}


@dataclass(frozen=True)
class PipelineSettings:
    """The settings that decide how a batch flows through the stages and where each stage runs."""

    stages: int
    schedule: str
    microbatches: int
    batch_size: int
    blocks: int
    stages_per_rank: int = 1
    launcher: str = "local"
    device: str = "cpu"  # resolved: "cpu" or "cuda"
    partition: str = "uniform"

    @property
    def microbatch_size(self) -> int:
        """Rows per microbatch."""
        return self.batch_size // self.microbatches

    @property
    def ranks(self) -> int:
        """Processes of the pipeline group (1 for single_process and for stages == 1)."""
        return self.stages // self.stages_per_rank

    def stage_rank(self, stage: int) -> int:
        """The rank that runs `stage`: round-robin ("loop"), or a V for ZBVZeroBubble and DualPipeV."""
        if self.schedule in V_SHAPED and self.stages > 1:
            return stage if stage < self.ranks else 2 * self.ranks - 1 - stage
        return stage % self.ranks

    def rank_stages(self, rank: int) -> list[int]:
        """The stages `rank` runs, in order."""
        return [stage for stage in range(self.stages) if self.stage_rank(stage) == rank]


def schedule_name(name: str) -> str:
    """The canonical spelling of a schedule name ('gpipe' -> 'GPipe'), or TrainingError listing the choices."""
    for known in SCHEDULES:
        if name.lower() == known.lower():
            return known
    raise TrainingError(f"training.schedule ({name!r}) is not a known schedule: use one of {', '.join(SCHEDULES)}")


def derive_stages_per_rank(stages: int, schedule: str, launcher: str, requested: int | None) -> int:
    """training.stages_per_rank, or what the schedule and launcher need when it is unset.

    One stage trains without a pipeline, so the setting does not apply there.
    """
    if stages == 1:
        return 1
    if requested is not None:
        return requested
    if launcher == "single_process":
        return stages
    if schedule in SINGLE_STAGE:
        return 1
    if schedule in V_SHAPED:
        return 2
    # Looped schedules gain from several stages per rank; two keeps a rank per pair of stages.
    return 2 if stages % 2 == 0 else 1


def gpu_count() -> int:
    """CUDA devices torch can use here (0 on a CPU build)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def local_ranks(launcher: str, ranks: int) -> int:
    """Ranks on this machine: all of them (local), one (single_process), torchrun's ranks per node."""
    if launcher == "single_process":
        return 1
    if launcher == "torchrun":
        return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return ranks


def resolve_device(requested: str, launcher: str, ranks: int) -> str:
    """training.device as "cpu" or "cuda"; auto takes CUDA only when every rank gets a GPU of its own."""
    needed = local_ranks(launcher, ranks)
    gpus = gpu_count()
    if requested == "cpu":
        return "cpu"
    if requested == "cuda":
        if gpus == 0:
            raise TrainingError("training.device is cuda but torch sees no CUDA device: set training.device cpu "
                                "or auto")
        if gpus < needed:
            raise TrainingError(f"training.launcher local runs one rank per GPU (NCCL refuses two ranks on one "
                                f"device): {needed} ranks need {needed} GPUs, torch sees {gpus}: use training.launcher "
                                "single_process, fewer ranks (training.stages / training.stages_per_rank) or "
                                "training.device cpu")
        return "cuda"
    return "cuda" if 0 < gpus and needed <= gpus else "cpu"


def _rounds_fit(microbatches: int, ranks: int) -> bool:
    """The interleaved schedules' rule: microbatches is a multiple of max(1, microbatches // ranks)."""
    return microbatches % max(1, microbatches // ranks) == 0


def _nearest_rounds_microbatches(microbatches: int, ranks: int, batch_size: int) -> int:
    """The microbatch count nearest `microbatches` that the interleaved schedules accept and that divides the batch
    (ties go to the larger count); the batch size itself always qualifies."""
    fits = [m for m in range(1, batch_size + 1) if batch_size % m == 0 and _rounds_fit(m, ranks)]
    return min(fits, key=lambda m: (abs(m - microbatches), -m))


def check_pipeline(settings: PipelineSettings) -> None:
    """Refuse settings that cannot work, naming the one to change; runs in the parent before any rank starts."""
    s = settings
    if s.stages < 1:
        raise TrainingError(f"training.stages ({s.stages}) must be at least 1: raise training.stages")
    if s.microbatches < 1:
        raise TrainingError(f"training.microbatches ({s.microbatches}) must be at least 1: raise training.microbatches")
    if s.stages > s.blocks:
        raise TrainingError(f"training.stages ({s.stages}) exceeds model.blocks ({s.blocks}): every stage needs a "
                            "block; lower training.stages or raise model.blocks")
    if s.batch_size % s.microbatches:
        raise TrainingError(f"training.batch_size ({s.batch_size}) must be divisible by training.microbatches "
                            f"({s.microbatches}) so that all microbatches have one static shape: change "
                            "training.batch_size or training.microbatches")
    if s.stages == 1:
        return  # one process, no schedule
    _check_placement(s)
    _check_microbatches(s)


# Before torch 2.13 the multi-stage schedules send activations between two stages of the same rank through the
# process group, which a world of one cannot do: measured on an H200 machine with torch 2.11.0+cu130, on CUDA and on
# its CPU alike, gloo's "Pair is not connected" on the first send; torch 2.13.0 passes the exactness tests.
SINGLE_PROCESS_MIN_TORCH = "2.13"


def check_single_process_torch(version: str) -> None:
    """Refuse training.launcher single_process with several stages on a torch that cannot run it."""
    if torch.torch_version.TorchVersion(version) < SINGLE_PROCESS_MIN_TORCH:
        raise TrainingError(f"training.launcher single_process with several stages needs torch >= "
                            f"{SINGLE_PROCESS_MIN_TORCH} (this is torch {version}, whose schedules send between "
                            "stages of one process through the process group): upgrade torch, or use "
                            "training.stages 1 or training.launcher local")


def _check_placement(s: PipelineSettings) -> None:
    """Stages per rank: a divisor of the stages, and what the schedule and the launcher allow."""
    one_process = s.launcher == "single_process"
    if one_process:
        check_single_process_torch(torch.__version__)
    if s.stages % s.stages_per_rank:
        raise TrainingError(f"training.stages ({s.stages}) is not a multiple of training.stages_per_rank "
                            f"({s.stages_per_rank}): every rank runs as many stages; change one of them")
    if one_process and s.ranks != 1:
        raise TrainingError(f"training.launcher single_process runs every stage in one process: leave "
                            f"training.stages_per_rank unset or set it to training.stages ({s.stages})")
    if s.schedule in SINGLE_STAGE and s.stages_per_rank != 1:
        twin = MULTI_STAGE_TWIN[s.schedule]
        if one_process:
            raise TrainingError(f"training.schedule {s.schedule} runs one stage per process, so it cannot run "
                                f"{s.stages} stages with training.launcher single_process: use training.schedule "
                                f"{twin} (the same order over several local stages) or training.launcher local")
        raise TrainingError(f"training.schedule {s.schedule} runs one stage per rank but training.stages_per_rank is "
                            f"{s.stages_per_rank}: set training.stages_per_rank 1, or use training.schedule {twin}")
    if s.schedule in V_SHAPED and s.stages_per_rank != 2:
        if one_process:
            raise TrainingError(f"training.schedule {s.schedule} runs exactly 2 stages per rank, so with "
                                f"training.launcher single_process training.stages must be 2, not {s.stages}")
        raise TrainingError(f"training.schedule {s.schedule} runs exactly 2 stages per rank (a V): set "
                            f"training.stages_per_rank 2 or leave it unset (it is {s.stages_per_rank})")


def _check_microbatches(s: PipelineSettings) -> None:
    """The microbatch rules of each schedule (torch 2.13)."""
    if s.schedule in ("1F1B", "DualPipeV") and s.microbatches < s.stages:
        alternative = "GPipe" if s.schedule == "1F1B" else "ZBVZeroBubble"
        raise TrainingError(f"training.microbatches ({s.microbatches}) must be >= training.stages ({s.stages}) for "
                            f"{s.schedule}: raise training.microbatches, lower training.stages, or use "
                            f"training.schedule {alternative}")
    if s.schedule in ROUNDS and not _rounds_fit(s.microbatches, s.ranks):
        rounds = max(1, s.microbatches // s.ranks)
        valid = _nearest_rounds_microbatches(s.microbatches, s.ranks, s.batch_size)
        raise TrainingError(f"training.microbatches ({s.microbatches}) must be a multiple of max(1, "
                            f"microbatches // ranks) = {rounds} for {s.schedule} on {s.ranks} ranks: set "
                            f"training.microbatches to {valid} (it divides training.batch_size {s.batch_size}; "
                            f"multiples of {s.ranks} always fit the schedule)")


def check_settings(config: Config, *, stages: int | None = None, schedule: str | None = None,
                   microbatches: int | None = None, seed: int | None = None) -> PipelineSettings:
    """The pipeline settings of `config` with train()'s overrides applied, checked; TrainingError names the fault.

    `seed` is accepted so that callers can pass train()'s overrides unchanged; every seed is valid.
    """
    t = config.training
    stages = t.stages if stages is None else stages
    name = schedule_name(t.schedule if schedule is None else schedule)
    per_rank = derive_stages_per_rank(stages, name, t.launcher, t.stages_per_rank)
    settings = PipelineSettings(stages=stages, schedule=name,
                                microbatches=t.microbatches if microbatches is None else microbatches,
                                batch_size=t.batch_size, blocks=config.model.blocks, stages_per_rank=per_rank,
                                launcher=t.launcher, partition=t.partition)
    check_pipeline(settings)
    if stages == 1:  # the whole model trains in this process, whatever the launcher
        settings = replace(settings, launcher="single_process")
    launcher = "single_process" if settings.ranks == 1 else settings.launcher
    return replace(settings, device=resolve_device(t.device, launcher, settings.ranks))


def rank_device(settings: PipelineSettings, rank: int) -> torch.device:
    """Where `rank` computes: the CPU, its own GPU (local launcher), or the current GPU (one process)."""
    if settings.device == "cpu":
        return torch.device("cpu")
    if settings.launcher == "single_process" or settings.ranks == 1:
        return torch.device("cuda", torch.cuda.current_device())
    if settings.launcher == "torchrun":  # torchrun numbers the ranks of each node from 0
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return torch.device("cuda", rank)


class ScaledLoss(nn.Module):
    """The per-microbatch loss divided by the microbatch count, so that summed gradients are the batch mean's."""

    def __init__(self, loss: nn.Module, microbatches: int) -> None:
        super().__init__()
        self.loss = loss
        self.microbatches = microbatches

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.loss(output, target) / self.microbatches


def example_shapes(settings: PipelineSettings, stage: int, width: int, hidden: int) -> tuple[torch.Tensor,
                                                                                              torch.Tensor]:
    """Example input and output of one stage for one microbatch, on the meta device.

    In static mode torch takes `requires_grad` from these examples: a received activation whose example does not
    require grad gets no gradient, and the stages before it silently stop learning.
    """
    rows = settings.microbatch_size
    first, last = stage == 0, stage == settings.stages - 1
    inputs = torch.empty(rows, width, device="meta") if first else \
        torch.empty(rows, hidden, device="meta", requires_grad=True)
    outputs = torch.empty(rows, device="meta", requires_grad=True) if last else \
        torch.empty(rows, hidden, device="meta", requires_grad=True)
    return inputs, outputs


@functools.cache
def timed_stage_class() -> type:
    """TimedStage: torch's PipelineStage with its calls timed (a class made on first use: see PIPELINING)."""
    from torch.distributed.pipelining import PipelineStage

    class TimedStage(PipelineStage):
        """A PipelineStage that reports the time of each forward, backward and weight-grad call to a StageClock.

        The spans cover the stage's compute only: the schedule waits for activations and gradients outside these
        calls, so a rank's idle share of a step (its bubble) is what the spans leave uncovered.
        """

        def __init__(self, *args: Any, clock: StageClock, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.clock = clock

        @contextmanager
        def _span(self, kind: str) -> Iterator[None]:
            with self.clock.span(self.stage_index, kind):
                yield

        def forward_one_chunk(self, *args: Any, **kwargs: Any) -> Any:
            with self._span("forward"):
                return super().forward_one_chunk(*args, **kwargs)

        def backward_one_chunk(self, *args: Any, **kwargs: Any) -> None:
            with self._span("backward"):
                super().backward_one_chunk(*args, **kwargs)

        def backward_weight_one_chunk(self, *args: Any, **kwargs: Any) -> None:
            with self._span("backward"):
                super().backward_weight_one_chunk(*args, **kwargs)

    TimedStage.__module__ = __name__
    TimedStage.__qualname__ = "TimedStage"
    return TimedStage


def build_schedule(modules: Mapping[int, nn.Module], settings: PipelineSettings, loss: nn.Module, *, width: int,
                   hidden: int, device: torch.device, clock: StageClock) -> _PipelineSchedule:
    """The schedule that runs this rank's stages (`modules`: stage index -> module); needs a process group."""
    stages = []
    timed_stage = timed_stage_class()
    for index in sorted(modules):
        inputs, outputs = example_shapes(settings, index, width, hidden)
        stages.append(timed_stage(modules[index], index, settings.stages, device, input_args=inputs,
                                  output_args=outputs, clock=clock))
    cls = schedule_classes()[settings.schedule]
    loss_fn = ScaledLoss(loss, settings.microbatches)
    if settings.schedule in SINGLE_STAGE:
        return cls(stages[0], n_microbatches=settings.microbatches, loss_fn=loss_fn, scale_grads=False)
    return cls(stages, n_microbatches=settings.microbatches, loss_fn=loss_fn, scale_grads=False)
