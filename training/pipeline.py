"""Everything about torch.distributed.pipelining: the settings it needs, the stage and the schedule of one rank.

Pitfalls this file guards against (see DESIGN.md, "Pipeline schedules"):
- schedules are built with `scale_grads=False` and the loss is divided by the microbatch count here, because
  torch's own gradient scaling is wrong under gradient accumulation (torchtitan #1733);
- stages are given static example shapes, so no stage runs shape inference on real data;
- every stage keeps the whole model's parameter names (training.model.cut_stage).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

from driftloop.config import SCHEDULES, Config
from driftloop.errors import TrainingError

_SCHEDULE_CLASSES = {"GPipe": ScheduleGPipe, "1F1B": Schedule1F1B}


@dataclass(frozen=True)
class PipelineSettings:
    """The settings that decide how a batch flows through the stages."""

    stages: int
    schedule: str
    microbatches: int
    batch_size: int
    blocks: int

    @property
    def microbatch_size(self) -> int:
        """Rows per microbatch."""
        return self.batch_size // self.microbatches


def schedule_name(name: str) -> str:
    """The canonical spelling of a schedule name ('gpipe' -> 'GPipe'), or TrainingError listing the choices."""
    for known in SCHEDULES:
        if name.lower() == known.lower():
            return known
    raise TrainingError(f"training.schedule ({name!r}) is not a known schedule: use one of {', '.join(SCHEDULES)}")


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
    if schedule_name(s.schedule) == "1F1B" and s.microbatches < s.stages:
        raise TrainingError(f"training.microbatches ({s.microbatches}) must be >= training.stages ({s.stages}) for "
                            "1F1B: raise training.microbatches (or use training.schedule GPipe)")


def check_settings(config: Config, *, stages: int | None = None, schedule: str | None = None,
                   microbatches: int | None = None, seed: int | None = None) -> PipelineSettings:
    """The pipeline settings of `config` with train()'s overrides applied, checked; TrainingError names the fault.

    `seed` is accepted so that callers can pass train()'s overrides unchanged; every seed is valid.
    """
    t = config.training
    settings = PipelineSettings(stages=t.stages if stages is None else stages,
                                schedule=schedule_name(t.schedule if schedule is None else schedule),
                                microbatches=t.microbatches if microbatches is None else microbatches,
                                batch_size=t.batch_size, blocks=config.model.blocks)
    check_pipeline(settings)
    return settings


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


def build_schedule(module: nn.Module, stage: int, settings: PipelineSettings, loss: nn.Module, *, width: int,
                   hidden: int) -> ScheduleGPipe | Schedule1F1B:
    """The schedule that runs this rank's stage; needs an initialised default process group."""
    inputs, outputs = example_shapes(settings, stage, width, hidden)
    pipeline_stage = PipelineStage(module, stage, settings.stages, torch.device("cpu"),
                                   input_args=inputs, output_args=outputs)
    cls = _SCHEDULE_CLASSES[schedule_name(settings.schedule)]
    return cls(pipeline_stage, n_microbatches=settings.microbatches,
               loss_fn=ScaledLoss(loss, settings.microbatches), scale_grads=False)
