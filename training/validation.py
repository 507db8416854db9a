"""Choosing the epoch: the validation split, the validation loss (whole model or stage by stage across ranks),
early stopping with the best weights kept, and the learning-rate schedule.

Every rank takes the same decisions without agreeing on them: the schedule depends only on the step number, and the
validation loss is computed once (by the rank with the last stage, or the one process) and broadcast to all ranks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch import nn

from driftloop.data import split_by_fraction


def validation_split(frame: pd.DataFrame, fraction: float, timestamp: str | None,
                     seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rows to fit, validation rows): the time-latest `fraction` when there is a timestamp (frame is in time
    order), a random draw otherwise; no validation rows when `fraction` is 0 or the frame too small to split."""
    if fraction <= 0 or len(frame) < 2:
        return frame, frame.iloc[:0]
    if timestamp is not None:
        return split_by_fraction(frame, fraction)
    order = np.random.default_rng(seed).permutation(len(frame))
    cut = min(max(int(round(len(frame) * (1 - fraction))), 1), len(frame) - 1)
    fit, held = np.sort(order[:cut]), np.sort(order[cut:])
    return frame.iloc[fit].reset_index(drop=True), frame.iloc[held].reset_index(drop=True)


def lr_factor(step: int, total: int, schedule: str, warmup_fraction: float, min_fraction: float) -> float:
    """The share of the peak learning rate at optimizer step `step` (from 0) of a run of `total` steps."""
    if schedule == "constant" or total <= 1:
        return 1.0
    warmup = int(round(warmup_fraction * total))
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = (step - warmup) / max(1, total - 1 - warmup)
    return min_fraction + (1 - min_fraction) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def summed_loss(task: str) -> nn.Module:
    """The training loss summed over rows, so that chunks add up to the mean over the whole validation set."""
    return nn.BCEWithLogitsLoss(reduction="sum") if task == "classification" else nn.MSELoss(reduction="sum")


@dataclass
class EarlyStopping:
    """The validation losses so far, the best epoch's weights of the stages this rank owns, and when to stop."""

    patience: int
    min_delta: float
    losses: list[float] = field(default_factory=list)
    best_state: dict[str, torch.Tensor] | None = None

    @property
    def best_epoch(self) -> int:
        """Index of the best validation loss so far (-1 before the first)."""
        best, where = math.inf, -1
        for index, loss in enumerate(self.losses):
            if loss < best - self.min_delta:
                best, where = loss, index
        return where

    def record(self, loss: float, modules: Mapping[int, nn.Module]) -> bool:
        """Add one epoch's validation loss, keep the weights if it is the best; True when the run should stop."""
        self.losses.append(loss)
        if self.best_epoch == len(self.losses) - 1:
            self.best_state = stage_state(modules)
        return len(self.losses) - 1 - self.best_epoch >= self.patience

    def restore(self, modules: Mapping[int, nn.Module]) -> None:
        """Put the best epoch's weights back into this rank's stages."""
        if self.best_state is None:
            return
        with torch.no_grad():
            for name, tensor in stage_state(modules, copy=False).items():
                tensor.copy_(self.best_state[name])


def stage_state(modules: Mapping[int, nn.Module], copy: bool = True) -> dict[str, torch.Tensor]:
    """The weights of this rank's stages under the whole model's names (copies unless `copy` is False)."""
    return {name: tensor.detach().clone() if copy else tensor
            for stage in sorted(modules) for name, tensor in modules[stage].state_dict().items()}


@torch.no_grad()
def model_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, task: str, chunk: int) -> float:
    """Mean training loss of the whole model on (x, y), in eval mode, `chunk` rows at a time."""
    was_training = model.training
    model.eval()
    loss_fn = summed_loss(task)
    total = sum(float(loss_fn(model(xb), yb)) for xb, yb in zip(x.split(chunk), y.split(chunk), strict=True))
    model.train(was_training)
    return total / len(x)


@torch.no_grad()
def staged_loss(modules: Mapping[int, nn.Module], stage_rank: list[int], x: torch.Tensor, y: torch.Tensor,
                task: str, chunk: int, hidden: int, device: torch.device) -> float:
    """Mean training loss on (x, y) of a model whose stages live on several ranks: each chunk goes through the
    stages in order, activations sent point to point between ranks; the rank with the last stage computes the loss
    and broadcasts it, so every rank returns the same number. Every rank of the group calls it."""
    rank, last = dist.get_rank(), len(stage_rank) - 1
    for module in modules.values():
        module.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    loss_fn = summed_loss(task)
    for xb, yb in zip(x.split(chunk), y.split(chunk), strict=True):
        activation: torch.Tensor | None = xb
        for stage, owner in enumerate(stage_rank):
            if owner != rank:
                continue
            if stage > 0 and stage_rank[stage - 1] != rank:
                activation = torch.empty(len(xb), hidden, device=device)
                dist.recv(activation, src=stage_rank[stage - 1])
            activation = modules[stage](activation)
            if stage < last and stage_rank[stage + 1] != rank:
                dist.send(activation.contiguous(), dst=stage_rank[stage + 1])
            if stage == last:
                total += loss_fn(activation, yb).double()
    dist.broadcast(total, src=stage_rank[last])
    for module in modules.values():
        module.train()
    return float(total) / len(x)
