"""The default network of issue 13: the wide (linear) path beside the deep one, the refit on every training row
once early stopping has chosen the epoch, and the batch a small table gets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from driftloop.config import Config, DataConfig, ModelConfig, TrainingConfig
from driftloop.training import trainer
from driftloop.training.features import encode, fit_spec
from driftloop.training.model import activation_width, build_model, build_stage
from driftloop.training.trainer import LoopSettings, TrainResult, fitted_batch_size, refit_loop, train

DATA = DataConfig(target="y", numerical=["a", "b"], categorical=["c"])


def signal_rows(rows: int, seed: int = 0) -> pd.DataFrame:
    """A label that depends on a number and a category, with noise: a few epochs learn it, more overfit."""
    rng = np.random.default_rng(seed)
    a, c = rng.normal(size=rows), rng.choice(list("abcdefghij"), size=rows)
    logit = 1.5 * a + np.where(np.isin(c, list("abc")), 1.0, -0.5) + rng.normal(scale=2.0, size=rows)
    return pd.DataFrame({"a": a, "b": rng.lognormal(size=rows), "c": c, "y": (logit > 0).astype("int64")})


def config_for(state_dir: Path, **training: object) -> Config:
    """A small network with the wide path, a random validation split and a cosine schedule."""
    settings = {"stages": 1, "batch_size": 64, "microbatches": 4, "epochs": 40, "learning_rate": 1e-2,
                "validation_fraction": 0.25, "patience": 3, "min_epoch_steps": 1, **training}
    return Config(state_dir=state_dir, data=DATA, model=ModelConfig(hidden=16, blocks=2, wide=True),
                  training=TrainingConfig(**settings))


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Largest absolute difference between two state dicts with the same names."""
    assert list(a) == list(b)
    return max(float((a[name] - b[name]).abs().max()) for name in a)


def test_the_wide_paths_output_is_a_linear_model_added_to_the_networks() -> None:
    frame = signal_rows(200)
    model = ModelConfig(hidden=16, blocks=2, wide=True)
    spec = fit_spec(frame, DATA, model)
    net = build_model(spec, model, seed=0).eval()
    x = encode(frame, spec)
    wide = net.input.wide
    with torch.no_grad():
        assert float(wide(x).abs().max()) == 0.0  # starts at zero: the network alone at first
        for parameter in wide.parameters():
            parameter.normal_()
        activation = net.input(x)
        assert activation.shape == (200, activation_width(model)) == (200, 17)
        deep = activation[:, :16]
        for block in net.blocks.values():
            carried = block(torch.cat([deep, activation[:, 16:]], dim=1))
            assert torch.equal(carried[:, 16], activation[:, 16])  # the wide logit rides through untouched
            deep = block(deep)
            assert torch.equal(carried[:, :16], deep)
        codes = x[:, 2].long()
        linear = x[:, :2] @ wide.numbers.weight[0] + wide.numbers.bias[0] + wide.levels[0].weight[codes, 0]
        expected = net.head.out(net.head.norm(deep)).squeeze(-1) + linear
        assert torch.allclose(net(x), expected, atol=1e-5)
        assert float((net(x) - net.head.out(net.head.norm(deep)).squeeze(-1)).abs().max()) > 0.1


def test_without_the_wide_path_the_network_is_unchanged() -> None:
    """model.wide false builds the network of before: the same names and, from the same seed, the same weights."""
    frame = signal_rows(100)
    spec = fit_spec(frame, DATA)
    plain = build_model(spec, ModelConfig(hidden=16, blocks=2, wide=False), seed=3).state_dict()
    wide = build_model(spec, ModelConfig(hidden=16, blocks=2, wide=True), seed=3).state_dict()
    assert not any(".wide." in name for name in plain)
    assert {name for name in wide if ".wide." in name} == set(wide) - set(plain)
    assert all(torch.equal(plain[name], wide[name]) for name in plain if name.startswith("input.project"))


def test_a_column_with_more_levels_than_wide_max_levels_enters_through_its_embedding_only(tmp_path: Path) -> None:
    """model.wide_max_levels counts the levels seen in training: at the count the column has a wide term, one
    below it none (its embedding stays); a wide model saved before the setting existed loads with every column."""
    from driftloop.training.artifacts import MODEL, load_model, save_model

    frame = signal_rows(300)
    frame["d"] = [f"id{i % 40}" for i in range(300)]  # an id-like column of 40 levels beside c's 10
    data = DataConfig(target="y", numerical=["a", "b"], categorical=["c", "d"])
    spec = fit_spec(frame, data)
    assert spec.cardinalities == [11, 41]  # the unknown bucket counts in a cardinality, not in the setting

    def wide_levels(max_levels: int | None) -> list[int]:
        net = build_model(spec, ModelConfig(hidden=16, blocks=2, wide=True, wide_max_levels=max_levels), seed=0)
        assert len(net.input.embeddings) == 2  # the deep path always embeds both
        return [level.num_embeddings for level in net.input.wide.levels]

    assert wide_levels(40) == wide_levels(None) == [11, 41]
    assert wide_levels(39) == wide_levels(10) == [11]
    assert wide_levels(9) == []
    x = encode(frame, spec)
    net = build_model(spec, ModelConfig(hidden=16, blocks=2, wide=True, wide_max_levels=10), seed=0).eval()
    with torch.no_grad():
        for parameter in net.input.wide.parameters():
            parameter.normal_()
        changed = x.clone()
        changed[:, 3] = (changed[:, 3] % 40) + 1  # other ids: the wide logit must not move
        assert torch.equal(net.input.wide(x), net.input.wide(changed))
    every = ModelConfig(hidden=16, blocks=2, wide=True, wide_max_levels=None)
    folder = save_model(tmp_path / "before", build_model(spec, every, 0).state_dict(), spec, every)
    raw = json.loads((folder / MODEL).read_text())
    (folder / MODEL).write_text(json.dumps({k: v for k, v in raw.items() if k != "wide_max_levels"}))
    assert ModelConfig().wide_max_levels is not None and ModelConfig().wide_max_levels < 40
    assert load_model(folder).predict(frame).shape == (300,)


def test_each_stage_of_a_wide_model_holds_the_whole_models_weights() -> None:
    spec = fit_spec(signal_rows(100), DATA)
    model = ModelConfig(hidden=16, blocks=4, wide=True)
    whole = build_model(spec, model, seed=5).state_dict()
    parts: dict[str, torch.Tensor] = {}
    for stage in range(2):
        parts.update(build_stage(spec, model, 5, stage, 2).state_dict())
    assert max_difference(parts, {name: whole[name] for name in parts}) == 0.0 and set(parts) == set(whole)


def test_a_small_table_gets_a_batch_that_makes_enough_steps() -> None:
    assert fitted_batch_size(256, 600, 4, min_epoch_steps=8) == 72  # 600 // 8 = 75, in whole microbatches
    assert fitted_batch_size(256, 20_000, 4, min_epoch_steps=8) == 256  # a large table keeps batch_size
    assert fitted_batch_size(256, 101, 4) == 100  # one step per epoch allowed: as before
    assert fitted_batch_size(256, 10, 4, min_epoch_steps=8) == 4  # never below one microbatch of rows


def test_the_refit_runs_as_many_epochs_over_every_row() -> None:
    loop = LoopSettings(epochs=100, batch_size=64, microbatches=4, seed=0, learning_rate=1e-3, weight_decay=0.0,
                        max_steps=4000)
    refit = refit_loop(loop, best_epoch=4, fit_rows=640, all_rows=800)
    assert (refit.epochs, refit.max_steps) == (5, 4000)  # 5 epochs of 800 rows: 60 steps, not 50
    assert trainer.total_steps(800, refit) == 60
    # training.max_steps ended the first run in its third epoch (25 of 10 x 3 steps): the refit ends as far in.
    capped = refit_loop(LoopSettings(100, 64, 4, 0, 1e-3, 0.0, max_steps=25), best_epoch=2, fit_rows=640,
                        all_rows=800)
    assert (capped.epochs, capped.max_steps) == (3, 25)  # 32 scaled, but never past training.max_steps
    # The kept epoch was whole but its epochs over all rows would pass training.max_steps: the refit stops there.
    assert trainer.total_steps(800, refit_loop(LoopSettings(100, 64, 4, 0, 1e-3, 0.0, max_steps=55), 4, 640,
                                               800)) == 55


def test_refit_trains_every_training_row_for_the_epochs_early_stopping_chose(tmp_path: Path) -> None:
    frame = signal_rows(800)
    chosen = train(frame, config_for(tmp_path / "chosen", refit=False), seed=1, progress=False)
    refit = train(frame, config_for(tmp_path / "refit", refit=True), seed=1, progress=False)
    best = chosen.best_epoch
    assert 0 <= best < len(chosen.validation_losses) - 1  # it stopped early
    assert refit.validation_losses == chosen.validation_losses and refit.best_epoch == best
    # 800 rows: 160 held out, 480 fit + 160 validation in the first run; the refit trains on all 640.
    assert (chosen.train_rows, refit.train_rows, refit.validation_rows) == (480, 640, 160)
    assert refit.refit_steps == len(refit.losses) == (best + 1) * (640 // 64) and chosen.refit_steps == 0
    # Its weights are those of a run on all 640 rows for exactly best + 1 epochs without a validation split.
    plain = train(frame, config_for(tmp_path / "plain", validation_fraction=0.0, epochs=best + 1), seed=1,
                  progress=False)
    assert max_difference(refit.state, plain.state) == 0.0
    assert refit.metrics["auc"] == pytest.approx(plain.metrics["auc"])
    assert not (tmp_path / "refit" / "checkpoints").exists() or not any((tmp_path / "refit" / "checkpoints").iterdir())


@pytest.mark.slow
def test_a_refit_through_the_pipeline_matches_one_process(tmp_path: Path) -> None:
    """The wide path and the refit through two stages on two ranks: the same losses and weights as one process."""
    frame = signal_rows(800)
    one = train(frame, config_for(tmp_path / "one", refit=True), seed=1, progress=False)
    piped = train(frame, config_for(tmp_path / "piped", refit=True, launcher="local"), stages=2, schedule="1F1B",
                  seed=1, progress=False)
    assert_same_run(piped, one)


def assert_same_run(piped: TrainResult, single: TrainResult) -> None:
    """Same validation losses, best epoch, refit steps and losses, and the same final weights."""
    assert piped.best_epoch == single.best_epoch and piped.refit_steps == single.refit_steps > 0
    assert max(abs(a - b) for a, b in zip(piped.validation_losses, single.validation_losses, strict=True)) < 1e-5
    assert max(abs(a - b) for a, b in zip(piped.losses, single.losses, strict=True)) < 1e-5
    assert max_difference(piped.state, single.state) < 1e-5
