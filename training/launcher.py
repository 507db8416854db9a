"""Starting the ranks of a pipeline: one process each on this machine (local), or the only rank in this process
(single_process), and making sure a failing rank cannot hang the run."""

from __future__ import annotations

import gc
import json
import os
import queue
import shlex
import signal
import socket
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from multiprocessing import connection
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml

from driftloop.config import Config
from driftloop.errors import TrainingError
from driftloop.state import state_path
from driftloop.training import fork_server
from driftloop.training.fork_server import START_METHOD, without_main_reimport
from driftloop.training.pipeline import check_settings

# Entry point of a rank: fn(rank, world_size, payload, messages); `messages` is None when nobody listens.
RankFn = Callable[[int, int, Any, Any], None]
POLL_S = 0.1
TERMINATE_GRACE_S = 5.0  # after SIGTERM, before SIGKILL


@dataclass(frozen=True)
class RankSetup:
    """What every rank needs before it runs its part: where to meet the others and how to behave."""

    world_size: int
    port: int
    threads: int
    timeout_s: float
    folder: Path
    backend: str = "gloo"  # "nccl" when each rank has a GPU of its own
    # The parent's environment at launch: the fork server's own is the one it started with.
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now (rank 0 hosts the rendezvous store there)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def error_path(folder: Path, rank: int) -> Path:
    """Where a failing rank leaves its error for the parent."""
    return folder / f"rank{rank}.error.json"


def _record_error(folder: Path, rank: int, error: BaseException) -> None:
    """Write the rank's exception where the parent finds it; the time picks the first failure among several."""
    record = {"rank": rank, "time": time.time(), "type": type(error).__name__, "message": str(error),
              "traceback": traceback.format_exc()}
    error_path(folder, rank).write_text(json.dumps(record))


def _rank_main(rank: int, fn: RankFn, payload: Any, setup: RankSetup, messages: Any) -> None:
    """Runs in each rank's process: join the group, run `fn`, and leave any error for the parent."""
    try:
        os.environ.clear()
        os.environ.update(setup.env)
        torch.set_num_threads(setup.threads)
        os.environ["MASTER_ADDR"] = "127.0.0.1"
        os.environ["MASTER_PORT"] = str(setup.port)
        if setup.backend == "nccl":
            torch.cuda.set_device(rank)
        # A bounded timeout: a rank waiting on a dead peer fails instead of waiting forever.
        dist.init_process_group(setup.backend, rank=rank, world_size=setup.world_size,
                                timeout=timedelta(seconds=setup.timeout_s))
        fn(rank, setup.world_size, payload, messages)
        # Only on success: after a failure the process exits anyway, and tearing down a broken group may block.
        dist.destroy_process_group()
        # Spawned ranks exit through a full interpreter shutdown whose garbage collection of torch's module graph
        # took ~1.5 s here; frozen objects are skipped, and nothing of ours needs finalising.
        gc.freeze()
    except BaseException as error:
        _record_error(setup.folder, rank, error)
        raise


def _first_failure(folder: Path, world_size: int) -> dict[str, Any] | None:
    """The earliest error any rank recorded: the cause, where the others only report a lost peer."""
    records = []
    for rank in range(world_size):
        path = error_path(folder, rank)
        if path.is_file():
            try:
                records.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue
    return min(records, key=lambda r: r["time"]) if records else None


def _drain(messages: Any, on_message: Callable[[Any], None] | None) -> None:
    """Pass every waiting message to `on_message`; draining also keeps ranks from blocking on a full pipe."""
    if messages is None:
        return
    while True:
        try:
            item = messages.get_nowait()
        except queue.Empty:
            return
        if on_message is not None:
            on_message(item)


def launch(fn: RankFn, payload: Any, setup: RankSetup, on_message: Callable[[Any], None] | None = None) -> None:
    """Run fn(rank, world_size, payload, messages) in `setup.world_size` spawned processes and wait for all.

    Raises TrainingError naming the failed rank and its error as soon as one rank dies; the others are
    terminated rather than left waiting on it. The exit codes are read before anything is terminated, so that a
    rank killed from outside (SIGKILL, the OOM killer) is named as the cause, not a peer that then lost it.
    """
    context = mp.get_context(START_METHOD)
    fork_server.start([fn.__module__, *fork_server.RANK_PRELOAD])  # the first launch starts it, unless started early
    messages = context.Queue() if on_message is not None else None
    with without_main_reimport():
        procs = mp.start_processes(_rank_main, args=(fn, payload, setup, messages), nprocs=setup.world_size,
                                   join=False, daemon=True, start_method=START_METHOD)
    try:
        while True:
            _drain(messages, on_message)
            codes = [process.exitcode for process in procs.processes]
            if any(code not in (None, 0) for code in codes):
                raise _failure(setup, codes)
            if all(code == 0 for code in codes):
                break
            connection.wait([p.sentinel for p in procs.processes if p.exitcode is None], timeout=POLL_S)
        _drain(messages, on_message)
    finally:
        for process in procs.processes:
            if process.is_alive():
                process.terminate()
        for process in procs.processes:
            process.join(timeout=TERMINATE_GRACE_S)
            if process.is_alive():  # stuck in C++ (a collective), where SIGTERM is never handled
                process.kill()
                process.join()
        if messages is not None:
            messages.close()
            # Ranks are gone; do not wait on a feeder thread that may never flush.
            messages.cancel_join_thread()


def _failure(setup: RankSetup, codes: list[int | None]) -> TrainingError:
    """A TrainingError naming the rank that failed first and its own message.

    `codes`: the ranks' exit codes before the launcher terminated anyone. A rank ended by a signal left no record
    and is the cause: its peers' records only say that they lost it.
    """
    for rank, code in enumerate(codes):
        if code is not None and code < 0 and not error_path(setup.folder, rank).is_file():
            return TrainingError(f"training rank {rank} of {setup.world_size} died: terminated with signal "
                                 f"{_signal_name(-code)} (killed from outside: out of memory, or a lost machine?)")
    record = _first_failure(setup.folder, setup.world_size)
    if record is not None:
        lines = str(record["message"]).strip().splitlines() or [""]
        failure = TrainingError(f"training rank {record['rank']} of {setup.world_size} failed: "
                                f"{record['type']}: {lines[0]}")
        # The message stays one line for the CLI; a developer's traceback display shows the rank's own traceback.
        failure.add_note(f"traceback of rank {record['rank']}:\n{record['traceback']}")
        return failure
    # No record: the rank exited without raising (os._exit, a crash in C++).
    rank = next(rank for rank, code in enumerate(codes) if code not in (None, 0))
    return TrainingError(f"training rank {rank} of {setup.world_size} died: exit code {codes[rank]}, no error "
                         "recorded")


def _signal_name(number: int) -> str:
    """SIGKILL for 9; the number itself for a signal Python does not know."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


class _Direct:
    """A message queue that hands each message straight to the listener (the rank runs in this process)."""

    def __init__(self, on_message: Callable[[Any], None]) -> None:
        self.on_message = on_message

    def put(self, item: Any) -> None:
        self.on_message(item)


def run_here(fn: RankFn, payload: Any, setup: RankSetup, on_message: Callable[[Any], None] | None = None) -> None:
    """Run fn(0, 1, payload, messages) in this process, as the only rank of a process group of its own.

    torch's pipeline stages need a process group even when every stage is local; a world of one sends nothing,
    so any device works with gloo here. The caller's thread count and CPU random state are restored.
    """
    if setup.world_size != 1:
        raise TrainingError(f"training.launcher single_process runs one rank, not {setup.world_size}")
    if dist.is_initialized():
        raise TrainingError("training.launcher single_process needs a process without a torch.distributed process "
                            "group, and this one has one: use training.launcher local")
    previous = torch.get_num_threads()
    torch.set_num_threads(setup.threads)
    # A HashStore: nobody else joins, so no port is opened.
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1,
                            timeout=timedelta(seconds=setup.timeout_s))
    try:
        with torch.random.fork_rng(devices=[]):
            fn(0, 1, payload, _Direct(on_message) if on_message is not None else None)
    finally:
        dist.destroy_process_group()
        torch.set_num_threads(previous)


# --- torchrun: ranks on several machines ---------------------------------------------------------------------------

TORCHRUN_ENTRY = "driftloop.training.torchrun_entry"  # the module every torchrun worker runs


def under_torchrun() -> bool:
    """Whether torchrun started this process (it sets these for every worker)."""
    return all(key in os.environ for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"))


def join_torchrun(ranks: int, backend: str, threads: int, timeout_s: float) -> bool:
    """Join the process group of the workers torchrun started; True when this call created it (the caller then
    destroys it). The rendezvous already happened in torchrun: env:// reads its address from the environment."""
    if not under_torchrun():
        raise TrainingError("training.launcher torchrun: this process was not started by torchrun; "
                            "`driftloop train --launcher torchrun` prints the command to run on each node")
    world = int(os.environ["WORLD_SIZE"])
    if world != ranks:
        raise TrainingError(f"torchrun started {world} ranks but the pipeline has {ranks} (training.stages / "
                            f"training.stages_per_rank): start nnodes x nproc_per_node = {ranks} workers")
    torch.set_num_threads(threads)
    if dist.is_initialized():
        return False
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    # A bounded timeout, as with the local launcher: a worker waiting on a dead peer fails instead of hanging.
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    return True


def per_node(ranks: int, nnodes: int, nproc_per_node: int | None) -> int:
    """Ranks per node: training.nproc_per_node, or the ranks spread evenly over training.nnodes."""
    nproc = nproc_per_node if nproc_per_node is not None else ranks // nnodes
    if nproc < 1 or nproc * nnodes != ranks:
        raise TrainingError(f"the pipeline has {ranks} ranks (training.stages / training.stages_per_rank), but "
                            f"training.nnodes ({nnodes}) x training.nproc_per_node ({nproc_per_node or nproc}) is "
                            f"{nnodes * nproc}: change training.nnodes or training.nproc_per_node, or the stages")
    return nproc


def torchrun_commands(ranks: int, *, nnodes: int, nproc_per_node: int | None, rdzv_backend: str,
                      rdzv_endpoint: str, rdzv_id: str, node_rank: int | None,
                      entry_args: list[str]) -> list[list[str]]:
    """The torchrun command line(s) to run: one for every node with c10d (it numbers the nodes as they join),
    one per node with the static backend (training.node_rank picks one)."""
    nproc = per_node(ranks, nnodes, nproc_per_node)
    base = ["torchrun", f"--nnodes={nnodes}", f"--nproc-per-node={nproc}", f"--rdzv-backend={rdzv_backend}",
            f"--rdzv-endpoint={rdzv_endpoint}", f"--rdzv-id={rdzv_id}"]
    tail = ["-m", TORCHRUN_ENTRY, *entry_args]
    if rdzv_backend != "static":
        return [base + tail]
    nodes = range(nnodes) if node_rank is None else [node_rank]
    if node_rank is not None and node_rank >= nnodes:
        raise TrainingError(f"training.node_rank ({node_rank}) must be below training.nnodes ({nnodes})")
    # The static backend meets at the endpoint (node 0's host:port) and needs each node's rank.
    return [base + [f"--node-rank={node}"] + tail for node in nodes]


@dataclass(frozen=True)
class TorchrunPlan:
    """What `driftloop train --launcher torchrun` hands to a person: the command line(s) to run, the effective config
    they read, and how the ranks spread over the nodes."""

    commands: list[list[str]]
    config: Path
    ranks: int
    nnodes: int
    node_rank: int | None

    def lines(self) -> list[str]:
        """Each command as one shell line."""
        return [shlex.join(command) for command in self.commands]

    def to_json(self) -> dict:
        """The `driftloop train --launcher torchrun --json` object."""
        return {"torchrun": self.lines(), "config": str(self.config), "ranks": self.ranks}


def plan_torchrun(config: Config, data_path: Path, overrides: dict[str, int | str | None]) -> TorchrunPlan:
    """Write the effective config where every node reads it and build the torchrun command(s) that train on
    `data_path` with train()'s `overrides` (the same everywhere with c10d; one per node with the static backend)."""
    settings = check_settings(config, **overrides)
    t = config.training
    config_path = state_path(config, "torchrun", t.rdzv_id, "config.yaml")
    config_path.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    entry = ["--config", str(config_path), "--data", str(data_path.resolve())]
    entry += [part for key, value in overrides.items() if value is not None for part in (f"--{key}", str(value))]
    commands = torchrun_commands(settings.ranks, nnodes=t.nnodes, nproc_per_node=t.nproc_per_node,
                                 rdzv_backend=t.rdzv_backend, rdzv_endpoint=t.rdzv_endpoint, rdzv_id=t.rdzv_id,
                                 node_rank=t.node_rank, entry_args=entry)
    return TorchrunPlan(commands, config_path, settings.ranks, t.nnodes, t.node_rank)
