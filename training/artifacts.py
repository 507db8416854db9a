"""Saving and loading a trained model without pickle: safetensors weights plus JSON.

Loading refuses any model folder that holds a pickle (a `.pkl`, a torch checkpoint written by `torch.save`,
an MLflow flavor that stores a cloudpickled object), before anything in it is read, because unpickling runs
arbitrary code from whoever wrote the file.
"""

from __future__ import annotations

import copy
import json
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml
from safetensors.torch import load_file, save_file
from torch import nn

from driftloop.config import ModelConfig
from driftloop.errors import RegistryError
from driftloop.training.features import UNKNOWN, FeatureSpec, encode, scale_column
from driftloop.training.model import TabularNet, build_model

WEIGHTS = "weights.safetensors"
SPEC = "feature_spec.json"
MODEL = "model.json"
MLMODEL = "MLmodel"
# Always pickles, whatever their content.
PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib", ".dill", ".cloudpickle")
# Usually torch.save output (a zip holding data.pkl, or a bare pickle stream): refused when the content says so.
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".tar")
# MLflow flavor keys that point at a pickled object (pyfunc python_model, sklearn, pytorch's pickle module).
PICKLED_FLAVOR_KEYS = ("python_model", "pickled_model", "pickle_module_name", "cloudpickle_model")
# How far above the weights folder an MLflow model's root (its MLmodel file) may be: <root>/artifacts/model/.
ROOT_SEARCH_DEPTH = 3
# The architecture settings added after models were first saved, with the values those models were built with.
LEGACY_MODEL: dict[str, Any] = {"embedding_rule": "fixed", "numerical_embedding": "none", "wide": False,
                                "wide_max_levels": None}


class PickledArtifactError(RegistryError):
    """A model folder holds a pickle; driftloop never unpickles model artifacts."""


@dataclass
class LoadedModel:
    """A model ready to score rows, with the spec that encodes them and its registry version."""

    net: TabularNet
    spec: FeatureSpec
    version: str = ""
    quantized: bool = False
    _lookups: list[dict[Any, int]] | None = field(default=None, repr=False, compare=False)

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        """P(positive) for classification, the predicted value for regression."""
        return predict(self.net, self.spec, frame)

    def predict_rows(self, rows: Sequence[dict[str, Any]]) -> np.ndarray:
        """Like predict, from validated JSON rows, without building a DataFrame (the server's hot path)."""
        return output(self.net, self.spec, self.encode_rows(rows))

    def encode_rows(self, rows: Sequence[dict[str, Any]]) -> torch.Tensor:
        """training.features.encode for JSON rows: the same tensor, built with plain loops and dict lookups."""
        if self._lookups is None:  # built once per model; a race only builds the same tables twice
            self._lookups = [category_lookup(self.spec.vocab[c]) for c in self.spec.categorical]
        spec = self.spec
        matrix = np.zeros((len(rows), spec.width), dtype="float64")
        for j, column in enumerate(spec.numerical):
            values = np.array([row.get(column) for row in rows], dtype="float64")  # None -> NaN
            matrix[:, j] = scale_column(values, spec, j)
        offset = len(spec.numerical)
        for j, (column, lookup) in enumerate(zip(spec.categorical, self._lookups, strict=True)):
            matrix[:, offset + j] = [lookup.get(category_key(row.get(column)), UNKNOWN) for row in rows]
        return torch.from_numpy(matrix.astype("float32"))


def category_lookup(vocab: list[str]) -> dict[Any, int]:
    """Vocabulary -> embedding index (0 is 'unknown'), as training.features.encode numbers them."""
    return {value: index + 1 for index, value in enumerate(vocab)}


def category_key(value: object) -> str | None:
    """A JSON category as training.features.category_strings spells it: 3, 3.0 and '3' are one category."""
    if value is None:
        return None
    if isinstance(value, float):
        if value != value:  # NaN: missing
            return None
        return str(int(value)) if value.is_integer() else str(value)
    return str(value)


def output(net: nn.Module, spec: FeatureSpec, x: torch.Tensor) -> np.ndarray:
    """Run the network on an encoded batch and map its output to P(positive) or the target's units."""
    if net.training:  # eval() walks every submodule: a cost on each request of the server's hot path
        net.eval()
    with torch.inference_mode():
        out = net(x).double()
    if spec.task == "classification":
        return torch.sigmoid(out).numpy()
    return (out * spec.target_std + spec.target_mean).numpy()


def predict(net: nn.Module, spec: FeatureSpec, frame: pd.DataFrame) -> np.ndarray:
    """Score rows with a whole (unsplit) model."""
    return output(net, spec, encode(frame, spec))


def quantize(model: LoadedModel) -> LoadedModel:
    """A copy with int8 dynamic quantization of every nn.Linear (CPU inference; embeddings stay float)."""
    with warnings.catch_warnings():  # torch 2.13 flags torch.ao as deprecated in favour of torchao (not installed)
        warnings.simplefilter("ignore", (DeprecationWarning, UserWarning))
        net = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model.net).eval(), {nn.Linear},
                                                     dtype=torch.qint8)
    return LoadedModel(net, model.spec, model.version, quantized=True)  # type: ignore[arg-type]


def save_model(folder: Path, state: dict[str, torch.Tensor], spec: FeatureSpec, config: ModelConfig) -> Path:
    """Write weights, feature spec and model shape into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / WEIGHTS))
    (folder / SPEC).write_text(spec.to_json())
    (folder / MODEL).write_text(config.model_dump_json(indent=1))
    return folder


def is_pickle(path: Path) -> bool:
    """True if `path` is a pickle: by its name, or a torch.save file (zip with a .pkl inside, or a pickle stream)."""
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        return True
    if suffix not in TORCH_SUFFIXES:
        return False
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith(".pkl") for name in archive.namelist())
    with path.open("rb") as handle:
        head = handle.read(2)
    # Pickle protocol 2+ starts with PROTO (0x80) and the protocol number; torch's legacy format is one.
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def pickled_flavors(mlmodel: Path) -> list[str]:
    """The MLflow flavors of an MLmodel file that store a pickled object, as 'flavor.key' strings."""
    try:
        spec = yaml.safe_load(mlmodel.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as error:
        raise PickledArtifactError(f"{mlmodel}: unreadable MLmodel ({error.__class__.__name__}); "
                                   "refusing to load a model whose format cannot be checked") from None
    flavors = spec.get("flavors") if isinstance(spec, dict) else None
    found = []
    for name, settings in (flavors or {}).items():
        if isinstance(settings, dict):
            found += [f"{name}.{key}" for key in PICKLED_FLAVOR_KEYS if settings.get(key)]
            if str(settings.get("serialization_format", "")).lower() in ("pickle", "cloudpickle"):
                found.append(f"{name}.serialization_format")
    return found


def model_root(folder: Path) -> Path:
    """The MLflow model folder (holding MLmodel) that `folder` belongs to, or `folder` itself."""
    for candidate in [folder, *folder.parents][:ROOT_SEARCH_DEPTH + 1]:
        if (candidate / MLMODEL).is_file():
            return candidate
    return folder


def refuse_pickles(folder: Path) -> None:
    """Raise PickledArtifactError naming the first pickled file or flavor under `folder`'s model root.

    Only file names, magic bytes and the MLmodel YAML are read: nothing is unpickled.
    """
    root = model_root(folder)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if is_pickle(path):
            raise PickledArtifactError(f"{path}: a pickled file in model folder {root}; driftloop loads only "
                                       f"safetensors weights ({WEIGHTS}) and JSON. Re-save the model with "
                                       "training.artifacts.save_model")
    mlmodel = root / MLMODEL
    if mlmodel.is_file():
        flavors = pickled_flavors(mlmodel)
        if flavors:
            raise PickledArtifactError(f"{mlmodel}: flavor setting(s) {flavors} load a pickled object; driftloop "
                                       "loads pyfunc models logged as code with safetensors weights only")


def load_model(folder: Path, version: str = "") -> LoadedModel:
    """Rebuild a model from `folder`; refuses any folder (or MLflow model around it) that holds a pickle."""
    folder = Path(folder)
    refuse_pickles(folder)
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise RegistryError(f"{folder}: no {WEIGHTS}; not a driftloop model")
    spec = FeatureSpec.from_json((folder / SPEC).read_text())
    # A model saved before a setting existed was built without it: its missing keys take the old behaviour.
    config = ModelConfig.model_validate({**LEGACY_MODEL, **json.loads((folder / MODEL).read_text())})
    net = build_model(spec, config, seed=0)
    net.load_state_dict(load_file(str(weights)))
    net.eval()
    return LoadedModel(net, spec, version)

