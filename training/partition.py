"""Cutting the residual blocks into pipeline stages: evenly, by parameter count, or by measured time.

A stage's cost is the sum of its units' costs: the input layer rides with stage 0, the head with the last stage,
and each stage owns a contiguous run of at least one block. The balanced cuts minimise the costliest stage
(the pipeline runs at the pace of its slowest stage).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from driftloop.training.model import TabularNet, stage_blocks
from driftloop.training.telemetry import StageClock, imbalance

PROFILE_REPEATS = 5


@dataclass(frozen=True)
class Partition:
    """Which blocks each stage owns and what each stage costs."""

    method: str  # training.partition
    blocks: tuple[tuple[int, int], ...]  # per stage: [start, stop) of its residual blocks
    costs: tuple[float, ...]  # per stage, in `unit`
    unit: str  # "parameters" or "seconds" (forward + backward of one microbatch)

    @property
    def ranges(self) -> list[range]:
        """The blocks of each stage as ranges (what training.model.cut_stage takes)."""
        return [range(start, stop) for start, stop in self.blocks]

    @property
    def imbalance(self) -> float:
        """max / mean of the stage costs: 1.0 is perfect balance."""
        return imbalance(self.costs)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON for reports and MLflow."""
        return {"method": self.method, "blocks": [list(b) for b in self.blocks], "costs": list(self.costs),
                "unit": self.unit, "imbalance": self.imbalance}


def _units(model: TabularNet) -> list[nn.Module]:
    """The model's parts in pipeline order: input layer, every block, head."""
    assert model.input is not None and model.head is not None, "profile the whole model, not a stage"
    return [model.input, *model.blocks.values(), model.head]


def unit_parameters(model: TabularNet) -> list[float]:
    """Parameter count of each unit (input layer, blocks, head)."""
    return [float(sum(p.numel() for p in unit.parameters())) for unit in _units(model)]


def unit_seconds(model: TabularNet, x: torch.Tensor, y: torch.Tensor, loss: nn.Module,
                 repeats: int = PROFILE_REPEATS) -> list[float]:
    """Forward + backward seconds of each unit on one microbatch (median of `repeats` after a warm-up).

    Each unit gets its real input; every input but the first requires grad, as a received activation does in
    the pipeline, so the input gradient is part of the measured backward.
    """
    units = _units(model)
    device = next(model.parameters()).device
    clock = StageClock([0], device)
    with torch.no_grad():
        inputs = [x]
        for unit in units[:-1]:
            inputs.append(unit(inputs[-1]))
    seconds = []
    for index, unit in enumerate(units):
        samples = []
        for _ in range(repeats + 1):
            start = clock.now()
            source = inputs[index] if index == 0 else inputs[index].detach().requires_grad_(True)
            out = unit(source)
            if index == len(units) - 1:
                loss(out, y).backward()
            else:
                out.backward(torch.ones_like(out))
            samples.append(clock.now() - start)
        seconds.append(statistics.median(samples[1:]))  # the first call warms caches and allocators
    model.zero_grad(set_to_none=True)
    return seconds


def balanced_blocks(block_costs: Sequence[float], stages: int, first_extra: float = 0.0,
                    last_extra: float = 0.0) -> list[range]:
    """Contiguous runs of blocks, at least one per stage, that minimise the costliest stage.

    Stage 0 also carries `first_extra` (the input layer) and the last stage `last_extra` (the head).
    Dynamic programming over (stage, first block not yet placed): O(stages * blocks^2), trivial here.
    """
    n = len(block_costs)
    if not 1 <= stages <= n:
        raise ValueError(f"cannot cut {n} blocks into {stages} stages")
    prefix = [0.0]
    for cost in block_costs:
        prefix.append(prefix[-1] + cost)

    def cost(stage: int, start: int, stop: int) -> float:
        extra = (first_extra if stage == 0 else 0.0) + (last_extra if stage == stages - 1 else 0.0)
        return prefix[stop] - prefix[start] + extra

    inf = float("inf")
    # best[s][j]: the lowest possible maximum over stages 0..s when they own blocks [0, j); cut[s][j]: its start.
    best = [[inf] * (n + 1) for _ in range(stages)]
    cut = [[0] * (n + 1) for _ in range(stages)]
    for j in range(1, n + 1):
        best[0][j] = cost(0, 0, j)
    for s in range(1, stages):
        for j in range(s + 1, n + 1):
            for i in range(s, j):
                value = max(best[s - 1][i], cost(s, i, j))
                if value < best[s][j]:
                    best[s][j], cut[s][j] = value, i
    ranges, stop = [], n
    for s in range(stages - 1, 0, -1):
        start = cut[s][stop]
        ranges.append(range(start, stop))
        stop = start
    ranges.append(range(0, stop))
    return ranges[::-1]


def stage_costs(units: Sequence[float], ranges: Sequence[range]) -> tuple[float, ...]:
    """Per stage: its blocks' costs, plus the input layer on stage 0 and the head on the last stage."""
    blocks = units[1:-1]
    costs = [sum(blocks[i] for i in r) for r in ranges]
    costs[0] += units[0]
    costs[-1] += units[-1]
    return tuple(float(c) for c in costs)


def plan_partition(method: str, model: TabularNet, stages: int, sample: tuple[torch.Tensor, torch.Tensor],
                   loss: nn.Module) -> Partition:
    """The blocks of each stage by `method` (training.partition), with each stage's cost.

    `model` is the whole model, on the device the stages will use; `sample` one microbatch (only "time" runs it).
    """
    blocks = len(model.blocks)
    if method == "time":
        units, unit = unit_seconds(model, *sample, loss), "seconds"
    else:
        units, unit = unit_parameters(model), "parameters"
    if method == "uniform":
        ranges = stage_blocks(blocks, stages)
    else:
        ranges = balanced_blocks(units[1:-1], stages, units[0], units[-1])
    return Partition(method, tuple((r.start, r.stop) for r in ranges), stage_costs(units, ranges), unit)
