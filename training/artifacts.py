"""Saving and loading a trained model without pickle: safetensors weights plus JSON."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from driftloop.config import ModelConfig
from driftloop.errors import RegistryError
from training.features import FeatureSpec, encode
from training.model import TabularNet, build_model

WEIGHTS = "weights.safetensors"
SPEC = "feature_spec.json"
MODEL = "model.json"
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".bin")


@dataclass
class LoadedModel:
    """A model ready to score rows, with the spec that encodes them and its registry version."""

    net: TabularNet
    spec: FeatureSpec
    version: str = ""

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        """P(positive) for classification, the predicted value for regression."""
        return predict(self.net, self.spec, frame)


def predict(net: TabularNet, spec: FeatureSpec, frame: pd.DataFrame) -> np.ndarray:
    """Score rows with a whole (unsplit) model."""
    net.eval()
    with torch.inference_mode():
        out = net(encode(frame, spec)).double()
    if spec.task == "classification":
        return torch.sigmoid(out).numpy()
    return (out * spec.target_std + spec.target_mean).numpy()


def save_model(folder: Path, state: dict[str, torch.Tensor], spec: FeatureSpec, config: ModelConfig) -> Path:
    """Write weights, feature spec and model shape into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / WEIGHTS))
    (folder / SPEC).write_text(spec.to_json())
    (folder / MODEL).write_text(config.model_dump_json(indent=1))
    return folder


def load_model(folder: Path, version: str = "") -> LoadedModel:
    """Rebuild a model from `folder`; refuses folders that only hold pickled weights."""
    weights = folder / WEIGHTS
    if not weights.is_file():
        pickled = [p.name for p in folder.glob("*") if p.suffix in PICKLE_SUFFIXES]
        if pickled:
            raise RegistryError(f"{folder}: refusing pickled weights {pickled}; driftloop loads safetensors only")
        raise RegistryError(f"{folder}: no {WEIGHTS}; not a driftloop model")
    spec = FeatureSpec.from_json((folder / SPEC).read_text())
    config = ModelConfig.model_validate(json.loads((folder / MODEL).read_text()))
    net = build_model(spec, config, seed=0)
    net.load_state_dict(load_file(str(weights)))
    net.eval()
    return LoadedModel(net, spec, version)
