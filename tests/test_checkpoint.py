"""Checkpoints and resume: atomic checkpoints, a killed rank that ends the run, resuming with any stage count to
the same weights as an uninterrupted run."""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from driftloop.config import Config
from driftloop.errors import TrainingError
from driftloop.training import checkpoint
from driftloop.training.checkpoint import KILL_AT_ENV, PARTIAL, PROGRESS, Checkpoint, CheckpointJob
from driftloop.training.trainer import LoopSettings, TrainResult, run_loop, train
from tests.helpers import make_config

EXACT = 1e-6
KILL_BOUND_S = 30  # a killed rank must end the run this fast (start-up included); it takes about 4 s here


def resume_config(state_dir: Path, **training: object) -> Config:
    """The exactness matrix's tiny network over two epochs: 12 steps of 64 rows, a checkpoint every 4 steps."""
    return make_config(state_dir, model={"hidden": 8, "blocks": 4},
                       training={"epochs": 2, "batch_size": 64, "microbatches": 4, "checkpoint_every": 4,
                                 **training})


@pytest.fixture(scope="module")
def rows(flights_jan: pd.DataFrame) -> pd.DataFrame:
    """500 real rows: 400 to train on (6 steps an epoch), 100 held out."""
    return flights_jan.head(500)


@pytest.fixture(scope="module")
def uninterrupted(rows: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    """The run every resumed run must end equal to: one process, no checkpoint, never stopped."""
    config = resume_config(tmp_path_factory.mktemp("ref"), checkpoint_every=0)
    return train(rows, config, stages=1, seed=3, progress=False)


def max_weight_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Largest absolute difference between two state dicts with the same names."""
    assert list(a) == list(b)
    return max(float((a[name] - b[name]).abs().max()) for name in a)


def assert_same_run(resumed: TrainResult, reference: TrainResult) -> None:
    """Every step's loss and the final weights of an uninterrupted run."""
    assert len(resumed.losses) == len(reference.losses)
    assert max(abs(a - b) for a, b in zip(resumed.losses, reference.losses, strict=True)) < EXACT
    assert max_weight_difference(resumed.state, reference.state) < EXACT
    assert resumed.final_loss == pytest.approx(reference.final_loss, abs=EXACT)


def killed_run(rows: pd.DataFrame, config: Config, monkeypatch: pytest.MonkeyPatch, *, stages: int, schedule: str,
               rank: int, step: int) -> float:
    """Train until `rank` SIGKILLs itself at global step `step`; returns the seconds until train() raised."""
    monkeypatch.setenv(KILL_AT_ENV, f"{rank}:{step}")
    start = time.perf_counter()
    with pytest.raises(TrainingError, match=rf"rank {rank} .*SIGKILL"):
        train(rows, config, stages=stages, schedule=schedule, seed=3, progress=False)
    seconds = time.perf_counter() - start
    monkeypatch.delenv(KILL_AT_ENV)
    assert seconds < KILL_BOUND_S
    assert multiprocessing.active_children() == []
    return seconds


def run_folder(config: Config) -> Path:
    """The single run folder under state_dir/checkpoints."""
    (folder,) = (Path(config.state_dir) / "checkpoints").iterdir()
    return folder


# --- fast: the pieces ---------------------------------------------------------------------------------------------


def _fake_checkpoint(folder: Path, step: int, *, progress: bool = True, metadata: bool = True,
                     suffix: str = "") -> Path:
    path = folder / f"step-{step}{suffix}"
    path.mkdir(parents=True)
    if progress:
        (path / PROGRESS).write_text(json.dumps({"step": step, "stages": 2}))
    if metadata:
        (path / ".metadata").write_bytes(b"")
    return path


def test_only_complete_checkpoints_count(tmp_path: Path) -> None:
    """A save interrupted before the rename (.partial) or before its marker is never taken as complete."""
    _fake_checkpoint(tmp_path, 4)
    _fake_checkpoint(tmp_path, 8)
    partial = _fake_checkpoint(tmp_path, 12, suffix=PARTIAL)
    _fake_checkpoint(tmp_path, 16, progress=False)
    _fake_checkpoint(tmp_path, 20, metadata=False)
    assert [c.step for c in checkpoint.complete_checkpoints(tmp_path)] == [4, 8]
    assert checkpoint.prepare(tmp_path, "auto") == Checkpoint(tmp_path / "step-8", 8, 2)
    assert not partial.exists()  # leftovers of an interrupted save are cleared before the ranks start
    assert checkpoint.prepare(tmp_path, "never") is None and not tmp_path.exists()
    assert checkpoint.prepare(tmp_path / "nothing", "auto") is None


def test_checkpoints_are_due_every_n_steps_but_not_at_the_end(tmp_path: Path) -> None:
    job = CheckpointJob(tmp_path, every=4)
    assert [s for s in range(1, 13) if job.due(s, 12)] == [4, 8]
    assert not any(CheckpointJob(tmp_path, every=0).due(s, 12) for s in range(1, 13))


def test_the_loop_resumes_at_its_position() -> None:
    """From global step k the loop sees exactly the batches an uninterrupted loop sees after step k."""
    loop = LoopSettings(epochs=3, batch_size=10, microbatches=1, seed=5, learning_rate=1e-3, weight_decay=0)
    seen: list[list[int]] = []
    run_loop(lambda rows: seen.append(rows.tolist()) or 0.0, 45, loop)
    for start in (0, 3, 4, 5, 11, 12):
        later: list[list[int]] = []
        positions: list[int] = []
        losses = run_loop(lambda rows, later=later: later.append(rows.tolist()) or 0.0, 45, loop, start=start,
                          after_step=lambda epoch, done, positions=positions: positions.append(done),
                          losses=[1.0] * start)
        assert later == seen[start:] and positions == list(range(start + 1, 13)) and len(losses) == 12


def test_single_process_checkpoint_resumes_exactly(rows: pd.DataFrame, uninterrupted: TrainResult, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """stages 1: a run that dies after its checkpoint at step 8 resumes there and ends as if never stopped."""
    from driftloop.training import trainer

    config = resume_config(tmp_path)
    original = checkpoint.save

    def save_then_die(job: CheckpointJob, step: int, *args: object, **kwargs: object) -> None:
        original(job, step, *args, **kwargs)
        if step == 8:
            raise RuntimeError("died after step 8")

    monkeypatch.setattr(trainer.checkpoint, "save", save_then_die)
    with pytest.raises(RuntimeError, match="died after step 8"):
        train(rows, config, stages=1, seed=3, progress=False)
    monkeypatch.setattr(trainer.checkpoint, "save", original)
    assert [c.step for c in checkpoint.complete_checkpoints(run_folder(config))] == [4, 8]
    resumed = train(rows, config, stages=1, seed=3, progress=False)
    assert resumed.resumed_from == 8 and len(resumed.telemetry.step_seconds) == 4
    assert_same_run(resumed, uninterrupted)
    assert list((Path(config.state_dir) / "checkpoints").iterdir()) == []  # a finished run leaves none behind


def test_a_save_interrupted_before_its_rename_is_not_resumed_from(rows: pd.DataFrame, uninterrupted: TrainResult,
                                                                  tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The run dies after DCP wrote every file of step 8 but before rank 0 renamed it: step 4 is the resume point."""
    import torch.distributed.checkpoint as dcp  # imported where checkpoints are written, so patched at its source

    config = resume_config(tmp_path)
    original = dcp.save

    def write_then_die(state: dict, checkpoint_id: str, **kwargs: object) -> None:
        original(state, checkpoint_id=checkpoint_id, **kwargs)
        if Path(checkpoint_id).name.startswith("step-8"):
            raise RuntimeError("died while saving step 8")

    monkeypatch.setattr(dcp, "save", write_then_die)
    with pytest.raises(RuntimeError, match="died while saving"):
        train(rows, config, stages=1, seed=3, progress=False)
    monkeypatch.setattr(dcp, "save", original)
    folder = run_folder(config)
    assert (folder / f"step-8{PARTIAL}" / ".metadata").is_file()  # every byte written, yet not complete
    resumed = train(rows, config, stages=1, seed=3, progress=False)
    assert resumed.resumed_from == 4
    assert_same_run(resumed, uninterrupted)


def test_resume_never_starts_afresh(rows: pd.DataFrame, uninterrupted: TrainResult, tmp_path: Path) -> None:
    config = resume_config(tmp_path, resume="never")
    folder = _fake_checkpoint(tmp_path / "checkpoints" / "somerun", 8)
    result = train(rows, config, stages=1, seed=3, progress=False)
    assert result.resumed_from == 0 and folder.exists()  # another run's checkpoints are not touched
    assert_same_run(result, uninterrupted)


# --- slow: ranks killed with SIGKILL, resumed with the same or other stage counts --------------------------------


@pytest.mark.slow
def test_a_killed_rank_fails_the_run_and_the_rerun_resumes_exactly(rows: pd.DataFrame, uninterrupted: TrainResult,
                                                                   tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Rank 1 dies by SIGKILL at step 10 (mid-epoch 2): the run fails within the bound, the rerun resumes from the
    checkpoint of step 8 and ends with the uninterrupted run's weights."""
    config = resume_config(tmp_path)
    killed_run(rows, config, monkeypatch, stages=2, schedule="1F1B", rank=1, step=10)
    assert [c.step for c in checkpoint.complete_checkpoints(run_folder(config))] == [4, 8]
    resumed = train(rows, config, stages=2, schedule="1F1B", seed=3, progress=False)
    assert resumed.resumed_from == 8
    assert_same_run(resumed, uninterrupted)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("before", "after"),
    [
        ((2, "1F1B", "local"), (4, "GPipe", "local")),
        ((4, "1F1B", "local"), (1, "1F1B", "local")),
        ((4, "ZBVZeroBubble", "local"), (2, "Interleaved1F1B", "single_process")),
    ],
    ids=["2-to-4", "4-to-1", "4-to-single-process"],
)
def test_a_checkpoint_of_n_stages_resumes_with_m(rows: pd.DataFrame, uninterrupted: TrainResult, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch, before: tuple, after: tuple) -> None:
    (n, first_schedule, _), (m, schedule, launcher) = before, after
    config = resume_config(tmp_path)
    killed_run(rows, config, monkeypatch, stages=n, schedule=first_schedule, rank=1, step=7)
    (latest,) = checkpoint.complete_checkpoints(run_folder(config))
    assert (latest.step, latest.stages) == (4, n)
    resumed = train(rows, resume_config(tmp_path, launcher=launcher), stages=m, schedule=schedule, seed=3,
                    progress=False)
    assert (resumed.resumed_from, resumed.stages) == (4, m)
    assert_same_run(resumed, uninterrupted)
