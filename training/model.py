"""The tabular network and its split into pipeline stages that keep the whole model's parameter names."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from driftloop.config import ModelConfig
from driftloop.errors import TrainingError
from driftloop.training.features import FeatureSpec


class PeriodicEmbedding(nn.Module):
    """Each number as sin/cos of learned frequencies, then its own linear map and ReLU (PLR in Gorishniy et al.,
    "On Embeddings for Numerical Features in Tabular Deep Learning", 2022)."""

    def __init__(self, columns: int, config: ModelConfig) -> None:
        super().__init__()
        k, d = config.periodic_frequencies, config.periodic_dim
        self.frequencies = nn.Parameter(torch.randn(columns, k) * config.periodic_sigma)
        self.weight = nn.Parameter(torch.randn(columns, 2 * k, d) / math.sqrt(2 * k))
        self.bias = nn.Parameter(torch.zeros(columns, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        angles = 2 * math.pi * self.frequencies * x.unsqueeze(-1)  # rows x columns x k
        features = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
        out = torch.relu(torch.einsum("rck,ckd->rcd", features, self.weight) + self.bias)
        return out.flatten(1)


class WidePath(nn.Module):
    """The linear part of a wide-and-deep model: a weight per scaled number and one learned value per category
    level, summed into one logit (a logistic or linear regression beside the network), starting at zero."""

    def __init__(self, numerical: int, cardinalities: Sequence[int], max_levels: int | None = None) -> None:
        super().__init__()
        self.numerical = numerical
        self.numbers = nn.Linear(numerical, 1)
        # Columns with too many levels (model.wide_max_levels) get no wide term: their positions among the codes.
        # A cardinality counts the unknown bucket; the setting counts the levels seen in training.
        self.columns = [i for i, n in enumerate(cardinalities) if max_levels is None or n - 1 <= max_levels]
        self.levels = nn.ModuleList(nn.Embedding(cardinalities[i], 1) for i in self.columns)
        with torch.no_grad():
            self.numbers.weight.zero_()
            self.numbers.bias.zero_()
            for level in self.levels:
                level.weight.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        codes = x[:, self.numerical:].long()
        out = self.numbers(x[:, : self.numerical])
        for i, level in zip(self.columns, self.levels, strict=True):
            out = out + level(codes[:, i])
        return out


class InputLayer(nn.Module):
    """Embeds categories (and numbers, with model.numerical_embedding periodic), concatenates them and projects to
    the hidden width; with model.wide, the wide path's logit rides along as one extra last column."""

    def __init__(self, spec: FeatureSpec, config: ModelConfig) -> None:
        super().__init__()
        self.numerical = len(spec.numerical)
        dims = config.embedding_dims(spec.cardinalities)
        self.embeddings = nn.ModuleList(nn.Embedding(n, dim) for n, dim in zip(spec.cardinalities, dims, strict=True))
        periodic = config.numerical_embedding == "periodic" and self.numerical > 0
        self.periodic = PeriodicEmbedding(self.numerical, config) if periodic else None
        number_width = self.numerical * (config.periodic_dim if periodic else 1)
        self.project = nn.Linear(number_width + sum(dims), config.hidden)
        self.wide = WidePath(self.numerical, spec.cardinalities, config.wide_max_levels) if config.wide else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        codes = x[:, self.numerical:].long()
        numbers = x[:, : self.numerical]
        if self.periodic is not None:
            numbers = self.periodic(numbers)
        parts = [numbers] + [emb(codes[:, i]) for i, emb in enumerate(self.embeddings)]
        hidden = self.project(torch.cat(parts, dim=1))
        if self.wide is None:
            return hidden
        return torch.cat([hidden, self.wide(x)], dim=1)


class ResidualBlock(nn.Module):
    """Pre-norm MLP block; LayerNorm, not BatchNorm, which pipeline shape inference corrupts. Columns past `width`
    (the wide path's logit) pass through untouched."""

    def __init__(self, width: int, dropout: float) -> None:
        super().__init__()
        self.width = width
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, 2 * width)
        self.fc2 = nn.Linear(2 * width, width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden, carried = x[:, : self.width], x[:, self.width:]
        out = hidden + self.fc2(self.dropout(torch.relu(self.fc1(self.norm(hidden)))))
        return torch.cat([out, carried], dim=1) if carried.shape[1] else out


class OutputHead(nn.Module):
    """Final norm and a single logit (or standardised value for regression), plus the wide path's logit when the
    activation carries one past `width`."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.width = width
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.out(self.norm(x[:, : self.width])).squeeze(-1)
        if x.shape[1] > self.width:
            out = out + x[:, self.width]
        return out


class TabularNet(nn.Module):
    """Input layer, residual blocks, head. A pipeline stage is this model with the parts it does not own removed."""

    def __init__(self, spec: FeatureSpec, config: ModelConfig) -> None:
        super().__init__()
        self.input: InputLayer | None = InputLayer(spec, config)
        # A ModuleDict keyed by block number keeps names like "blocks.3.fc1.weight" on every stage.
        self.blocks = nn.ModuleDict({str(i): ResidualBlock(config.hidden, config.dropout)
                                     for i in range(config.blocks)})
        self.head: OutputHead | None = OutputHead(config.hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input is not None:
            x = self.input(x)
        for block in self.blocks.values():
            x = block(x)
        if self.head is not None:
            x = self.head(x)
        return x


def activation_width(config: ModelConfig) -> int:
    """Columns of the activation between stages: the hidden width, plus the wide path's logit with model.wide."""
    return config.hidden + (1 if config.wide else 0)


def build_model(spec: FeatureSpec, config: ModelConfig, seed: int) -> TabularNet:
    """The whole model with weights drawn from `seed`: every rank builds the same one."""
    torch.manual_seed(seed)
    return TabularNet(spec, config)


def build_stage(spec: FeatureSpec, config: ModelConfig, seed: int, stage: int, stages: int,
                blocks: Sequence[range] | None = None) -> TabularNet:
    """Stage `stage` of the model build_model(spec, config, seed) would give, without building the rest.

    Bit for bit the whole model's weights: the parts are initialised one by one in the whole model's order from
    the same seed, so the random numbers each part draws are the same; a part before the stage is built only to
    advance the generator and dropped at once, and nothing after the stage is built at all. A rank's memory is
    its own stage's parameters plus, briefly, the largest part before it.
    """
    with torch.device("meta"):  # the skeleton: names and structure, no storage, no random numbers drawn
        net = cut_stage(TabularNet(spec, config), stage, stages, blocks)
    owned = [int(key) for key in net.blocks]
    last_owned = owned[-1]
    torch.manual_seed(seed)
    # The order of TabularNet.__init__: input layer, blocks 0..n-1, head.
    first_part = InputLayer(spec, config)
    if net.input is not None:
        net.input = first_part
    del first_part
    for index in range(last_owned + 1):
        block = ResidualBlock(config.hidden, config.dropout)
        if index in owned:
            net.blocks[str(index)] = block
    if net.head is not None:
        net.head = OutputHead(config.hidden)
    return net


def stage_blocks(blocks: int, stages: int) -> list[range]:
    """Uniform split of the residual blocks over stages; earlier stages take the remainder."""
    if stages > blocks:
        raise TrainingError(f"training.stages ({stages}) exceeds model.blocks ({blocks}): "
                            "lower training.stages or raise model.blocks")
    base, extra = divmod(blocks, stages)
    ranges, start = [], 0
    for stage in range(stages):
        size = base + (1 if stage < extra else 0)
        ranges.append(range(start, start + size))
        start += size
    return ranges


def cut_stage(model: TabularNet, stage: int, stages: int, blocks: Sequence[range] | None = None) -> TabularNet:
    """Keep only what stage `stage` of `stages` owns, in place; parameter names are unchanged.

    `blocks` is each stage's range of residual blocks (training.partition); by default the uniform split.
    """
    owned = (stage_blocks(len(model.blocks), stages) if blocks is None else blocks)[stage]
    if stage != 0:
        model.input = None
    if stage != stages - 1:
        model.head = None
    for key in list(model.blocks.keys()):
        if int(key) not in owned:
            del model.blocks[key]
    return model
