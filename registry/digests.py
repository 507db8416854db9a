"""The sha256 of a model's files, recorded at registration and checked before the files are loaded.

A driftloop model folder holds three files the loader reads (training/artifacts.py): the safetensors weights, the
feature spec and the network shape (JSON). Each one's digest is recorded twice at registration: as a parameter of
the training run (MLflow refuses to change a logged parameter) and as a tag of the model version (shown in the UI).
A copy whose bytes differ from either record (a changed artifact store, a corrupt or edited cache) is refused.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

from driftloop.errors import RegistryError
from driftloop.training.artifacts import MODEL, SPEC, WEIGHTS

# The files driftloop's own loader reads, in the order they are checked.
MODEL_FILES = (WEIGHTS, SPEC, MODEL)
# Tag and run-parameter names: sha256.weights.safetensors, sha256.feature_spec.json, sha256.model.json.
PREFIX = "sha256."
CHUNK = 1 << 20


class DigestMismatch(RegistryError):
    """A model file's bytes are not the ones recorded at registration."""


def file_sha256(path: Path) -> str:
    """The hex sha256 of one file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def model_digests(folder: Path) -> dict[str, str]:
    """{"sha256.<file>": hex} for each model file in `folder` (the weights must be there)."""
    if not (folder / WEIGHTS).is_file():
        raise RegistryError(f"{folder}: no {WEIGHTS}; not a driftloop model")
    return {PREFIX + name: file_sha256(folder / name) for name in MODEL_FILES if (folder / name).is_file()}


def recorded_digests(record: Mapping[str, str]) -> dict[str, str]:
    """The digest entries among a version's tags or a run's parameters."""
    return {key: value for key, value in record.items() if key.startswith(PREFIX)}


def verify(folder: Path, recorded: Mapping[str, str], what: str) -> None:
    """Raise DigestMismatch naming the first file of `folder` whose sha256 differs from `recorded` (or is missing).

    `what` names the model in the message ("model flights version 3").
    """
    for key, expected in recorded.items():
        path = folder / key[len(PREFIX):]
        if not path.is_file():
            raise DigestMismatch(f"{what}: {path.name} is missing from {folder}; refusing to load the model")
        found = file_sha256(path)
        if found != expected:
            raise DigestMismatch(f"{what}: {path.name} has sha256 {found[:16]}… but {expected[:16]}… was recorded at "
                                 f"registration: the file was changed after registration; refusing to load it. "
                                 f"Register the model again (driftloop train) or roll back (driftloop rollback)")
