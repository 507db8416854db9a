"""Pipeline-parallel benchmark: efficiency against the ideal bubble, memory per rank, scaling.

Run:  .venv/bin/python benchmarks/pipeline_bench.py [--quick] [--out benchmarks/results/pipeline.json]

What it measures (docs/concepts/pipeline.md, "When it pays"):

- efficiency = ideal / measured step time, ideal = T1 x (m + p - 1) / (m * p), where T1 is the step time of ONE
  process on ONE thread training the whole model WITH THE SAME m MICROBATCHES (gradient accumulation), measured in
  the same run, in rank 0's process while rank 1 sleeps, alternating with the pipeline's own windows so that both
  see the same machine load. p is the number of ranks (2) for every schedule, interleaved included.
- the model is a 1024-wide MLP (Linear, LayerNorm, ReLU per layer; 8 layers by default), batch 256, Adam; every
  pipeline uses torch's own schedule classes with scale_grads=False and the loss divided by m; one thread per rank,
  gloo on CPU.
- memory: bytes of parameters + gradients + Adam state per rank against one process (counted tensors), and the
  process RSS peak growth (VmHWM) in fresh processes, labelled as such.
- scaling: step time against depth (layers) and microbatches.
- diagnostics of what limits efficiency: per-rank time in forward, backward, p2p waits, optimizer and the rest
  (Python of the schedule), the compute of one rank alone vs both ranks computing at once (shared cache and memory
  bandwidth), and the gloo transfer time of one activation.

Other processes share this 2-core machine: every timing window records the CPU time that processes other than the
benchmark's used during it ("foreign load", in cores) and is re-measured when that is high; the load average is
recorded too.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import socket
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.distributed.pipelining import (
    PipelineStage,
    Schedule1F1B,
    ScheduleGPipe,
    ScheduleInterleaved1F1B,
)
from torch.distributed.pipelining import schedules as torch_schedules

RANKS = 2
WIDTH = 1024
SEED = 0
SCHEDULES = ("GPipe", "1F1B", "Interleaved1F1B")
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "pipeline.json"
# A window is re-measured when processes other than ours used more CPU than this (cores) during it.
FOREIGN_LIMIT = 0.1
QUIET_PROBE_S = 0.25
IDLE_GAP_S = 0.001


# ----------------------------------------------------------------------------------------------------------- model


class Layer(nn.Module):
    """Linear, LayerNorm, ReLU (LayerNorm, not BatchNorm: batch statistics would differ per microbatch)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.norm(self.fc(x)))


class MLP(nn.Module):
    """`layers` Layers keyed by their number, so that a stage keeps the whole model's parameter names.

    Each layer draws its weights from its own seed, so a stage can build only its own layers (`only`) and still get
    exactly the weights of the whole model.
    """

    def __init__(self, width: int, layers: int, seed: int, only: range | None = None) -> None:
        super().__init__()
        self.layers = nn.ModuleDict()
        for i in range(layers) if only is None else only:
            torch.manual_seed(seed * 1_000_003 + i)
            self.layers[str(i)] = Layer(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers.values():
            x = layer(x)
        return x


def build_mlp(layers: int, seed: int = SEED, only: range | None = None) -> MLP:
    """The whole model (or only the layers in `only`), identical in every process that asks for the same seed."""
    return MLP(WIDTH, layers, seed, only)


def stage_layers(layers: int, stages: int, stage: int) -> range:
    """Uniform split of the layers over stages."""
    if layers % stages:
        raise ValueError(f"{layers} layers do not split evenly over {stages} stages")
    size = layers // stages
    return range(stage * size, (stage + 1) * size)


def cut(model: MLP, owned: range) -> MLP:
    """Delete the layers this stage does not own, in place; names stay those of the whole model."""
    for key in list(model.layers.keys()):
        if int(key) not in owned:
            del model.layers[key]
    return model


def batch(rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The benchmark's input and regression target (the same in every process)."""
    generator = torch.Generator().manual_seed(SEED + 1)
    return torch.randn(rows, WIDTH, generator=generator), torch.randn(rows, WIDTH, generator=generator)


class ScaledLoss(nn.Module):
    """MSE divided by the microbatch count: with scale_grads=False the summed gradients are the batch mean's."""

    def __init__(self, microbatches: int) -> None:
        super().__init__()
        self.microbatches = microbatches
        self.mse = nn.MSELoss()

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.mse(output, target) / self.microbatches


# ------------------------------------------------------------------------------------------------------ the plan


@dataclass(frozen=True)
class Case:
    """One pipeline configuration measured against the one-process baseline of its block."""

    label: str
    schedule: str = "1F1B"
    static_shapes: bool = True
    return_outputs: bool = False
    build_stage_only: bool = False  # False: build the whole model on every rank and delete the rest (as training/)


@dataclass(frozen=True)
class Block:
    """Cases sharing one model and batch, hence one one-process baseline; `tag` says which table they feed."""

    tag: str
    layers: int
    batch: int
    microbatches: int
    cases: tuple[Case, ...]


@dataclass(frozen=True)
class Settings:
    """Per-process settings: they need a fresh process, so each group of blocks runs in its own pair of ranks."""

    name: str
    pin: bool = False
    interop_threads: int | None = None
    env: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        parts = ["torch.set_num_threads(1)"]
        if self.interop_threads is not None:
            parts.append(f"set_num_interop_threads({self.interop_threads})")
        parts += [f"{k}={v}" for k, v in self.env.items()]
        if self.pin:
            parts.append("each rank pinned to its own core")
        return ", ".join(parts)


@dataclass(frozen=True)
class Group:
    settings: Settings
    blocks: tuple[Block, ...]
    diagnostics: bool = False


@dataclass(frozen=True)
class Timing:
    """How long each window is."""

    rounds: int
    steps: int
    warmup: int
    retries: int
    quiet_budget_s: float  # extra time the whole run may spend waiting for quiet CPUs and re-measuring windows


# --------------------------------------------------------------------------------------------- machine and load


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _busy_jiffies() -> tuple[int, int]:
    """CPU time all processes of this machine used (user, nice, system, irq, softirq) and the time the hypervisor
    gave to others (steal), in clock ticks."""
    with open("/proc/stat") as handle:
        values = [int(v) for v in handle.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = values[:8]
    return user + nice + system + irq + softirq, steal


def _process_jiffies(pid: int) -> int:
    """user + system time of one process (all its threads), in clock ticks."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


class CpuMeter:
    """Foreign load during a window: the CPU that processes other than `pids` used, in cores."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.tick = os.sysconf("SC_CLK_TCK")

    def snapshot(self) -> tuple[float, tuple[int, int], list[int]]:
        return time.perf_counter(), _busy_jiffies(), [_process_jiffies(pid) for pid in self.pids]

    def since(self, start: tuple[float, tuple[int, int], list[int]]) -> dict[str, Any]:
        end = self.snapshot()
        wall = end[0] - start[0]
        ours = [(b - a) / self.tick / wall for a, b in zip(start[2], end[2], strict=True)]
        everyone = (end[1][0] - start[1][0]) / self.tick / wall
        steal = (end[1][1] - start[1][1]) / self.tick / wall
        return {"foreign_cores": round(max(0.0, everyone - sum(ours)), 3), "steal_cores": round(steal, 3),
                "rank_cores": [round(c, 3) for c in ours]}


def vm_kib(key: str) -> int:
    """A VmRSS/VmHWM line of /proc/self/status, in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def pin_all_threads(core: int) -> None:
    """Pin every thread of this process (gloo's included) to one core; threads created later inherit it."""
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), {core})
        except OSError:
            pass


# --------------------------------------------------------------------------------------------- one-process steps


def microbatch_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                    microbatches: int) -> float:
    """One training step of one process, accumulating gradients over the same microbatches the schedules use."""
    loss_fn = ScaledLoss(microbatches)
    optimizer.zero_grad(set_to_none=True)
    total = 0.0
    for xb, yb in zip(x.tensor_split(microbatches), y.tensor_split(microbatches), strict=True):
        loss = loss_fn(model(xb), yb)
        loss.backward()
        total += float(loss.detach())
    optimizer.step()
    return total


class Baseline:
    """The whole model trained by one process on one thread, with m microbatches."""

    def __init__(self, block: Block) -> None:
        self.block = block
        self.model = build_mlp(block.layers).train()
        self.optimizer = torch.optim.Adam(self.model.parameters())
        self.x, self.y = batch(block.batch)
        self.first_loss = self.step()

    def step(self) -> float:
        return microbatch_step(self.model, self.optimizer, self.x, self.y, self.block.microbatches)


class HalfModel:
    """This rank's stage trained locally (no communication): the compute a rank does inside the pipeline."""

    def __init__(self, block: Block, rank: int) -> None:
        self.block, self.rank = block, rank
        self.model = cut(build_mlp(block.layers), stage_layers(block.layers, RANKS, rank)).train()
        self.optimizer = torch.optim.Adam(self.model.parameters())
        self.x, self.y = batch(block.batch)
        # Later stages receive activations that need a gradient (it is sent back); the first stage's input does not.
        self.x.requires_grad_(rank > 0)
        self.grad = torch.randn_like(self.y)

    def step(self, gap_s: float = 0.0, in_flight: int = 1) -> float:
        """One local step; returns its compute time.

        gap_s: sleep that long before every forward and backward. in_flight: microbatches forwarded before the
        oldest one's backward (1: F0 B0 F1 B1 ...; 2: the first rank's 1F1B order F0 F1 B0 F2 B1 ...).
        """
        m = self.block.microbatches
        compute = 0.0
        self.optimizer.zero_grad(set_to_none=True)
        chunks = list(zip(self.x.tensor_split(m), self.y.tensor_split(m), self.grad.tensor_split(m), strict=True))
        pending: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

        def backward() -> float:
            out, yb, gb = pending.pop(0)
            if gap_s:
                time.sleep(gap_s)
            start = time.perf_counter()
            if self.rank == RANKS - 1:
                ScaledLoss(m)(out, yb).backward()
            else:
                out.backward(gb)
            return time.perf_counter() - start

        for xb, yb, gb in chunks:
            if gap_s:
                time.sleep(gap_s)
            start = time.perf_counter()
            pending.append((self.model(xb), yb, gb))
            compute += time.perf_counter() - start
            if len(pending) >= in_flight:
                compute += backward()
        while pending:
            compute += backward()
        start = time.perf_counter()
        self.optimizer.step()
        return compute + time.perf_counter() - start


# ------------------------------------------------------------------------------------------------ pipeline steps


class Pipeline:
    """This rank's stage(s) and torch schedule for one case."""

    def __init__(self, block: Block, case: Case, rank: int) -> None:
        self.block, self.case, self.rank = block, case, rank
        m = block.microbatches
        per_rank = 2 if case.schedule == "Interleaved1F1B" else 1
        n_stages = RANKS * per_rank
        # Loop placement: stage s lives on rank s % RANKS.
        stage_ids = [rank + RANKS * k for k in range(per_rank)]
        rows = block.batch // m
        stages, self.modules = [], []
        for sid in stage_ids:
            owned = stage_layers(block.layers, n_stages, sid)
            module = build_mlp(block.layers, only=owned) if case.build_stage_only else cut(build_mlp(block.layers),
                                                                                           owned)
            self.modules.append(module.train())
            shapes: dict[str, torch.Tensor] = {}
            if case.static_shapes:
                shapes["input_args"] = torch.empty(rows, WIDTH, device="meta", requires_grad=sid > 0)
                shapes["output_args"] = torch.empty(rows, WIDTH, device="meta", requires_grad=True)
            stages.append(PipelineStage(module, sid, n_stages, torch.device("cpu"), **shapes))
        loss = ScaledLoss(m)
        if case.schedule == "GPipe":
            self.schedule: Any = ScheduleGPipe(stages[0], n_microbatches=m, loss_fn=loss, scale_grads=False)
        elif case.schedule == "1F1B":
            self.schedule = Schedule1F1B(stages[0], n_microbatches=m, loss_fn=loss, scale_grads=False)
        elif case.schedule == "Interleaved1F1B":
            self.schedule = ScheduleInterleaved1F1B(stages, n_microbatches=m, loss_fn=loss, scale_grads=False)
        else:
            raise ValueError(f"unknown schedule {case.schedule!r}: use one of {', '.join(SCHEDULES)}")
        self.stages = stages
        self.optimizer = torch.optim.Adam([p for module in self.modules for p in module.parameters()])
        self.x, self.y = batch(block.batch)
        self.first, self.last = rank == 0, rank == RANKS - 1
        self.first_loss = self.step()

    def step(self) -> float | None:
        self.optimizer.zero_grad(set_to_none=True)
        losses: list[torch.Tensor] | None = [] if self.last else None
        args = (self.x,) if self.first else ()
        self.schedule.step(*args, target=self.y if self.last else None, losses=losses,
                           return_outputs=self.case.return_outputs)
        self.optimizer.step()
        return float(sum(float(loss.detach()) for loss in losses)) if losses is not None else None

    def state_bytes(self) -> dict[str, int]:
        return state_bytes(self.modules, self.optimizer)


def state_bytes(modules: list[nn.Module], optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Bytes of parameters, gradients and optimizer state held by this process."""
    params = [p for module in modules for p in module.parameters()]
    grads = [p.grad for p in params if p.grad is not None]
    states = [t for state in optimizer.state.values() for t in state.values() if isinstance(t, torch.Tensor)]

    def size(tensors: list[torch.Tensor]) -> int:
        return sum(t.numel() * t.element_size() for t in tensors)

    out = {"parameters": size(params), "gradients": size(grads), "optimizer": size(states)}
    out["total"] = sum(out.values())
    return out


# ------------------------------------------------------------------------------------------ instrumented schedule


class Breakdown:
    """Per-step time of one rank split into forward, backward, p2p (posting and waiting), optimizer and the rest."""

    PARTS = ("forward", "backward", "p2p_wait", "p2p_post", "optimizer")

    def __init__(self) -> None:
        self.totals = dict.fromkeys((*self.PARTS, "step"), 0.0)

    def reset(self) -> None:
        self.totals = dict.fromkeys((*self.PARTS, "step"), 0.0)

    def timed(self, part: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.totals[part] += time.perf_counter() - start
        return wrapper

    @contextmanager
    def installed(self, pipeline: Pipeline) -> Iterator[None]:
        saved_wait, saved_post = torch_schedules._wait_batch_p2p, torch_schedules._batch_p2p
        saved_step = pipeline.optimizer.step
        torch_schedules._wait_batch_p2p = self.timed("p2p_wait", saved_wait)
        torch_schedules._batch_p2p = self.timed("p2p_post", saved_post)
        pipeline.optimizer.step = self.timed("optimizer", saved_step)  # type: ignore[method-assign]
        for stage in pipeline.stages:
            stage.forward_one_chunk = self.timed("forward", stage.forward_one_chunk)  # type: ignore[method-assign]
            stage.backward_one_chunk = self.timed("backward", stage.backward_one_chunk)  # type: ignore[method-assign]
        try:
            yield
        finally:
            torch_schedules._wait_batch_p2p, torch_schedules._batch_p2p = saved_wait, saved_post
            pipeline.optimizer.step = saved_step  # type: ignore[method-assign]
            for stage in pipeline.stages:
                del stage.forward_one_chunk, stage.backward_one_chunk


# --------------------------------------------------------------------------------------------------- rank side


class Rank:
    """What one rank does for a group: windows of steps in lockstep with the other rank."""

    def __init__(self, rank: int, group: Group, timing: Timing) -> None:
        self.rank, self.group, self.timing = rank, group, timing
        pids: list[Any] = [None] * RANKS
        dist.all_gather_object(pids, os.getpid())
        self.meter = CpuMeter([int(pid) for pid in pids])
        self.quiet_budget = timing.quiet_budget_s

    def decide(self, retry: bool) -> bool:
        """Rank 0's decision, shared with every rank."""
        flag = torch.tensor([1 if retry else 0])
        dist.broadcast(flag, src=0)
        return bool(flag.item())

    def wait_quiet(self) -> float:
        """Wait (while this run's quiet budget lasts) until other processes leave the CPUs alone; returns seconds."""
        waited = 0.0
        while True:
            busy = False
            if self.rank == 0 and self.quiet_budget > 0:
                start = self.meter.snapshot()
                time.sleep(QUIET_PROBE_S)
                busy = self.meter.since(start)["foreign_cores"] > FOREIGN_LIMIT
                if busy:
                    self.quiet_budget -= QUIET_PROBE_S
                    waited += QUIET_PROBE_S
            if not self.decide(busy):
                return waited

    def window(self, work: Callable[[], Any] | None, steps: int, warmup: int,
               before_timing: Callable[[], Any] | None = None) -> dict[str, Any]:
        """Time `steps` calls of `work` on this rank (None: wait for the others), after `warmup` untimed calls.

        Retried while the foreign load is above FOREIGN_LIMIT and the run's extra-time budget lasts; the least
        disturbed attempt is kept.
        Rank 0 returns {"step_s": median over ranks that worked, "foreign_cores", ...}; other ranks return {}.
        """
        best: dict[str, Any] | None = None
        for attempt in range(self.timing.retries + 1):
            waited = self.wait_quiet()
            began = time.perf_counter()
            if work is not None:
                for _ in range(warmup):
                    work()
            if before_timing is not None:
                before_timing()
            dist.barrier()
            start = self.meter.snapshot()
            durations: list[float] = []
            if work is not None:
                for _ in range(steps):
                    t0 = time.perf_counter()
                    work()
                    durations.append(time.perf_counter() - t0)
            dist.barrier()
            load = self.meter.since(start) if self.rank == 0 else {}
            gathered: list[Any] = [None] * RANKS
            dist.all_gather_object(gathered, durations)
            result: dict[str, Any] = {}
            if self.rank == 0:
                medians = [statistics.median(d) for d in gathered if d]
                result = {"step_s": max(medians), "rank_step_s": [statistics.median(d) if d else None
                                                                  for d in gathered],
                          "load_avg_1m": round(os.getloadavg()[0], 2), "attempt": attempt,
                          "waited_for_quiet_s": waited, **load}
                if best is None or result["foreign_cores"] < best["foreign_cores"]:
                    best = result
            if attempt > 0:  # a retry spends the extra-time budget too
                self.quiet_budget -= time.perf_counter() - began
            retry = self.rank == 0 and best is not None and best["foreign_cores"] > FOREIGN_LIMIT and \
                self.quiet_budget > 0
            if not self.decide(retry):
                break
        return best or {}

    def run_block(self, block: Block) -> dict[str, Any]:
        t = self.timing
        baseline = Baseline(block) if self.rank == 0 else None
        pipes = {case.label: Pipeline(block, case, self.rank) for case in block.cases}
        check = {}
        if self.rank == 0:
            check["baseline_first_loss"] = baseline.first_loss if baseline else None
        last_losses: list[Any] = [None] * RANKS
        dist.all_gather_object(last_losses, {k: p.first_loss for k, p in pipes.items()})
        rounds: list[dict[str, Any]] = []
        for _ in range(t.rounds):
            one: dict[str, Any] = {"baseline": self.window(baseline.step if baseline else None, t.steps, t.warmup)}
            for label, pipe in pipes.items():
                one[label] = self.window(pipe.step, t.steps, t.warmup)
            rounds.append(one)
        # One more baseline, so that every round's pipeline windows lie between two baseline windows.
        closing = self.window(baseline.step if baseline else None, t.steps, t.warmup)
        if self.rank != 0:
            return {}
        losses = last_losses[RANKS - 1]
        assert baseline is not None
        check["max_first_loss_diff"] = max(abs(v - baseline.first_loss) for v in losses.values())
        return {"block": asdict(block), "rounds": rounds, "closing_baseline": closing, "loss_check": check}

    def diagnostics(self, block: Block) -> dict[str, Any]:
        """Where the time goes in 1F1B at this block's m, and what the machine allows."""
        t = self.timing
        out: dict[str, Any] = {}
        # 1. Compute of one rank's stage: alone (the other rank sleeps) vs both ranks at once, and stage 0 alone in
        #    the order 1F1B runs it on the first rank (two microbatches in flight: F0 F1 B0 F2 B1 ...).
        # 2. 1F1B instrumented: forward, backward, p2p, optimizer per rank.
        #    Alternated over the rounds (medians), since the machine's speed drifts from one window to the next.
        half = HalfModel(block, self.rank)
        pipe = Pipeline(block, Case("1F1B", "1F1B"), self.rank)
        breakdown = Breakdown()
        keys = ("stage0_alone", "stage1_alone", "both_stages_at_once", "stage0_alone_1f1b_order", "breakdown_window")
        windows: dict[str, list[dict[str, Any]]] = {key: [] for key in keys}
        parts: list[dict[str, float]] = []
        for _ in range(t.rounds):
            for who in range(RANKS):
                windows[f"stage{who}_alone"].append(self.window(half.step if self.rank == who else None, t.steps,
                                                                t.warmup))
            windows["both_stages_at_once"].append(self.window(half.step, t.steps, t.warmup))
            windows["stage0_alone_1f1b_order"].append(self.window(
                (lambda: half.step(in_flight=RANKS)) if self.rank == 0 else None, t.steps, t.warmup))
            with breakdown.installed(pipe):
                windows["breakdown_window"].append(self.window(breakdown.timed("step", pipe.step), t.steps,
                                                               t.warmup, before_timing=breakdown.reset))
            per_step = {k: v / t.steps for k, v in breakdown.totals.items()}
            per_step["other"] = per_step["step"] - sum(per_step[k] for k in Breakdown.PARTS)
            parts.append(per_step)
        if self.rank == 0:
            for key, found in windows.items():
                out[key] = {"rank_step_s": [statistics.median(w["rank_step_s"][r] for w in found)
                                            if found[0]["rank_step_s"][r] is not None else None
                                            for r in range(RANKS)],
                            "foreign_cores": max(w["foreign_cores"] for w in found)}
        gathered: list[Any] = [None] * RANKS
        dist.all_gather_object(gathered, {k: statistics.median(p[k] for p in parts) for k in parts[0]})
        out["breakdown_1f1b"] = gathered
        del pipe
        # 3. Does a rank compute slower after idling (as it does while waiting for a peer)? Stage 0 alone, steps
        #    with and without a 1 ms sleep before every forward and backward, alternating; compute time only.
        compute: dict[float, list[float]] = {0.0: [], IDLE_GAP_S: []}

        def gaps() -> None:
            for gap in compute:
                compute[gap].append(half.step(gap))

        out["idle_gap"] = self.window(gaps if self.rank == 0 else None, t.steps, t.warmup,
                                      before_timing=lambda: [v.clear() for v in compute.values()])
        out["idle_gap"]["compute_s"] = {str(k): statistics.median(v) if v else None for k, v in compute.items()}
        # 4. One activation (or gradient) over gloo: half a round trip.
        rows = block.batch // block.microbatches
        tensor = torch.zeros(rows, WIDTH)

        def ping() -> None:
            if self.rank == 0:
                dist.send(tensor, 1)
                dist.recv(tensor, 1)
            else:
                dist.recv(tensor, 0)
                dist.send(tensor, 0)

        out["p2p_window"] = self.window(ping, 50, 10)
        out["p2p_one_way_s"] = out["p2p_window"].get("step_s", 0.0) / 2
        out["p2p_bytes"] = tensor.numel() * tensor.element_size()
        return out if self.rank == 0 else {}


def rank_main(rank: int, world: int, port: int, group: Group, timing: Timing, results: Any) -> None:
    """Entry point of a spawned rank."""
    try:
        torch.set_num_threads(1)
        if group.settings.interop_threads is not None:
            torch.set_num_interop_threads(group.settings.interop_threads)
        os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
        dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=300))
        if group.settings.pin:
            pin_all_threads(rank % (os.cpu_count() or 1))
        worker = Rank(rank, group, timing)
        blocks = []
        for block in group.blocks:
            began = time.perf_counter()
            blocks.append(worker.run_block(block))
            if rank == 0:
                print(f"  {block.tag}: {block.layers} layers, batch {block.batch}, m = {block.microbatches}: "
                      f"{time.perf_counter() - began:.0f} s", file=sys.stderr, flush=True)
        diag = worker.diagnostics(group.blocks[0]) if group.diagnostics else {}
        threads = len(os.listdir("/proc/self/task"))
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, threads)
        if rank == 0:
            waited = timing.quiet_budget_s - worker.quiet_budget
            results.put(("ok", {"blocks": blocks, "diagnostics": diag, "threads_per_rank": gathered,
                                "waited_for_quiet_s": waited}))
        dist.barrier()
        dist.destroy_process_group()
    except BaseException:
        results.put(("error", f"rank {rank}: {traceback.format_exc()}"))
        raise


def memory_main(rank: int, world: int, port: int, block: Block, pin: bool, results: Any) -> None:
    """Fresh process(es) measuring state bytes and the RSS peak growth; world 1 is the one-process baseline."""
    try:
        torch.set_num_threads(1)
        if world > 1:
            os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
            dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=300))
        if pin:
            pin_all_threads(rank % (os.cpu_count() or 1))
        rss_before = vm_kib("VmRSS")
        if world == 1:
            model = build_mlp(block.layers).train()
            optimizer = torch.optim.Adam(model.parameters())
            x, y = batch(block.batch)
            for _ in range(3):
                microbatch_step(model, optimizer, x, y, block.microbatches)
            counted = state_bytes([model], optimizer)
        else:
            pipe = Pipeline(block, block.cases[0], rank)
            for _ in range(3):
                pipe.step()
            counted = pipe.state_bytes()
        record = {"rank": rank, "counted": counted, "rss_before_kib": rss_before, "rss_peak_kib": vm_kib("VmHWM")}
        results.put(("ok", record))
        if world > 1:
            dist.barrier()
            dist.destroy_process_group()
    except BaseException:
        results.put(("error", f"rank {rank}: {traceback.format_exc()}"))
        raise


# ------------------------------------------------------------------------------------------------- parent side


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def environment(env: dict[str, str]) -> Iterator[None]:
    """Set variables for the processes started inside (they read them when torch loads)."""
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def spawn(target: Callable[..., None], world: int, args: tuple[Any, ...], env: dict[str, str], expect: int,
          timeout_s: float = 900.0) -> list[Any]:
    """Start `world` processes running target(rank, world, port, *args, results) and collect `expect` results."""
    context = mp.get_context("spawn")
    results = context.Queue()
    port = free_port()
    with environment(env):
        procs = [context.Process(target=target, args=(rank, world, port, *args, results), daemon=True)
                 for rank in range(world)]
        for proc in procs:
            proc.start()
    collected = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(collected) < expect:
            try:
                status, payload = results.get(timeout=1.0)
            except queue.Empty:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"benchmark processes gave no result within {timeout_s:.0f} s") from None
                if any(p.exitcode not in (None, 0) for p in procs):
                    raise RuntimeError("a benchmark process died without reporting an error") from None
                continue
            if status == "error":
                raise RuntimeError(payload)
            collected.append(payload)
        for proc in procs:
            proc.join(timeout=60)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=10)
    return collected


def ideal_factor(m: int, p: int = RANKS) -> float:
    return (m + p - 1) / (m * p)


def summarise_block(raw: dict[str, Any], settings: Settings) -> list[dict[str, Any]]:
    """One row per case.

    efficiency: median over rounds of the round's ratio, the round's baseline being the mean of the baseline windows
    just before and just after it (the machine's speed drifts by up to +-20 % within seconds: other virtual machines
    share the host). efficiency_best: the fastest baseline window against the fastest pipeline window, since that
    drift only ever slows a window down.
    """
    block = raw["block"]
    m = block["microbatches"]
    factor = ideal_factor(m)
    windows = [r["baseline"]["step_s"] for r in raw["rounds"]] + [raw["closing_baseline"]["step_s"]]
    bases = [(a + b) / 2 for a, b in zip(windows, windows[1:], strict=False)]
    rows = []
    for case in block["cases"]:
        label = case["label"]
        steps = [r[label]["step_s"] for r in raw["rounds"]]
        effs = [b * factor / s for b, s in zip(bases, steps, strict=True)]
        foreign = [r[label]["foreign_cores"] for r in raw["rounds"]] + [r["baseline"]["foreign_cores"]
                                                                       for r in raw["rounds"]]
        rows.append({
            "tag": block["tag"], "label": label, "settings": settings.name, "schedule": case["schedule"],
            "static_shapes": case["static_shapes"], "return_outputs": case["return_outputs"],
            "layers": block["layers"], "batch": block["batch"], "microbatches": m,
            "microbatch_rows": block["batch"] // m,
            "baseline_ms": 1e3 * statistics.median(bases), "ideal_ms": 1e3 * statistics.median(bases) * factor,
            "step_ms": 1e3 * statistics.median(steps), "efficiency": statistics.median(effs),
            "efficiency_best": min(windows) * factor / min(steps), "best_baseline_ms": 1e3 * min(windows),
            "best_step_ms": 1e3 * min(steps),
            "efficiency_rounds": [round(e, 4) for e in effs], "step_ms_rounds": [round(1e3 * s, 2) for s in steps],
            "baseline_ms_windows": [round(1e3 * b, 2) for b in windows], "foreign_cores_max": max(foreign),
            "peer_cpu_during_baseline": max(r["baseline"]["rank_cores"][1] for r in raw["rounds"]),
            "max_first_loss_diff": raw["loss_check"]["max_first_loss_diff"],
        })
    return rows


def summarise_diagnostics(diag: dict[str, Any], block: Block, baseline_ms: float) -> dict[str, Any]:
    m = block.microbatches
    alone = [1e3 * diag[f"stage{r}_alone"]["rank_step_s"][r] for r in range(RANKS)]
    in_order = 1e3 * diag["stage0_alone_1f1b_order"]["rank_step_s"][0]
    both = [1e3 * s for s in diag["both_stages_at_once"]["rank_step_s"]]
    slow = [b / a for a, b in zip(alone, both, strict=True)]
    breakdown = [{k: round(1e3 * v, 2) for k, v in rank.items()} for rank in diag["breakdown_1f1b"]]
    # The best a pipeline can do when both ranks compute at once: the slower stage's concurrent compute plus its
    # share of the bubble.
    contended_ideal = max(both) * (m + RANKS - 1) / m
    gap = diag["idle_gap"]["compute_s"]
    compute_in_pipeline = [b["forward"] + b["backward"] + b["optimizer"] for b in breakdown]
    return {
        "block": asdict(block),
        "stage_step_alone_ms": [round(a, 2) for a in alone],
        "stage_step_both_at_once_ms": [round(b, 2) for b in both],
        "slowdown_when_both_compute": [round(s, 3) for s in slow],
        "one_process_step_ms": round(baseline_ms, 2),
        "sum_of_stages_alone_vs_one_process": round(sum(alone) / baseline_ms, 3),
        "contended_ideal_ms": round(contended_ideal, 2),
        "breakdown_1f1b_ms_per_step": breakdown,
        "stage0_alone_in_1f1b_order_ms": round(in_order, 2),
        "stage_compute_in_pipeline_ms": [round(c, 2) for c in compute_in_pipeline],
        "compute_in_pipeline_vs_alone": [round(c / a, 3) for c, a in zip(compute_in_pipeline, alone, strict=True)],
        "stage0_compute_ms_without_and_with_1ms_idle_gaps": [round(1e3 * gap[k], 2) if gap[k] else None
                                                              for k in ("0.0", str(IDLE_GAP_S))],
        "p2p_one_way_ms": round(1e3 * diag["p2p_one_way_s"], 3),
        "p2p_bytes": diag["p2p_bytes"],
        "p2p_transfers_per_step": 2 * m,
        "foreign_cores_max": max(diag[k]["foreign_cores"] for k in ("stage0_alone", "stage1_alone",
                                                                      "both_stages_at_once", "idle_gap",
                                                                      "stage0_alone_1f1b_order",
                                                                      "breakdown_window", "p2p_window")),
    }


def settings_comparison(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The 'settings' rows pooled per (settings, case) over their alternating groups: median of per-round figures."""
    pooled: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        if row["tag"] == "settings":
            pooled.setdefault((row["settings"], row["label"]), []).append(row)
    out = []
    for (settings, label), found in pooled.items():
        effs = [e for row in found for e in row["efficiency_rounds"]]
        steps = [v for row in found for v in row["step_ms_rounds"]]
        bases = [v for row in found for v in row["baseline_ms_windows"]]
        factor = ideal_factor(found[0]["microbatches"])
        out.append({"settings": settings, "label": label, "groups": len(found), "windows": len(effs),
                    "efficiency": round(statistics.median(effs), 4), "efficiency_min": min(effs),
                    "efficiency_max": max(effs), "efficiency_best": round(min(bases) * factor / min(steps), 4),
                    "step_ms": round(statistics.median(steps), 2), "best_step_ms": min(steps),
                    "baseline_ms": round(statistics.median(bases), 2), "best_baseline_ms": min(bases)})
    return out


def measure_memory(block: Block, pin: bool) -> dict[str, Any]:
    """Fresh processes: one process, and the ranks building the whole model then cutting it (as training/ does)
    or building only their own layers."""
    single = spawn(memory_main, 1, (block, pin), {}, expect=1)[0]
    base_total = single["counted"]["total"]
    base_rss = single["rss_peak_kib"] - single["rss_before_kib"]
    out: dict[str, Any] = {
        "block": asdict(block),
        "one_process": {**{f"{k}_mib": round(v / 2**20, 2) for k, v in single["counted"].items()},
                        "rss_peak_growth_mib": round(base_rss / 1024, 1),
                        "rss_peak_mib": round(single["rss_peak_kib"] / 1024, 1)},
    }
    for key, stage_only in (("per_rank", False), ("per_rank_stage_only_build", True)):
        case = replace(block.cases[0], build_stage_only=stage_only)
        ranks = sorted(spawn(memory_main, RANKS, (replace(block, cases=(case,)), pin), {}, expect=RANKS),
                       key=lambda r: r["rank"])
        rows = []
        for r in ranks:
            growth = r["rss_peak_kib"] - r["rss_before_kib"]
            rows.append({"rank": r["rank"], **{f"{k}_mib": round(v / 2**20, 2) for k, v in r["counted"].items()},
                         "state_ratio": round(r["counted"]["total"] / base_total, 3),
                         "rss_peak_growth_mib": round(growth / 1024, 1),
                         "rss_peak_growth_ratio": round(growth / base_rss, 3),
                         "rss_peak_mib": round(r["rss_peak_kib"] / 1024, 1)})
        out[key] = rows
    out["max_state_ratio"] = max(r["state_ratio"] for r in out["per_rank"])
    out["max_rss_growth_ratio"] = max(r["rss_peak_growth_ratio"] for r in out["per_rank"])
    out["max_rss_growth_ratio_stage_only_build"] = max(r["rss_peak_growth_ratio"]
                                                       for r in out["per_rank_stage_only_build"])
    return out


# ------------------------------------------------------------------------------------------------------- plans


def make_plan(quick: bool) -> tuple[list[Group], Timing, Block]:
    """Groups of blocks to measure; the first group holds the settings recommended for training/.

    The per-process settings are compared by alternating fresh groups (defaults, pinned, recommended, twice), each
    against its own one-process baseline, since the machine's speed drifts over minutes.
    """
    defaults = Settings("torch defaults")
    pinned = Settings("pinned", pin=True)
    recommended = Settings("pinned + interop 1 + OMP/MKL 1", pin=True, interop_threads=1,
                           env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    torch_defaults = Case("1F1B dynamic shapes, outputs", "1F1B", static_shapes=False, return_outputs=True)
    as_training = Case("1F1B static shapes, no outputs", "1F1B")
    schedules = tuple(Case(s, s) for s in SCHEDULES)
    if quick:
        timing = Timing(rounds=1, steps=5, warmup=1, retries=0, quiet_budget_s=5)
        groups = [Group(recommended, (Block("main", 8, 256, 8, schedules),
                                      Block("depth", 4, 256, 8, (Case("1F1B", "1F1B"),))))]
        return groups, timing, Block("memory", 8, 256, 8, (Case("1F1B", "1F1B"),))
    timing = Timing(rounds=4, steps=6, warmup=1, retries=2, quiet_budget_s=60)
    main = (Block("main", 8, 256, 8, (*schedules, torch_defaults)),
            *(Block("main", 8, 256, m, schedules) for m in (2, 4, 16)))
    groups = [
        Group(recommended, (*main,
                            Block("depth", 4, 256, 8, (Case("1F1B", "1F1B"),)),
                            Block("depth", 16, 256, 8, (Case("1F1B", "1F1B"),)),
                            Block("rows", 8, 512, 8, (Case("1F1B", "1F1B"), Case("GPipe", "GPipe")))),
              diagnostics=True),
    ]
    for _ in range(2):
        groups += [Group(defaults, (Block("settings", 8, 256, 8, (torch_defaults, as_training)),)),
                   Group(pinned, (Block("settings", 8, 256, 8, (as_training,)),)),
                   Group(recommended, (Block("settings", 8, 256, 8, (as_training,)),))]
    return groups, timing, Block("memory", 8, 256, 8, (Case("1F1B", "1F1B"),))


# ------------------------------------------------------------------------------------------------------ output


def print_tables(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=200)
    table = Table(title=f"Pipeline efficiency, {RANKS} ranks x 1 thread, gloo on CPU (ideal = T1 x (m+p-1)/(m p)); "
                  f"settings: {report['rows'][0]['settings'] if report['rows'] else ''}")
    for col in ("tag", "case", "layers", "batch", "m", "one-process ms", "ideal ms", "pipeline ms", "efficiency",
                "rounds min-max", "best 1-proc ms", "best ms", "best efficiency", "foreign cores"):
        table.add_column(col, justify="right" if col not in ("tag", "case") else "left")
    for row in report["rows"]:
        if row["tag"] == "settings":
            continue
        table.add_row(row["tag"], row["label"], str(row["layers"]), str(row["batch"]), str(row["microbatches"]),
                      f"{row['baseline_ms']:.1f}", f"{row['ideal_ms']:.1f}", f"{row['step_ms']:.1f}",
                      f"{row['efficiency']:.3f}",
                      f"{min(row['efficiency_rounds']):.2f}-{max(row['efficiency_rounds']):.2f}",
                      f"{row['best_baseline_ms']:.1f}", f"{row['best_step_ms']:.1f}", f"{row['efficiency_best']:.3f}",
                      f"{row['foreign_cores_max']:.2f}")
    console.print(table)

    if report["settings_comparison"]:
        table = Table(title="Per-rank settings, 1F1B m = 8, 8 layers: alternating fresh groups, median of rounds")
        for col in ("settings", "case", "windows", "one-process ms", "pipeline ms", "efficiency", "rounds min-max",
                    "best ms", "best efficiency"):
            table.add_column(col, justify="left" if col in ("settings", "case") else "right")
        for row in report["settings_comparison"]:
            table.add_row(row["settings"], row["label"], str(row["windows"]), f"{row['baseline_ms']:.1f}",
                          f"{row['step_ms']:.1f}", f"{row['efficiency']:.3f}",
                          f"{row['efficiency_min']:.2f}-{row['efficiency_max']:.2f}", f"{row['best_step_ms']:.1f}",
                          f"{row['efficiency_best']:.3f}")
        console.print(table)

    mem = report["memory"]
    table = Table(title="Memory: parameters + gradients + Adam state (counted tensors) and RSS peak growth")
    for col in ("process", "params MiB", "grads MiB", "Adam MiB", "total MiB", "ratio", "RSS peak growth MiB",
                "RSS ratio"):
        table.add_column(col, justify="right")
    one = mem["one_process"]
    table.add_row("one process", f"{one['parameters_mib']:.1f}", f"{one['gradients_mib']:.1f}",
                  f"{one['optimizer_mib']:.1f}", f"{one['total_mib']:.1f}", "1.000",
                  f"{one['rss_peak_growth_mib']:.1f}", "1.000")
    for label, key in (("", "per_rank"), (" (stage-only build)", "per_rank_stage_only_build")):
        for r in mem[key]:
            table.add_row(f"rank {r['rank']}{label}", f"{r['parameters_mib']:.1f}", f"{r['gradients_mib']:.1f}",
                          f"{r['optimizer_mib']:.1f}", f"{r['total_mib']:.1f}", f"{r['state_ratio']:.3f}",
                          f"{r['rss_peak_growth_mib']:.1f}", f"{r['rss_peak_growth_ratio']:.3f}")
    console.print(table)

    diag = report.get("diagnostics")
    if diag:
        table = Table(title="Where 1F1B's time goes (ms per step, m = "
                      f"{diag['block']['microbatches']}, {diag['block']['layers']} layers)")
        for col in ("rank", "step", "forward", "backward", "p2p wait", "p2p post", "optimizer", "other"):
            table.add_column(col, justify="right")
        for rank, b in enumerate(diag["breakdown_1f1b_ms_per_step"]):
            table.add_row(str(rank), *(f"{b[k]:.1f}" for k in ("step", "forward", "backward", "p2p_wait",
                                                                "p2p_post", "optimizer", "other")))
        console.print(table)
        console.print(f"stage compute alone {diag['stage_step_alone_ms']} ms, both at once "
                      f"{diag['stage_step_both_at_once_ms']} ms (x{diag['slowdown_when_both_compute']}); "
                      f"contended ideal {diag['contended_ideal_ms']} ms; one gloo transfer of "
                      f"{diag['p2p_bytes'] // 1024} KiB {diag['p2p_one_way_ms']} ms")
    console.print(f"load average start {report['load_avg_start']}, end {report['load_avg_end']}; "
                  f"{report['seconds']:.0f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one short round: m = 8, depth 4, memory (~30 s)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the JSON results")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    load_start = [round(v, 2) for v in os.getloadavg()]
    groups, timing, memory_block = make_plan(args.quick)
    plan_timing = timing
    rows: list[dict[str, Any]] = []
    diagnostics: dict[str, Any] = {}
    threads: dict[str, Any] = {}
    waited = 0.0
    for group in groups:
        print(f"measuring: {group.settings.name} ({len(group.blocks)} block(s))", file=sys.stderr, flush=True)
        result = spawn(rank_main, RANKS, (group, timing), group.settings.env, expect=1)[0]
        waited += result["waited_for_quiet_s"]
        timing = replace(timing, quiet_budget_s=max(0.0, timing.quiet_budget_s - result["waited_for_quiet_s"]))
        threads[group.settings.name] = result["threads_per_rank"]
        group_rows = [row for raw in result["blocks"] for row in summarise_block(raw, group.settings)]
        rows.extend(group_rows)
        if group.diagnostics:
            m = group.blocks[0].microbatches
            base = next(r for r in group_rows if r["tag"] == "main" and r["microbatches"] == m
                        and r["label"] == "1F1B")
            diagnostics = summarise_diagnostics(result["diagnostics"], group.blocks[0], base["baseline_ms"])
    print("measuring: memory", file=sys.stderr, flush=True)
    memory = measure_memory(memory_block, pin=True)
    settings_rows = settings_comparison(rows)
    main_m8 = {r["label"]: {"efficiency": round(r["efficiency"], 3), "efficiency_best": round(r["efficiency_best"], 3)}
               for r in rows if r["tag"] == "main" and r["microbatches"] == 8}

    report = {
        "benchmark": "pipeline", "issue": 3, "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": args.quick, "torch": torch.__version__, "python": platform.python_version(), "cpu": cpu_model(),
        "cpus": os.cpu_count(), "ranks": RANKS, "threads_per_rank": 1, "width": WIDTH,
        "timing": {**asdict(timing), "quiet_budget_s": plan_timing.quiet_budget_s},
        "waited_for_quiet_s": round(waited, 1), "foreign_limit_cores": FOREIGN_LIMIT,
        "settings": {g.settings.name: g.settings.describe() for g in groups},
        "threads_in_each_rank": threads,
        "efficiency_definition": "ideal / measured; ideal = one-process one-thread step with the same m microbatches"
                                 " x (m + p - 1) / (m p), p = 2 ranks",
        "figures": {"efficiency_m8": main_m8, "memory_state_ratio": memory["max_state_ratio"],
                    "memory_rss_growth_ratio": memory["max_rss_growth_ratio"]},
        "rows": rows, "settings_comparison": settings_rows, "memory": memory, "diagnostics": diagnostics,
        "load_avg_start": load_start, "load_avg_end": [round(v, 2) for v in os.getloadavg()],
        "seconds": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print_tables(report)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
