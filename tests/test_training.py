"""Pipeline-parallel training: settings refused up front, every schedule equal to one process, balanced stages,
measurements, failures that end."""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import logging
import multiprocessing
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from prometheus_client.parser import text_string_to_metric_families
from sklearn.metrics import roc_auc_score
from torch import nn

from driftloop import metrics as names
from driftloop.config import SCHEDULES, Config, DataConfig, ModelConfig, TrainingConfig
from driftloop.errors import TrainingError
from driftloop.training import trainer
from driftloop.training.artifacts import predict
from driftloop.training.features import fit_spec
from driftloop.training.model import build_model, build_stage, cut_stage, stage_blocks
from driftloop.training.partition import balanced_blocks, plan_partition, unit_parameters
from driftloop.training.pipeline import (
    SCHEDULE_CLASSES,
    SINGLE_STAGE,
    V_SHAPED,
    PipelineSettings,
    check_pipeline,
    check_settings,
    derive_stages_per_rank,
)
from driftloop.training.telemetry import summarize
from driftloop.training.trainer import FAIL_RANK_ENV, METRICS_FILE, TrainResult, epoch_order, fitted_batch_size, train
from tests.helpers import make_config

TOLERANCE = 1e-5
# benchmarks/gpu_check.sh runs the one-process exactness tests with this set to cuda (or cpu to check the script).
TEST_DEVICE_ENV = "DRIFTLOOP_TEST_DEVICE"
MULTI_STAGE = [s for s in SCHEDULES if s not in SINGLE_STAGE]


@pytest.fixture
def no_launch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if train() gets as far as starting a rank, in another process or in this one."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a rank was started before the settings were checked")

    monkeypatch.setattr(trainer, "launch", refuse)
    monkeypatch.setattr(trainer, "run_here", refuse)
    monkeypatch.setattr(torch.multiprocessing, "start_processes", refuse)


@pytest.fixture(scope="module")
def small_config(tmp_path_factory: pytest.TempPathFactory) -> Config:
    """Two quick epochs over the 3,200 training rows of flights_jan: 24 steps of 256 rows."""
    return make_config(tmp_path_factory.mktemp("state"), training={"epochs": 2, "batch_size": 256})


@pytest.fixture(scope="module")
def single(flights_jan: pd.DataFrame, small_config: Config) -> TrainResult:
    """The one-process reference run the pipelines must reproduce."""
    return train(flights_jan, small_config, stages=1, seed=3, progress=False)


def tiny_config(state_dir: Path, **training: object) -> Config:
    """A tiny network (hidden 8, 4 blocks) and 6 steps of 64 rows in 4 microbatches: the exactness matrix.

    DRIFTLOOP_TEST_DEVICE, when set, pins training.device (benchmarks/gpu_check.sh: cuda)."""
    if os.environ.get(TEST_DEVICE_ENV):
        training = {"device": os.environ[TEST_DEVICE_ENV], **training}
    return make_config(state_dir, model={"hidden": 8, "blocks": 4},
                       training={"epochs": 1, "batch_size": 64, "microbatches": 4, **training})


@pytest.fixture(scope="module")
def tiny_rows(flights_jan: pd.DataFrame) -> pd.DataFrame:
    """500 real rows: 400 to train on, 100 held out."""
    return flights_jan.head(500)


@pytest.fixture(scope="module")
def tiny_single(tiny_rows: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    """The one-process reference of the exactness matrix (same microbatch accumulation, same seed)."""
    return train(tiny_rows, tiny_config(tmp_path_factory.mktemp("tiny")), stages=1, seed=3, progress=False)


def max_weight_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Largest absolute difference between two state dicts with the same names."""
    assert list(a) == list(b)
    return max(float((a[name] - b[name]).abs().max()) for name in a)


def assert_reproduces(piped: TrainResult, single: TrainResult) -> None:
    """Same loss at every step and same final weights, under the whole model's parameter names."""
    assert len(piped.losses) == len(single.losses)
    assert max(abs(a - b) for a, b in zip(piped.losses, single.losses, strict=True)) < TOLERANCE
    assert list(piped.state) == list(single.state)
    assert max_weight_difference(piped.state, single.state) < TOLERANCE


def assert_measured(result: TrainResult) -> None:
    """Telemetry has one figure per step, stage and rank, and sane values."""
    t = result.telemetry
    assert t is not None and result.partition is not None
    assert len(t.step_seconds) == len(result.losses) and min(t.step_seconds) > 0
    assert t.samples_per_second > 0
    assert len(t.stage_forward_seconds) == len(t.stage_backward_seconds) == result.stages
    assert min(t.stage_forward_seconds) > 0 and min(t.stage_backward_seconds) > 0
    assert len(t.rank_bubble) == result.ranks and all(0 <= b <= 1 for b in t.rank_bubble)
    assert sorted(sum(t.rank_stages, [])) == list(range(result.stages))
    assert len(result.partition.costs) == result.stages and result.partition.imbalance >= 1


# --- settings refused before any rank starts ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("training", "overrides", "setting"),
    [
        ({}, {"stages": 4, "microbatches": 2, "schedule": "1F1B"}, "training.microbatches"),
        ({}, {"stages": 2, "microbatches": 3}, "training.batch_size"),
        ({}, {"stages": 5, "microbatches": 8}, "training.stages"),
        ({}, {"stages": 2, "schedule": "Interleaved"}, "training.schedule"),
        ({}, {"stages": 4, "microbatches": 2, "schedule": "DualPipeV"}, "training.microbatches"),
        ({"stages_per_rank": 1}, {"stages": 3, "microbatches": 16, "schedule": "Interleaved1F1B"},
         "training.microbatches"),
        ({"stages_per_rank": 2}, {"stages": 2, "schedule": "GPipe"}, "training.stages_per_rank"),
        ({"stages_per_rank": 1}, {"stages": 4, "schedule": "ZBVZeroBubble"}, "training.stages_per_rank"),
        ({"stages_per_rank": 3}, {"stages": 4, "schedule": "LoopedBFS"}, "training.stages_per_rank"),
        ({"launcher": "single_process"}, {"stages": 2, "schedule": "1F1B"}, "training.schedule Interleaved1F1B"),
        ({"launcher": "single_process"}, {"stages": 4, "schedule": "ZBVZeroBubble"}, "training.stages must be 2"),
        ({"launcher": "single_process", "stages_per_rank": 1}, {"stages": 2, "schedule": "LoopedBFS"},
         "training.stages_per_rank"),
    ],
)
def test_unworkable_settings_are_refused_before_any_process_starts(
    flights_jan: pd.DataFrame, tmp_path: Path, no_launch: None, training: dict, overrides: dict, setting: str
) -> None:
    config = make_config(tmp_path / "state", training=training)
    start = time.perf_counter()
    with pytest.raises(TrainingError, match=setting):
        train(flights_jan, config, progress=False, **overrides)
    assert time.perf_counter() - start < 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_names_the_device_setting(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="training.device cpu"):
        check_settings(make_config(tmp_path, training={"device": "cuda"}))
    assert check_settings(make_config(tmp_path, training={"device": "auto"})).device == "cpu"


def _stub_stages(ranks: int, per_rank: int) -> list[types.SimpleNamespace]:
    """What torch's schedule constructors read from the stages of rank 0, without a process group."""
    return [types.SimpleNamespace(num_stages=ranks * per_rank, group_size=ranks, group_rank=0, submod=nn.Identity(),
                                  stage_index=i, stage_index_to_group_rank=None) for i in range(per_rank)]


def _torch_accepts(schedule: str, ranks: int, per_rank: int, microbatches: int) -> bool:
    """Whether torch's own schedule class accepts this set-up (its constructor plans every rank's actions)."""
    if schedule in SINGLE_STAGE and per_rank != 1:
        return False  # PipelineScheduleSingle takes one stage: several per rank cannot even be expressed
    stages = _stub_stages(ranks, per_rank)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # a failed plan prints its work in progress
            SCHEDULE_CLASSES[schedule](stages[0] if schedule in SINGLE_STAGE else stages,
                                       n_microbatches=microbatches, loss_fn=None, scale_grads=False)
    except (ValueError, RuntimeError):
        return False
    return True


def test_schedule_rules_agree_with_torchs_schedules() -> None:
    """check_pipeline refuses exactly what torch's constructors refuse (a torch upgrade that changes a rule fails
    here, not in a rank). Runs on stub stages: no process group needed."""
    logging.getLogger("torch.distributed.pipelining").setLevel(logging.CRITICAL)
    disagreements = []
    for schedule, ranks, per_rank, microbatches in itertools.product(SCHEDULES, (1, 2, 3, 4), (1, 2, 3),
                                                                       range(1, 10)):
        if ranks * per_rank == 1:
            continue  # one stage trains without a schedule
        settings = PipelineSettings(stages=ranks * per_rank, schedule=schedule, microbatches=microbatches,
                                    batch_size=microbatches * 8, blocks=12, stages_per_rank=per_rank)
        try:
            check_pipeline(settings)
            ours = True
        except TrainingError:
            ours = False
        if ours != _torch_accepts(schedule, ranks, per_rank, microbatches):
            disagreements.append((schedule, ranks, per_rank, microbatches, ours))
    assert disagreements == []


def test_stage_placement_matches_torchs_mapping() -> None:
    from torch.distributed.pipelining._utils import generate_stage_to_rank_mapping

    for schedule, ranks in itertools.product(SCHEDULES, (1, 2, 3, 4)):
        per_rank = 1 if schedule in SINGLE_STAGE else 2
        settings = PipelineSettings(stages=ranks * per_rank, schedule=schedule, microbatches=8, batch_size=64,
                                    blocks=8, stages_per_rank=per_rank)
        if settings.stages == 1:
            continue
        style = "v" if schedule in V_SHAPED else "loop"
        expected = generate_stage_to_rank_mapping(ranks, settings.stages, style=style)
        assert {s: settings.stage_rank(s) for s in range(settings.stages)} == expected
        assert sorted(sum((settings.rank_stages(r) for r in range(ranks)), [])) == list(range(settings.stages))
    v = PipelineSettings(stages=4, schedule="ZBVZeroBubble", microbatches=4, batch_size=64, blocks=4,
                         stages_per_rank=2)
    assert [v.rank_stages(r) for r in range(2)] == [[0, 3], [1, 2]]  # rank 0 holds the first and the last stage


@pytest.mark.parametrize(
    ("stages", "schedule", "launcher", "requested", "expected"),
    [
        (1, "ZBVZeroBubble", "local", 2, 1),
        (4, "1F1B", "local", None, 1),
        (4, "ZBVZeroBubble", "local", None, 2),
        (4, "Interleaved1F1B", "local", None, 2),
        (3, "LoopedBFS", "local", None, 1),
        (4, "LoopedBFS", "single_process", None, 4),
        (4, "LoopedBFS", "local", 4, 4),
    ],
)
def test_stages_per_rank_is_what_the_schedule_needs_unless_set(stages: int, schedule: str, launcher: str,
                                                               requested: int | None, expected: int) -> None:
    assert derive_stages_per_rank(stages, schedule, launcher, requested) == expected


def test_small_data_shrinks_the_batch_to_whole_microbatches(flights_jan: pd.DataFrame, config: Config) -> None:
    assert fitted_batch_size(256, 1000, 4) == 256
    assert fitted_batch_size(256, 101, 4) == 100
    result = train(flights_jan.head(126), config, stages=1, progress=False)  # 101 training rows, batch 100
    assert result.train_rows == 101 and len(result.losses) == config.training.epochs


def test_fewer_rows_than_microbatches_names_the_fix(flights_jan: pd.DataFrame, config: Config,
                                                   no_launch: None) -> None:
    with pytest.raises(TrainingError, match="training.microbatches"):
        train(flights_jan.head(4), config, progress=False)


def test_gpipe_takes_fewer_microbatches_than_stages(config: Config) -> None:
    settings = check_settings(config, stages=4, schedule="gpipe", microbatches=2, seed=1)
    assert settings == PipelineSettings(stages=4, schedule="GPipe", microbatches=2, batch_size=256, blocks=4)
    assert settings.microbatch_size == 128 and settings.ranks == 4


# --- balanced stages ---------------------------------------------------------------------------------------------


def test_stages_keep_the_whole_models_parameter_names(flights_jan: pd.DataFrame, config: Config) -> None:
    spec = fit_spec(flights_jan, config.data)
    whole = list(build_model(spec, config.model, 0).state_dict())
    for blocks in (None, [range(0, 1), range(1, 2), range(2, 4)]):
        parts = [list(cut_stage(build_model(spec, config.model, 0), s, 3, blocks).state_dict()) for s in range(3)]
        assert sorted(sum(parts, [])) == sorted(whole)
        assert all(name in whole for part in parts for name in part)


def test_a_rank_builds_only_its_stage_with_the_whole_models_weights(flights_jan: pd.DataFrame,
                                                                    config: Config) -> None:
    """Memory per rank: build_stage allocates only the stage's parameters, equal to the whole model's init."""
    spec = fit_spec(flights_jan, config.data)
    whole = build_model(spec, config.model, 7).state_dict()
    for blocks in (None, [range(0, 1), range(1, 2), range(2, 4)]):
        for stage in range(3):
            built = build_stage(spec, config.model, 7, stage, 3, blocks)
            expected = cut_stage(build_model(spec, config.model, 7), stage, 3, blocks).state_dict()
            state = built.state_dict()
            assert list(state) == list(expected)
            assert all(not t.is_meta and torch.equal(t, whole[name]) for name, t in state.items())


def _worst_stage(costs: list[float], cuts: tuple[int, ...], first: float, last: float) -> float:
    """The costliest stage when blocks are cut before each index in `cuts` (brute-force reference)."""
    bounds = [0, *cuts, len(costs)]
    loads = [sum(costs[a:b]) for a, b in itertools.pairwise(bounds)]
    loads[0] += first
    loads[-1] += last
    return max(loads)


def test_balanced_blocks_minimise_the_costliest_stage() -> None:
    assert balanced_blocks([1, 1, 1, 10], 2) == [range(0, 3), range(3, 4)]
    assert balanced_blocks([1, 1, 1, 1], 2, first_extra=2) == [range(0, 1), range(1, 4)]
    generator = np.random.default_rng(0)
    for _ in range(200):
        n = int(generator.integers(1, 7))
        stages = int(generator.integers(1, n + 1))
        costs = generator.uniform(0, 10, n).tolist()
        first, last = generator.uniform(0, 10, 2).tolist()
        ranges = balanced_blocks(costs, stages, first, last)
        assert [r.start for r in ranges] == [0] + [r.stop for r in ranges[:-1]] and ranges[-1].stop == n
        assert all(len(r) >= 1 for r in ranges)
        best = min(_worst_stage(costs, cuts, first, last) for cuts in itertools.combinations(range(1, n), stages - 1))
        assert _worst_stage(costs, tuple(r.start for r in ranges[1:]), first, last) == pytest.approx(best)


def test_partition_by_parameters_and_by_time(flights_jan: pd.DataFrame, tmp_path: Path) -> None:
    config = tiny_config(tmp_path)
    spec = fit_spec(flights_jan, config.data)
    model = build_model(spec, config.model, 0)
    x = torch.zeros(16, spec.width)
    y = torch.zeros(16)
    loss = nn.BCEWithLogitsLoss()
    uniform = plan_partition("uniform", model, 3, (x, y), loss)
    by_parameters = plan_partition("parameters", model, 3, (x, y), loss)
    by_time = plan_partition("time", model, 3, (x, y), loss)
    assert uniform.ranges == stage_blocks(4, 3) and uniform.unit == "parameters"
    # The input layer's embeddings outweigh a block of width 8: balancing gives stage 0 fewer blocks.
    assert by_parameters.blocks[0] == (0, 1) and by_parameters.imbalance < uniform.imbalance
    assert sum(by_parameters.costs) == sum(unit_parameters(model)) == sum(p.numel() for p in model.parameters())
    assert by_time.unit == "seconds" and min(by_time.costs) > 0
    assert [r.stop for r in by_time.ranges][-1] == 4 and all(len(r) >= 1 for r in by_time.ranges)
    assert all(p.grad is None for p in model.parameters())  # profiling leaves no gradients behind


# --- one process, and every schedule in one process --------------------------------------------------------------


def test_single_process_training_improves_the_holdout_auc(single: TrainResult, flights_jan: pd.DataFrame,
                                                          small_config: Config) -> None:
    # Late-January delays are hard to call from schedule and weather: gradient boosting reaches 0.60 on this
    # split, and the network 0.56-0.66 depending on the seed; 0.55 is a margin that seeds reliably clear.
    assert single.metrics["auc"] > 0.55
    assert set(single.metrics) == {"auc", "accuracy", "log_loss", "holdout_loss"}
    assert len(single.losses) == 2 * (3200 // 256)
    assert np.mean(single.losses[-5:]) < np.mean(single.losses[:5])
    assert single.train_rows == 3200 and single.holdout_rows == 800
    # TrainResult.model() is the model that was scored.
    holdout = flights_jan.iloc[3200:]
    auc = roc_auc_score(holdout["arr_delayed"], predict(single.model(), single.spec, holdout))
    assert auc == pytest.approx(single.metrics["auc"])
    again = train(flights_jan, small_config, stages=1, seed=3, progress=False)
    assert again.losses == single.losses
    assert_measured(single)


@pytest.mark.parametrize(("schedule", "stages"),
                         [(s, n) for s in MULTI_STAGE for n in (2, 4) if not (s in V_SHAPED and n == 4)])
def test_one_process_runs_every_stage_and_reproduces_one_process(tiny_single: TrainResult, tiny_rows: pd.DataFrame,
                                                                 tmp_path: Path, schedule: str, stages: int) -> None:
    """training.launcher single_process: all stages in this process, a process group of one (one GPU's mode)."""
    config = tiny_config(tmp_path, launcher="single_process")
    threads, state = torch.get_num_threads(), torch.random.get_rng_state()
    piped = train(tiny_rows, config, stages=stages, schedule=schedule, seed=3, progress=False)
    assert (piped.ranks, piped.stages_per_rank, piped.launcher) == (1, stages, "single_process")
    if os.environ.get(TEST_DEVICE_ENV):  # the GPU check: both really ran on the device asked for
        assert piped.device == tiny_single.device == os.environ[TEST_DEVICE_ENV]
    assert_reproduces(piped, tiny_single)
    assert_measured(piped)
    # The caller's process is left as it was: no process group, same threads and random state.
    assert not torch.distributed.is_initialized() and torch.get_num_threads() == threads
    assert torch.equal(torch.random.get_rng_state(), state)


# --- measurements ------------------------------------------------------------------------------------------------


def test_summary_leaves_out_the_warmup_step_and_measures_the_bubble() -> None:
    step = {"seconds": 1.0, "schedule_seconds": 0.8, "busy_seconds": 0.6, "forward": [0.2], "backward": [0.4]}
    warmup = {**step, "seconds": 9.0, "schedule_seconds": 9.0}
    timings = [{"stages": [0], "steps": [warmup, step, step]},
               {"stages": [1], "steps": [warmup, step, {**step, "seconds": 2.0}]}]
    t = summarize(timings, stages=2, batch_size=100)
    assert t.step_seconds == [9.0, 1.0, 2.0] and t.warmup_steps == 1
    assert t.samples_per_second == pytest.approx(200 / 3)
    assert t.rank_bubble == pytest.approx([0.25, 0.25]) and t.bubble_fraction == pytest.approx(0.25)
    assert t.stage_forward_seconds == [0.2, 0.2] and t.measured_imbalance == pytest.approx(1.0)


def test_training_exports_prometheus_metrics(tiny_rows: pd.DataFrame, tmp_path: Path) -> None:
    config = tiny_config(tmp_path / "state", launcher="single_process", partition="parameters")
    result = train(tiny_rows, config, stages=2, schedule="LoopedBFS", progress=False)
    text = (tmp_path / "state" / Path(*METRICS_FILE)).read_text()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    model = (("model", config.model.name),)
    assert samples[(names.TRAINING_LOSS, model)] == pytest.approx(result.losses[-1])
    assert samples[(names.TRAINING_STEP, model)] == len(result.losses)
    assert samples[(names.TRAINING_SAMPLES_PER_SECOND, model)] == pytest.approx(result.telemetry.samples_per_second)
    assert samples[(names.TRAINING_STAGE_IMBALANCE, model)] == pytest.approx(result.partition.imbalance)
    for stage in ("0", "1"):
        labels = (("model", config.model.name), ("stage", stage))
        assert samples[(names.TRAINING_STAGE_FORWARD, labels)] > 0
        assert samples[(names.TRAINING_STAGE_BACKWARD, labels)] > 0
    assert 0 <= samples[(names.TRAINING_BUBBLE, (("model", config.model.name), ("rank", "0")))] <= 1
    info = [key for key in samples if key[0] == names.TRAINING_INFO]
    assert dict(info[0][1])["schedule"] == "LoopedBFS" and dict(info[0][1])["launcher"] == "single_process"


def test_mlflow_gets_the_pipelines_measurements(tiny_single: TrainResult, tmp_path: Path) -> None:
    import mlflow

    from driftloop.registry.store import _log_training, experiment_id, mlflow_client

    config = tiny_config(tmp_path / "state")
    client = mlflow_client(config)
    with mlflow.start_run(experiment_id=experiment_id(config, client)) as run:
        _log_training(config, tiny_single)
    logged = client.get_run(run.info.run_id).data
    assert {"samples_per_second", "bubble_fraction", "stage_imbalance", "stage_0_forward_seconds",
            "stage_0_backward_seconds", "stage_0_cost", "rank_0_bubble"} <= set(logged.metrics)
    assert logged.params["training.ranks"] == "1" and logged.params["training.stage_blocks"] == "[[0, 4]]"
    history = client.get_metric_history(run.info.run_id, "step_seconds")
    assert len(history) == len(tiny_single.losses)


def test_every_rank_shuffles_the_same_way() -> None:
    assert torch.equal(epoch_order(1000, 7, 2), epoch_order(1000, 7, 2))
    assert not torch.equal(epoch_order(1000, 7, 2), epoch_order(1000, 7, 3))


# --- processes: every schedule, 2 and 4 stages, equal to one process -------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("stages", [2, 4])
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_every_schedule_reproduces_one_process(tiny_single: TrainResult, tiny_rows: pd.DataFrame, tmp_path: Path,
                                               schedule: str, stages: int) -> None:
    piped = train(tiny_rows, tiny_config(tmp_path), stages=stages, schedule=schedule, seed=3, progress=False)
    per_rank = 1 if schedule in SINGLE_STAGE else 2
    assert (piped.stages, piped.schedule, piped.microbatches) == (stages, schedule, 4)
    assert (piped.stages_per_rank, piped.ranks, piped.launcher) == (per_rank, stages // per_rank, "local")
    assert_reproduces(piped, tiny_single)
    assert_measured(piped)


@pytest.mark.slow
def test_balanced_stages_train_the_same_model(tiny_single: TrainResult, tiny_rows: pd.DataFrame,
                                              tmp_path: Path) -> None:
    config = tiny_config(tmp_path, partition="parameters")
    piped = train(tiny_rows, config, stages=3, schedule="1F1B", seed=3, progress=False)
    assert piped.partition is not None and piped.partition.ranges != stage_blocks(4, 3)
    assert_reproduces(piped, tiny_single)


@pytest.mark.slow
@pytest.mark.parametrize("schedule", ["1F1B", "GPipe"])
def test_two_stage_pipeline_reproduces_one_process(single: TrainResult, flights_jan: pd.DataFrame,
                                                   small_config: Config, schedule: str) -> None:
    piped = train(flights_jan, small_config, stages=2, schedule=schedule, seed=3, progress=False)
    assert (piped.stages, piped.schedule, piped.microbatches) == (2, schedule, 4)
    assert_reproduces(piped, single)
    assert list(piped.state) == list(build_model(piped.spec, small_config.model, 0).state_dict())
    assert piped.metrics["auc"] == pytest.approx(single.metrics["auc"], abs=1e-4)


def regression_frame(rows: int, seed: int = 0) -> pd.DataFrame:
    """A synthetic regression table: a linear target with a category offset, far from zero mean."""
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=rows), rng.normal(size=rows)
    c = rng.choice(["x", "y", "z"], size=rows)
    offset = pd.Series(c).map({"x": 0.0, "y": 1.5, "z": -1.5}).to_numpy()
    y = 50 + 2 * a - b + offset + rng.normal(scale=0.1, size=rows)
    return pd.DataFrame({"a": a, "b": b, "c": c, "y": y})


@pytest.mark.slow
def test_regression_trains_through_the_pipeline(tmp_path: Path) -> None:
    config = Config(state_dir=tmp_path, data=DataConfig(target="y", task="regression", numerical=["a", "b"],
                                                        categorical=["c"]),
                    model=ModelConfig(hidden=16, blocks=2),
                    training=TrainingConfig(stages=2, schedule="GPipe", microbatches=2, batch_size=64, epochs=6,
                                            learning_rate=5e-3))
    frame = regression_frame(1200)
    result = train(frame, config, progress=False)
    assert set(result.metrics) == {"rmse", "mae", "holdout_loss"}
    assert result.metrics["rmse"] < 0.3 * frame["y"].std()
    assert result.spec.target_mean == pytest.approx(50, abs=0.5)


@pytest.mark.slow
def test_a_failing_rank_ends_the_run_with_its_error(flights_jan: pd.DataFrame, small_config: Config,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # Set after earlier tests started the fork server: ranks must still see the parent's environment of now.
    monkeypatch.setenv(FAIL_RANK_ENV, "1")
    start = time.perf_counter()
    with pytest.raises(TrainingError, match=r"rank 1 .*injected failure"):
        train(flights_jan, small_config, stages=2, progress=False)
    assert time.perf_counter() - start < 60
    assert multiprocessing.active_children() == []


# --- the command line ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_pipeline_matches_one_stage(tiny_rows: pd.DataFrame, tmp_path: Path) -> None:
    """`driftloop train --stages 4 --schedule ZBVZeroBubble --json` and `--stages 1` with the same seed: both run at
    once (each CLI run spends most of its time importing and starting Prefect), each with its own state."""
    data = tmp_path / "rows.csv"
    tiny_rows.to_csv(data, index=False)
    runs = {}
    for stages, schedule in ((4, "ZBVZeroBubble"), (1, "ZBVZeroBubble")):
        folder = tmp_path / f"stages{stages}"
        folder.mkdir()
        raw = json.loads(tiny_config(folder / "state").model_dump_json())
        (folder / "config.yaml").write_text(yaml.safe_dump(raw))
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        runs[stages] = subprocess.Popen(
            [sys.executable, "-m", "driftloop.cli", "train", "--config", "config.yaml", "--data", str(data),
             "--stages", str(stages), "--schedule", schedule, "--seed", "5", "--json"],
            cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    payloads = {}
    for stages, process in runs.items():
        out, err = process.communicate(timeout=600)
        assert process.returncode == 0, err[-3000:]
        payloads[stages] = json.loads(out)
    piped, one = payloads[4], payloads[1]
    assert (piped["stages"], piped["schedule"], piped["microbatches"]) == (4, "ZBVZeroBubble", 4)
    assert (piped["stages_per_rank"], piped["ranks"]) == (2, 2)
    assert (one["stages"], one["stages_per_rank"], one["ranks"]) == (1, 1, 1)
    assert piped["final_loss"] == pytest.approx(one["final_loss"], abs=1e-4)


# --- torchrun: several machines ------------------------------------------------------------------------------------


def test_torchrun_commands_follow_the_rendezvous_settings() -> None:
    from driftloop.training.launcher import torchrun_commands

    entry = ["--config", "/shared/c.yaml", "--data", "/shared/d.csv"]
    (c10d,) = torchrun_commands(4, nnodes=2, nproc_per_node=None, rdzv_backend="c10d", rdzv_endpoint="node0:29400",
                                rdzv_id="job7", node_rank=None, entry_args=entry)
    assert c10d == ["torchrun", "--nnodes=2", "--nproc-per-node=2", "--rdzv-backend=c10d",
                    "--rdzv-endpoint=node0:29400", "--rdzv-id=job7", "-m", "driftloop.training.torchrun_entry", *entry]
    static = torchrun_commands(4, nnodes=2, nproc_per_node=2, rdzv_backend="static", rdzv_endpoint="node0:29400",
                               rdzv_id="job7", node_rank=None, entry_args=entry)
    assert [c[6] for c in static] == ["--node-rank=0", "--node-rank=1"]
    with pytest.raises(TrainingError, match="training.nproc_per_node"):
        torchrun_commands(4, nnodes=3, nproc_per_node=None, rdzv_backend="c10d", rdzv_endpoint="h:1", rdzv_id="j",
                          node_rank=None, entry_args=entry)


def test_torchrun_launcher_outside_torchrun_says_how_to_start_it(tiny_rows: pd.DataFrame, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(TrainingError, match="driftloop train --launcher torchrun"):
        train(tiny_rows, tiny_config(tmp_path, launcher="torchrun"), stages=2, progress=False)


@pytest.mark.slow
def test_torchrun_trains_the_same_model_as_the_local_launcher(tiny_rows: pd.DataFrame, tmp_path: Path) -> None:
    """`torchrun --standalone --nproc-per-node 2 -m driftloop.training.torchrun_entry` on this machine (gloo): the
    merged weights rank 0 saves equal the local launcher's on the same file, config and seed."""
    from safetensors.torch import load_file

    from driftloop.data import read_table, sort_by_time
    from driftloop.training.artifacts import WEIGHTS

    data = tmp_path / "rows.csv"
    tiny_rows.to_csv(data, index=False)
    config = tiny_config(tmp_path / "state", launcher="torchrun")
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(json.loads(config.model_dump_json())))
    torchrun = Path(sys.executable).with_name("torchrun")
    worker = subprocess.Popen(
        [str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "driftloop.training.torchrun_entry",
         "--config", str(config_path), "--data", str(data), "--stages", "2", "--seed", "3",
         "--output", str(tmp_path / "out")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # The local run trains meanwhile: the two share the CPU, but each waits mostly on imports.
    frame = sort_by_time(read_table(data), config.data)
    local = train(frame, tiny_config(tmp_path / "local"), stages=2, seed=3, progress=False)
    out, err = worker.communicate(timeout=120)
    assert worker.returncode == 0, err[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert (summary["launcher"], summary["ranks"], summary["stages"]) == ("torchrun", 2, 2)
    assert summary["losses"] == pytest.approx(local.losses, abs=TOLERANCE)
    weights = load_file(str(tmp_path / "out" / WEIGHTS))
    assert sorted(weights) == sorted(local.state)
    assert max(float((weights[k] - local.state[k]).abs().max()) for k in weights) < TOLERANCE


# --- the pipeline sweep --------------------------------------------------------------------------------------------


def test_the_ideal_step_is_the_bubble_of_p_stages_and_m_microbatches() -> None:
    from driftloop.training.sweep import ideal_seconds, parse_grid

    assert ideal_seconds(260, 2, 8) == pytest.approx(146.25)  # a measured example: 260 x 9 / 16
    assert ideal_seconds(1.0, 1, 4) == 1.0
    assert parse_grid("1, 2,4", (2,), int, "--stages") == [1, 2, 4] and parse_grid(None, (2,), int, "-") == [2]
    with pytest.raises(TrainingError, match="--microbatches"):
        parse_grid("4,x", (4,), int, "--microbatches")


@pytest.mark.slow
def test_tune_pipeline_prints_the_grid_and_records_it_in_mlflow(tiny_rows: pd.DataFrame, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """A 2 x 2 grid (stages 2, 4 x microbatches 2, 4; 1F1B) of 2 steps each, through the CLI in this process:
    the one-process rows, three measured pipelines, 1F1B at 4 stages and 2 microbatches skipped with the reason."""
    from driftloop.cli import main
    from driftloop.registry.store import mlflow_client
    from driftloop.registry.sweep_log import KIND_TAG, SWEEP_KIND, TABLE_ARTIFACT

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))  # nothing here may point Prefect elsewhere
    data = tmp_path / "rows.csv"
    tiny_rows.to_csv(data, index=False)
    config = tiny_config(tmp_path / "state")
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(json.loads(config.model_dump_json())))
    argv = ["tune-pipeline", "--config", str(config_path), "--data", str(data), "--stages", "2,4", "--schedules",
            "1F1B", "--microbatches", "2,4", "--steps", "2", "--json"]
    assert main(argv) == 0
    payload = json.loads(capsys.readouterr().out)
    rows = {(r["stages"], r["schedule"], r["microbatches"]): r for r in payload["rows"]}
    assert set(rows) == {(1, "-", 2), (1, "-", 4), (2, "1F1B", 2), (2, "1F1B", 4), (4, "1F1B", 2), (4, "1F1B", 4)}
    skipped = rows[(4, "1F1B", 2)]
    assert skipped["status"] == "skipped" and "training.microbatches" in skipped["reason"]
    for key in [(2, "1F1B", 2), (2, "1F1B", 4), (4, "1F1B", 4)]:
        row = rows[key]
        assert row["status"] == "ok" and row["samples_per_second"] > 0 and 0 < row["efficiency"] < 2
        assert row["ideal_seconds"] > 0 and 0 <= row["bubble"] <= 1 and row["imbalance"] >= 1
        # A stage holds part of the model: less state than the one process.
        assert 0 < row["peak_state_bytes"] < rows[(1, "-", key[2])]["peak_state_bytes"]
    best = payload["best"]
    assert best["stages"] > 1 and best["samples_per_second"] == max(
        rows[k]["samples_per_second"] for k in rows if k[0] > 1 and rows[k]["status"] == "ok")
    client = mlflow_client(config)
    run = client.get_run(payload["run_id"])
    assert run.data.tags[KIND_TAG] == SWEEP_KIND
    assert run.data.params["best.stages"] == str(best["stages"])
    assert run.data.params["best.microbatches"] == str(best["microbatches"])
    assert "p2.1F1B.m2.samples_per_second" in run.data.metrics
    table = json.loads(Path(client.download_artifacts(run.info.run_id, TABLE_ARTIFACT, str(tmp_path))).read_text())
    assert len(table["rows"]) == 6
    assert not (tmp_path / "state" / "metrics").exists()  # the trial runs kept their state to themselves


@pytest.mark.slow
def test_train_with_the_torchrun_launcher_prints_the_command_for_each_node(tiny_rows: pd.DataFrame, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """`driftloop train --launcher torchrun` trains nothing here: it writes the effective config where the nodes
    read it and prints the torchrun line(s) that run training.torchrun_entry with it."""
    from driftloop.cli import main

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    data = tmp_path / "rows.csv"
    tiny_rows.to_csv(data, index=False)
    config = tiny_config(tmp_path / "state", nnodes=2, rdzv_backend="static", rdzv_endpoint="node0:29400")
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(json.loads(config.model_dump_json())))
    argv = ["train", "--config", str(config_path), "--data", str(data), "--launcher", "torchrun", "--stages", "4",
            "--partition", "parameters", "--json"]
    assert main(argv) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["ranks"] == 4 and len(payload["torchrun"]) == 2
    assert "--node-rank=1" in payload["torchrun"][1] and "--nproc-per-node=2" in payload["torchrun"][0]
    assert f"--data {data}" in payload["torchrun"][0] and "--stages 4" in payload["torchrun"][0]
    written = yaml.safe_load(Path(payload["config"]).read_text())
    assert written["training"]["partition"] == "parameters" and written["training"]["launcher"] == "torchrun"


# --- choosing the epoch: validation split, early stopping, learning-rate schedule, scaling ------------------------


def noise_rows(rows: int, seed: int = 0) -> pd.DataFrame:
    """Features that say nothing about a random label: any fit beyond the first epochs is overfitting, so the
    validation loss turns upward early and stays up (a plateau that early stopping must end)."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"a": rng.normal(size=rows), "b": rng.lognormal(size=rows),
                         "c": rng.choice(list("abcdefghij"), size=rows), "y": rng.integers(0, 2, size=rows)})


def noise_config(state_dir: Path, **training: object) -> Config:
    """A wide network, a constant learning rate (its trajectory does not depend on the epoch count) and a random
    validation split of the noise rows; the weights early stopping kept, without a refit (tests/test_model_defaults.py
    tests the refit), and batches of 64."""
    return Config(state_dir=state_dir, data=DataConfig(target="y", numerical=["a", "b"], categorical=["c"]),
                  model=ModelConfig(hidden=32, blocks=4),
                  training=TrainingConfig(**{"stages": 1, "batch_size": 64, "microbatches": 4, "epochs": 60,
                                             "learning_rate": 1e-2, "lr_schedule": "constant",
                                             "validation_fraction": 0.25, "patience": 3, "refit": False,
                                             "min_epoch_steps": 1, **training}))


def test_early_stopping_stops_on_a_plateau_and_keeps_the_best_epochs_weights(tmp_path: Path) -> None:
    frame = noise_rows(600)
    stopped = train(frame, noise_config(tmp_path / "a"), seed=1, progress=False)
    best, seen = stopped.best_epoch, stopped.validation_losses
    # Stopped `patience` epochs after the best one, long before the 60 allowed, and none of those beat it.
    assert 0 <= best < len(seen) - 1 and len(seen) == best + 1 + 3 < 60
    assert min(seen) == seen[best] and all(loss > seen[best] - 1e-4 for loss in seen[best + 1:])
    assert len(stopped.losses) == len(seen) * (stopped.train_rows // 64)
    assert (stopped.train_rows, stopped.validation_rows, stopped.holdout_rows) == (360, 120, 120)
    # The weights returned are the best epoch's: a run allowed exactly best + 1 epochs ends with them.
    short = train(frame, noise_config(tmp_path / "b", epochs=best + 1), seed=1, progress=False)
    assert short.validation_losses == seen[:best + 1]
    assert max_weight_difference(stopped.state, short.state) == 0.0


def test_the_validation_split_is_time_later_with_a_timestamp_and_random_without() -> None:
    from driftloop.training.validation import validation_split

    frame = pd.DataFrame({"t": pd.date_range("2024-01-01", periods=100, freq="h"), "v": range(100)})
    fit, held = validation_split(frame, 0.2, "t", seed=0)
    assert list(held["v"]) == list(range(80, 100)) and len(fit) == 80
    fit, held = validation_split(frame, 0.2, None, seed=0)
    assert len(held) == 20 and sorted(list(fit["v"]) + list(held["v"])) == list(range(100))
    assert list(held["v"]) != list(range(80, 100))
    assert validation_split(frame, 0.2, None, seed=0)[1].equals(held)  # the seed decides the draw
    assert len(validation_split(frame, 0.0, "t", seed=0)[1]) == 0


def test_the_learning_rate_warms_up_then_decays_to_its_floor() -> None:
    from driftloop.training.validation import lr_factor

    factors = [lr_factor(step, 100, "cosine", 0.1, 0.05) for step in range(100)]
    assert factors[0] < factors[5] < factors[9] <= 1.0
    assert max(factors) == pytest.approx(1.0) and factors[-1] == pytest.approx(0.05)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:], strict=False))
    assert {lr_factor(step, 100, "constant", 0.1, 0.05) for step in range(100)} == {1.0}


@pytest.mark.parametrize("scaling", ["quantile", "robust", "standard"])
def test_scaling_and_embeddings_round_trip_through_save_and_load(flights_jan: pd.DataFrame, tmp_path: Path,
                                                                 scaling: str) -> None:
    from driftloop.training.artifacts import LEGACY_MODEL, MODEL, load_model, save_model

    model = ModelConfig(hidden=16, blocks=2, scaling=scaling, embedding_rule="cardinality", embedding_dim=12,
                        numerical_embedding="periodic" if scaling == "quantile" else "none")
    config = make_config(tmp_path / "state", model=json.loads(model.model_dump_json()))
    spec = fit_spec(flights_jan, config.data, config.model)
    net = build_model(spec, config.model, seed=0)
    widths = [emb.embedding_dim for emb in net.input.embeddings]
    assert widths == config.model.embedding_dims(spec.cardinalities) and len(set(widths)) > 1  # origin < dest
    loaded = load_model(save_model(tmp_path / "model", net.state_dict(), spec, config.model))
    assert loaded.spec == spec and loaded.spec.scaling == scaling
    rows = flights_jan.head(200).copy()
    rows.loc[rows.index[:3], "temp"] = [np.nan, 1e9, -1e9]  # missing, and far outside training
    expected = predict(net, spec, rows)
    assert np.isfinite(expected).all()
    np.testing.assert_allclose(loaded.predict(rows), expected, rtol=1e-6)
    records = json.loads(rows[spec.numerical + spec.categorical].to_json(orient="records"))
    np.testing.assert_allclose(loaded.predict_rows(records), expected, rtol=1e-5, atol=1e-6)
    # A model saved before these settings existed (no keys for them) loads as it was built: fixed widths, no
    # periodic embedding, no wide path.
    legacy = ModelConfig(embedding_rule="fixed", numerical_embedding="none", wide=False, hidden=16, blocks=2)
    folder = save_model(tmp_path / "legacy", build_model(spec, legacy, 0).state_dict(), spec, legacy)
    raw = json.loads((folder / MODEL).read_text())
    (folder / MODEL).write_text(json.dumps({k: v for k, v in raw.items() if k not in LEGACY_MODEL}))
    assert load_model(folder).predict(rows).shape == (200,)


@pytest.mark.slow
def test_early_stopping_resumes_from_a_checkpoint_to_the_same_run(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint keeps the validation losses and the best weights: a run that dies and resumes stops at the same
    epoch with the same weights as one never stopped."""
    from driftloop.training import checkpoint

    frame = noise_rows(600)
    reference = train(frame, noise_config(tmp_path / "ref"), seed=1, progress=False)
    config = noise_config(tmp_path / "run", checkpoint_every=5)
    original = checkpoint.save

    def save_then_die(job: object, step: int, *args: object, **kwargs: object) -> None:
        original(job, step, *args, **kwargs)
        if step == 10:
            raise RuntimeError("died after step 10")

    monkeypatch.setattr(trainer.checkpoint, "save", save_then_die)
    with pytest.raises(RuntimeError, match="died after step 10"):
        train(frame, config, seed=1, progress=False)
    monkeypatch.setattr(trainer.checkpoint, "save", original)
    resumed = train(frame, config, seed=1, progress=False)
    assert resumed.resumed_from == 10 and len(reference.validation_losses) > 2
    assert resumed.validation_losses == pytest.approx(reference.validation_losses, abs=1e-6)
    assert resumed.best_epoch == reference.best_epoch
    assert max_weight_difference(resumed.state, reference.state) < 1e-6


@pytest.mark.slow
@pytest.mark.parametrize(("schedule", "stages", "launcher"),
                         [("1F1B", 2, "local"), ("ZBVZeroBubble", 4, "local"), ("Interleaved1F1B", 4, "local"),
                          ("LoopedBFS", 2, "single_process"), ("DualPipeV", 2, "single_process")])
def test_early_stopping_on_every_schedule_matches_one_process(tmp_path: Path, schedule: str, stages: int,
                                                              launcher: str) -> None:
    """The validation loss computed stage by stage (across ranks, or in one process) decides like one process: the
    same validation losses, the same stop and the same best weights."""
    frame = noise_rows(600)
    config = noise_config(tmp_path / "one", lr_schedule="cosine")
    one = train(frame, config, seed=1, progress=False)
    piped = train(frame, noise_config(tmp_path / "piped", lr_schedule="cosine", launcher=launcher), stages=stages,
                  schedule=schedule, seed=1, progress=False)
    assert piped.best_epoch == one.best_epoch and len(piped.validation_losses) == len(one.validation_losses)
    assert max(abs(a - b) for a, b in zip(piped.validation_losses, one.validation_losses, strict=True)) < TOLERANCE
    assert_reproduces(piped, one)


def test_single_process_refuses_a_torch_whose_schedules_send_within_one_process() -> None:
    """torch 2.11's multi-stage schedules fail in one process (measured on CUDA and CPU): a clear error first."""
    from driftloop.training.pipeline import check_single_process_torch

    with pytest.raises(TrainingError, match=r"torch >= 2\.13 \(this is torch 2\.11\.0\+cu130"):
        check_single_process_torch("2.11.0+cu130")
    check_single_process_torch("2.13.0+cpu")
    check_single_process_torch("2.14.1")
