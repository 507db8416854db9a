"""Measuring training while it runs: stage compute spans in each rank, the run's summary, Prometheus export.

Each rank's StageClock collects the time of every forward and backward call of its stages (TimedStage in
training.pipeline) and the length of every step. The parent merges the ranks' clocks into a Telemetry and
exports the driftloop_training_* metrics to a Prometheus textfile, live (throttled) and at the end.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from prometheus_client import CollectorRegistry, write_to_textfile

from driftloop.metrics import TrainingMetrics, training_metrics


@dataclass(frozen=True)
class StepTiming:
    """One rank's figures for one training step."""

    seconds: float  # the whole step: schedule and optimizer
    schedule_seconds: float  # schedule.step() alone: compute, communication and waiting
    busy_seconds: float  # compute of this rank's stages inside the schedule
    forward: list[float]  # per local stage, all microbatches
    backward: list[float]  # per local stage: input- and weight-grad parts together


class StageClock:
    """Compute spans of one rank's stages, gathered per step.

    On CUDA the spans are CUDA events, read once per step, so that timing does not serialise the stream.
    """

    def __init__(self, stages: Sequence[int], device: torch.device) -> None:
        self.stages = list(stages)
        self._cuda = device.type == "cuda"
        self._spans: list[tuple[int, str, Any, Any]] = []
        self.steps: list[StepTiming] = []

    def now(self) -> float:
        """Wall time; on CUDA once the queued work is done, so that a step's end is its real end."""
        if self._cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    @contextmanager
    def span(self, stage: int, kind: str) -> Iterator[None]:
        """Time the enclosed compute of `stage`; `kind` is "forward" or "backward"."""
        if self._cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            try:
                yield
            finally:
                end.record()
                self._spans.append((stage, kind, start, end))
        else:
            begin = time.perf_counter()
            try:
                yield
            finally:
                self._spans.append((stage, kind, begin, time.perf_counter()))

    def step_done(self, schedule_seconds: float, seconds: float) -> StepTiming:
        """Close a step: sum its spans per stage and kind."""
        forward = dict.fromkeys(self.stages, 0.0)
        backward = dict.fromkeys(self.stages, 0.0)
        for stage, kind, start, end in self._spans:
            elapsed = start.elapsed_time(end) / 1000 if self._cuda else end - start
            (forward if kind == "forward" else backward)[stage] += elapsed
        self._spans.clear()
        busy = sum(forward.values()) + sum(backward.values())
        timing = StepTiming(seconds, schedule_seconds, busy, [forward[s] for s in self.stages],
                            [backward[s] for s in self.stages])
        self.steps.append(timing)
        return timing

    def to_json(self) -> dict[str, Any]:
        """What the rank hands to the parent."""
        return {"stages": self.stages, "steps": [asdict(step) for step in self.steps], "max_rss_bytes": max_rss_bytes()}


@dataclass(frozen=True)
class Telemetry:
    """What was measured while a run trained.

    The means leave out the first `warmup_steps` steps (communicators and buffers are set up in the first one).
    """

    step_seconds: list[float]  # per step: the slowest rank's whole step
    samples_per_second: float  # training rows per second of step time
    stage_forward_seconds: list[float]  # per stage: forward time per step (all microbatches)
    stage_backward_seconds: list[float]  # per stage: backward time per step (input- and weight-grad)
    rank_bubble: list[float]  # per rank: share of its schedule step spent not computing
    warmup_steps: int = 0
    rank_stages: list[list[int]] = field(default_factory=list)  # the stages each rank ran
    rank_max_rss_bytes: list[int] = field(default_factory=list)  # per rank: its process's peak resident memory

    @property
    def bubble_fraction(self) -> float:
        """The ranks' mean idle share of a step: the measured pipeline bubble (plus schedule overhead)."""
        return _mean(self.rank_bubble)

    @property
    def stage_seconds(self) -> list[float]:
        """Forward plus backward time of each stage per step."""
        return [f + b for f, b in zip(self.stage_forward_seconds, self.stage_backward_seconds, strict=True)]

    @property
    def measured_imbalance(self) -> float:
        """max / mean of the stages' measured compute time (1.0 is perfect balance)."""
        return imbalance(self.stage_seconds)

    def to_json(self) -> dict[str, Any]:
        """A plain-JSON summary (the per-step times included)."""
        return {**asdict(self), "bubble_fraction": self.bubble_fraction,
                "measured_imbalance": self.measured_imbalance}


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else math.nan


def imbalance(costs: Sequence[float]) -> float:
    """max / mean of per-stage costs: 1.0 when balanced, `stages` when one stage does everything."""
    mean = _mean(costs)
    return float(max(costs) / mean) if costs and mean > 0 else math.nan


def summarize(timings: Sequence[dict[str, Any]], stages: int, batch_size: int) -> Telemetry:
    """Merge the ranks' StageClock.to_json() (in rank order) into one Telemetry."""
    steps = min(len(t["steps"]) for t in timings)
    warmup = 1 if steps > 1 else 0
    step_seconds = [max(t["steps"][i]["seconds"] for t in timings) for i in range(steps)]
    steady = step_seconds[warmup:]
    samples_per_second = batch_size * len(steady) / sum(steady) if sum(steady) > 0 else math.nan
    forward, backward = [math.nan] * stages, [math.nan] * stages
    bubbles = []
    for timing in timings:
        kept = timing["steps"][warmup:steps]
        for j, stage in enumerate(timing["stages"]):
            forward[stage] = _mean([step["forward"][j] for step in kept])
            backward[stage] = _mean([step["backward"][j] for step in kept])
        bubbles.append(_mean([min(1.0, max(0.0, 1 - step["busy_seconds"] / step["schedule_seconds"]))
                              for step in kept if step["schedule_seconds"] > 0]))
    return Telemetry(step_seconds, samples_per_second, forward, backward, bubbles, warmup,
                     [list(t["stages"]) for t in timings], [int(t.get("max_rss_bytes", 0)) for t in timings])


def max_rss_bytes() -> int:
    """This process's peak resident memory (Linux reports ru_maxrss in KiB); 0 where unknown."""
    try:
        import resource
    except ImportError:  # not on Windows
        return 0
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


class TrainingExporter:
    """The driftloop_training_* metrics of one run, written to a Prometheus textfile as training goes.

    A node exporter's textfile collector (or a test) reads the file; writes are atomic and at most one per
    `interval_s` during the run, so fast steps do not turn into file churn.
    """

    def __init__(self, path: Path, model: str, batch_size: int, interval_s: float = 1.0) -> None:
        self.path = path
        self.model = model
        self.batch_size = batch_size
        self.interval_s = interval_s
        self.registry = CollectorRegistry()
        self.metrics: TrainingMetrics = training_metrics(self.registry)
        self._written = -math.inf

    def start(self, info: dict[str, str]) -> None:
        """Describe the run (schedule, stages, ...) and publish before the first step."""
        self.metrics.info.labels(model=self.model, **info).set(1)
        self.write()

    def step(self, epoch: int, index: int, loss: float, seconds: float) -> None:
        """One step done (reported by the rank that holds the last stage)."""
        m, model = self.metrics, self.model
        m.loss.labels(model=model).set(loss)
        m.step.labels(model=model).set(index)
        m.epoch.labels(model=model).set(epoch + 1)
        m.step_seconds.labels(model=model).set(seconds)
        if seconds > 0:
            m.samples_per_second.labels(model=model).set(self.batch_size / seconds)
        if time.monotonic() - self._written >= self.interval_s:
            self.write()

    def finish(self, telemetry: Telemetry, costs: Sequence[float], unit: str, cost_imbalance: float) -> None:
        """The run's summary: per-stage times and costs, bubbles, steady-state throughput."""
        m, model = self.metrics, self.model
        if not math.isnan(telemetry.samples_per_second):
            m.samples_per_second.labels(model=model).set(telemetry.samples_per_second)
        for stage, (fwd, bwd) in enumerate(zip(telemetry.stage_forward_seconds, telemetry.stage_backward_seconds,
                                               strict=True)):
            m.stage_forward.labels(model=model, stage=str(stage)).set(fwd)
            m.stage_backward.labels(model=model, stage=str(stage)).set(bwd)
        for stage, cost in enumerate(costs):
            m.stage_cost.labels(model=model, stage=str(stage), unit=unit).set(cost)
        m.imbalance.labels(model=model).set(cost_imbalance)
        for rank, bubble in enumerate(telemetry.rank_bubble):
            m.bubble.labels(model=model, rank=str(rank)).set(bubble)
        m.finished.labels(model=model).set_to_current_time()
        self.write()

    def write(self) -> None:
        """Write the textfile now (atomically: a temporary file renamed over the old one)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_to_textfile(str(self.path), self.registry)
        self._written = time.monotonic()
