"""What the model server will load as champion, and the local copy it falls back on.

- The champion alias is followed only to a version whose gate decision says promoted (the gate, the first model,
  or an earlier champion rolled back to); an alias moved by hand (MLflow UI or client) to another version is
  refused, and the server keeps serving what it served.
- Every load checks the model files against the sha256 recorded at registration (registry/digests.py, in
  store.load_version), and the cache is keyed by run id (store.run_cache).
- Each champion the server puts in service is copied to state_dir/serving/last-known-good (files and digests);
  when the champion cannot be loaded at start (registry down, artifact changed or gone, no promoted decision), the
  server serves that copy, marked degraded, until the champion loads.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

from driftloop.config import Config
from driftloop.errors import RegistryError
from driftloop.registry.digests import MODEL_FILES, model_digests, verify
from driftloop.registry.store import (
    CHAMPION,
    DECISION_TAG,
    PROMOTED,
    alias_version,
    model_version,
    now_iso,
    verified_folder,
)
from driftloop.state import mlflow_store_uri, state_path, write_atomic
from driftloop.training.artifacts import LoadedModel, load_model

# Under state_dir/serving: one folder per kept copy and a pointer naming the current one (replaced atomically).
LAST_KNOWN_GOOD = "last-known-good"
POINTER = "current.json"


class UntrustedVersion(RegistryError):
    """The champion alias names a version the gate did not promote."""


def check_promoted(config: Config, version: str, tags: dict[str, str]) -> None:
    """Raise UntrustedVersion unless the version's gate decision says promoted, saying how to put it right."""
    decision = tags.get(DECISION_TAG)
    if decision == PROMOTED:
        return
    found = f"is {decision!r}" if decision else "is missing"
    raise UntrustedVersion(
        f"model {config.model.name} version {version} holds the '{CHAMPION}' alias but its gate decision {found}: "
        "the server serves only a version the gate promoted (or the first model). Move the alias back with "
        f"`driftloop rollback` (or `--to VERSION`), then judge version {version} with "
        f"`driftloop gate --version {version}`")


def load_champion(config: Config) -> LoadedModel:
    """The champion the server may serve: promoted by the gate, its files matching their recorded digests."""
    version = alias_version(config, CHAMPION)
    if version is None:
        raise RegistryError(f"model {config.model.name} has no '{CHAMPION}' yet: run `driftloop train` first")
    check_promoted(config, version, dict(model_version(config, version).tags or {}))
    return load_model(verified_folder(config, version), version=version)


def store_identity(config: Config) -> str:
    """A short digest naming the registry store (never its URI, which may hold a password)."""
    uri = config.registry.tracking_uri or mlflow_store_uri(config)
    return hashlib.sha256(uri.encode()).hexdigest()[:16]


def _root(config: Config) -> Path:
    return state_path(config, "serving", LAST_KNOWN_GOOD, POINTER).parent


def _current(config: Config) -> dict | None:
    """The pointer's record of the kept copy, None when there is none or it cannot be read."""
    try:
        record = json.loads((_root(config) / POINTER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def keep_last_known_good(config: Config, version: str) -> Path:
    """Copy the served champion `version`'s checked files to state_dir/serving/last-known-good; returns the copy.

    A crash leaves the previous copy in force: the files are written to a new folder, then the pointer is replaced
    atomically, then older folders are removed.
    """
    mv = model_version(config, version)
    record = _current(config)
    root = _root(config)
    if record and record.get("run_id") == mv.run_id and record.get("folder") and (root / record["folder"]).is_dir():
        return root / record["folder"]  # kept already
    source = verified_folder(config, version)
    folder = Path(tempfile.mkdtemp(dir=root, prefix=f"v{version}-"))
    for name in MODEL_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, folder / name)
    record = {"model": config.model.name, "version": str(version), "run_id": mv.run_id,
              "store": store_identity(config), "folder": folder.name, "kept_at": now_iso(),
              "digests": model_digests(folder)}
    write_atomic(root / POINTER, json.dumps(record, indent=1))
    for other in root.iterdir():
        if other.is_dir() and other.name != folder.name:
            shutil.rmtree(other, ignore_errors=True)
    return folder


def load_last_known_good(config: Config) -> LoadedModel:
    """The kept copy, its files checked against their digests; RegistryError when there is none for this model and
    registry store."""
    record = _current(config)
    root = _root(config)
    if record is None:
        raise RegistryError(f"no last-known-good copy under {root}: the server has not served a champion yet")
    if record.get("model") != config.model.name or record.get("store") != store_identity(config):
        raise RegistryError(f"the last-known-good copy under {root} is of model {record.get('model')} from another "
                            "registry store; not served")
    folder, digests = root / str(record.get("folder", "")), record.get("digests") or {}
    if not digests:
        raise RegistryError(f"the last-known-good record {root / POINTER} holds no digests; not served")
    verify(folder, digests, f"last-known-good copy of version {record.get('version')}")
    return load_model(folder, version=str(record["version"]))
