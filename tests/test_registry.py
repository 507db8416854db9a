"""Registry: MLflow registration with lineage, champion alias, loading without pickle, the gate."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from driftloop.config import Config
from driftloop.errors import RegistryError
from driftloop.registry.gate import apply_gate
from driftloop.registry.store import (
    CHALLENGER,
    CHAMPION,
    alias_version,
    load_alias,
    load_reference,
    load_version,
    register,
    version_tags,
)
from driftloop.scoring import score
from driftloop.training.artifacts import predict
from driftloop.training.trainer import TrainResult
from tests.helpers import lineage_for, scrambled


@pytest.mark.slow
def test_first_model_becomes_champion_with_lineage(config: Config, trained: TrainResult,
                                                   flights_jan: pd.DataFrame) -> None:
    registered = register(config, trained, lineage_for(config, flights_jan), flights_jan)
    assert registered.champion and alias_version(config, CHAMPION) == registered.version
    tags = version_tags(config, registered.version)
    assert tags["data.rows"] == str(len(flights_jan))
    assert len(tags["data.fingerprint"]) == 16 and tags["config.hash"] == config.digest()
    assert tags["prefect.flow_run_id"] == "flow-run-1" and tags["validation.success"] == "true"
    assert tags["data.start"].startswith("2013-01-01")
    loaded = load_alias(config)
    expected = predict(trained.model(), trained.spec, flights_jan.head(50))
    np.testing.assert_allclose(loaded.predict(flights_jan.head(50)), expected, rtol=1e-6)
    assert loaded.version == registered.version
    reference = load_reference(config, registered.version)
    assert "tailnum" not in reference.columns and config.data.target in reference.columns


@pytest.mark.slow
def test_gate_rejects_worse_and_promotes_better(config: Config, trained: TrainResult, flights_jan: pd.DataFrame,
                                                flights_jul: pd.DataFrame) -> None:
    lineage = lineage_for(config, flights_jan)
    good = register(config, trained, lineage, flights_jan)
    bad = register(config, scrambled(trained), lineage, flights_jan)
    assert not bad.champion
    rejected = apply_gate(config, bad.version, flights_jul)
    assert not rejected.promoted and alias_version(config, CHAMPION) == good.version
    assert alias_version(config, CHALLENGER) == bad.version
    assert rejected.challenger_score < rejected.champion_score
    tags = version_tags(config, bad.version)
    assert tags["gate.decision"] == "rejected" and "kept as challenger" in tags["gate.reason"]
    # Now the roles are reversed: the good model challenges the scrambled one as champion.
    from driftloop.registry.store import set_alias

    set_alias(config, CHAMPION, bad.version)
    better = register(config, trained, lineage, flights_jan)
    promoted = apply_gate(config, better.version, flights_jul)
    truth = flights_jul[config.data.target].to_numpy()
    auc_good = score(truth, load_version(config, better.version).predict(flights_jul), "classification")["auc"]
    assert promoted.promoted and promoted.challenger_score == pytest.approx(auc_good)
    assert alias_version(config, CHAMPION) == better.version


def test_loading_without_a_champion_names_the_fix(config: Config) -> None:
    with pytest.raises(RegistryError, match="no 'champion'"):
        load_alias(config)
