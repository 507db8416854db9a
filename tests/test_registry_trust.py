"""What the model server will load (issue 15): the weights' sha256 recorded at registration and checked on load, only
a version the gate promoted served, the cache keyed by run id, the decision written before the alias moves, the
last-known-good copy served when the champion cannot be loaded at start, and the alert when the served version is
not the alias's. Server tests run a real HTTP server (uvicorn in this process) on a real MLflow store; the quick
ones check the digests and the server's fall-back on saved model folders."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml
from fastapi.testclient import TestClient
from mlflow.exceptions import MlflowException

from driftloop.config import Config
from driftloop.errors import RegistryError
from driftloop.metrics import CHAMPION_ALIAS_VERSION, MODEL_SWAP_FAILURES, SERVED_VERSION, SERVING_DEGRADED
from driftloop.registry.digests import MODEL_FILES, PREFIX, DigestMismatch, file_sha256, model_digests, verify
from driftloop.registry.store import (
    CHAMPION,
    alias_version,
    champion_history,
    load_version,
    promote,
    register,
    set_alias,
    tag_version,
    version_tags,
)
from driftloop.registry.trust import UntrustedVersion, load_champion, load_last_known_good
from driftloop.serving.app import LastKnownGood, create_app
from driftloop.serving.server import registry_sources
from driftloop.training.artifacts import SPEC, WEIGHTS, load_model, predict
from driftloop.training.trainer import TrainResult
from tests.helpers import LOCAL, Shelf, ThreadedServer, lineage_for, make_config, metric, rows_json, scrambled

ADMIN = {"Authorization": "Bearer registry-trust-admin"}
RULES = Path(__file__).resolve().parents[1] / "monitoring" / "rules"


@dataclass(frozen=True)
class Store:
    """A registry with three versions: `good` (the first champion), `ungated` (registered, never judged) and
    `tampered` (other weights, promoted, then its weights changed in the artifact store)."""

    config: Config
    good: str
    ungated: str
    tampered: str
    rows: list[dict]


def flip_last_byte(path: Path) -> None:
    """Change one byte of a tensor's data: the file still parses, its sha256 differs."""
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def stored_weights(config: Config, version: str) -> Path:
    """The version's weights file in the artifact store (found by its recorded sha256)."""
    digest = version_tags(config, version)[PREFIX + WEIGHTS]
    found = [p for p in (config.state_dir / "artifacts").rglob(WEIGHTS) if file_sha256(p) == digest]
    assert len(found) == 1, f"{len(found)} stored weights files of version {version}"
    return found[0]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, trained: TrainResult, flights_jan: pd.DataFrame) -> Store:
    config = make_config(tmp_path_factory.mktemp("trust") / "state", serving={"reload_interval_s": 3600})
    lineage = lineage_for(config, flights_jan)
    good = register(config, trained, lineage, flights_jan).version
    ungated = register(config, scrambled(trained), lineage, flights_jan).version
    nudged = dataclasses.replace(trained, state={k: v * 1.001 for k, v in trained.state.items()})
    tampered = register(config, nudged, lineage, flights_jan).version
    flip_last_byte(stored_weights(config, tampered))
    tag_version(config, tampered, {"gate.decision": "promoted", "gate.reason": "as if the gate had promoted it"})
    return Store(config, good, ungated, tampered, rows_json(flights_jan[config.data.features].head(5)))


@pytest.fixture
def at_good(store: Store) -> Store:
    """The store with `good` as champion again (tests move the alias)."""
    set_alias(store.config, CHAMPION, store.good)
    return store


@contextmanager
def serving(config: Config, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """`driftloop serve`'s app (registry_sources: promoted versions only, digests, last-known-good) on a socket."""
    monkeypatch.setenv("DRIFTLOOP_ADMIN_TOKEN", ADMIN["Authorization"].split()[1])
    champion, _ = registry_sources(config)
    app = create_app(config, champion.load, champion.probe, last_known_good=champion.last_known_good)
    with ThreadedServer(app) as url:
        yield url


def gauge(url: str, name: str) -> float | None:
    """One unlabelled-by-us sample of the server's /metrics (the first line of `name`), None when absent."""
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            return float(line.rsplit(" ", 1)[1])
    return None


def answered_by(url: str, rows: list[dict]) -> tuple[str, list[float]]:
    response = httpx.post(f"{url}/predict", json={"rows": rows}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["model_version"], response.json()["predictions"]


def reload(url: str) -> dict:
    response = httpx.post(f"{url}/admin/reload", headers=ADMIN, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


# ---------------------------------------------------------------- the weights' sha256


@pytest.mark.slow  # registers models in a real MLflow store
def test_tampered_weights_are_refused_on_load(at_good: Store, trained: TrainResult, flights_jan) -> None:
    config = at_good.config
    tags = version_tags(config, at_good.good)
    assert re.fullmatch(r"[0-9a-f]{64}", tags[PREFIX + WEIGHTS])  # recorded at registration
    with pytest.raises(DigestMismatch, match=f"version {at_good.tampered}: {WEIGHTS} has sha256 .* was recorded"):
        load_version(config, at_good.tampered)
    # A corrupt (or edited) cached copy is not served either: it is dropped and fetched again from the store.
    expected = predict(trained.model(), trained.spec, flights_jan.head(20))
    load_version(config, at_good.good)
    cached = [p for p in (config.state_dir / "cache").rglob(WEIGHTS)
              if file_sha256(p) == tags[PREFIX + WEIGHTS]]
    assert cached
    flip_last_byte(cached[0])
    np.testing.assert_allclose(load_version(config, at_good.good).predict(flights_jan.head(20)), expected, rtol=1e-6)


@pytest.mark.slow  # registers models in a real MLflow store
def test_the_server_refuses_a_tampered_champion_and_keeps_serving(at_good: Store,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    config = at_good.config
    with serving(config, monkeypatch) as url:
        assert answered_by(url, at_good.rows)[0] == at_good.good
        failures = gauge(url, MODEL_SWAP_FAILURES)
        promote(config, at_good.tampered, "promoted, then its artifact was changed")
        state = reload(url)
        assert state["model_version"] == at_good.good and not state["changed"]
        assert answered_by(url, at_good.rows)[0] == at_good.good  # the previous model keeps answering
        assert gauge(url, MODEL_SWAP_FAILURES) == failures + 1
        assert gauge(url, CHAMPION_ALIAS_VERSION) == int(at_good.tampered)
        assert gauge(url, SERVED_VERSION) == int(at_good.good)


# ---------------------------------------------------------------- only a promoted version


@pytest.mark.slow  # registers models in a real MLflow store
def test_an_alias_moved_outside_the_gate_is_not_served(at_good: Store, monkeypatch: pytest.MonkeyPatch,
                                                       tmp_path: Path) -> None:
    config, ungated = at_good.config, at_good.ungated
    with serving(config, monkeypatch) as url:
        assert answered_by(url, at_good.rows)[0] == at_good.good
        set_alias(config, CHAMPION, ungated)  # as the MLflow UI or client would, past the gate
        with pytest.raises(UntrustedVersion, match="gate decision is missing") as refused:
            load_champion(config)
        message = str(refused.value)
        assert "driftloop rollback" in message and f"driftloop gate --version {ungated}" in message
        assert reload(url)["model_version"] == at_good.good
        assert answered_by(url, at_good.rows)[0] == at_good.good
        scrape = httpx.get(f"{url}/metrics", timeout=30).text
        tag_version(config, ungated, {"gate.decision": "rejected"})
        with pytest.raises(UntrustedVersion, match="gate decision is 'rejected'"):
            load_champion(config)
        assert reload(url)["model_version"] == at_good.good
        # Through promote() the decision is recorded (before the alias moves): then it is served.
        promote(config, ungated, "accepted by hand after review")
        assert reload(url)["model_version"] == ungated
        assert version_tags(config, ungated)["gate.decision"] == "promoted"
    fires_after_five_minutes(scrape, config.model.name, int(ungated), tmp_path)


def fires_after_five_minutes(scrape: str, model: str, alias: int, tmp_path: Path) -> None:
    """The server's own scrape, held for 10 minutes, fires DriftloopServedVersionNotChampion (promtool)."""
    if shutil.which("promtool") is None:
        pytest.skip("promtool (Debian package prometheus) is not installed")
    series = []
    for line in scrape.splitlines():
        if line.startswith((CHAMPION_ALIAS_VERSION, SERVED_VERSION)):
            sample, value = line.rsplit(" ", 1)
            labels = sample[sample.index("{") + 1:-1]
            name = sample[:sample.index("{")]
            series.append({"series": f'{name}{{{labels},job="serving",instance="server:8080"}}',
                           "values": f"{float(value):g}x10"})
    assert len(series) == 2, scrape
    alert = {"exp_labels": {"severity": "critical", "model": model, "job": "serving", "instance": "server:8080"},
             "exp_annotations": {
                 "summary": f"Model server server:8080 does not serve the champion of model {model}",
                 "description": f"The champion alias names version {alias} but the server serves another (or none) "
                 "for over 5 minutes: the version was refused or failed to load; see "
                 "driftloop_model_swap_failures_total and the server's log."}}
    test = {"rule_files": [str(RULES / "driftloop.rules.yml")], "evaluation_interval": "1m",
            "tests": [{"interval": "1m", "input_series": series, "alert_rule_test": [
                {"eval_time": "4m", "alertname": "DriftloopServedVersionNotChampion", "exp_alerts": []},
                {"eval_time": "6m", "alertname": "DriftloopServedVersionNotChampion", "exp_alerts": [alert]}]}]}
    path = tmp_path / "scraped.test.yml"
    path.write_text(yaml.safe_dump(test))
    done = subprocess.run(["promtool", "test", "rules", str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f'{CHAMPION_ALIAS_VERSION}{{model="{model}"}} {float(alias)}' in scrape


@pytest.mark.slow  # registers models in a real MLflow store
def test_promote_writes_the_decision_before_the_alias(at_good: Store) -> None:
    config = at_good.config
    moves = len(champion_history(config))
    tag_version(config, at_good.ungated, {"gate.decision": "rejected"})
    # A decision the store refuses (a tag over MLflow's 100,000 characters): the alias must not have moved.
    with pytest.raises(MlflowException):
        promote(config, at_good.ungated, "gate: better", decision={"gate.decision": "promoted",
                                                                   "gate.details": "x" * 100_001})
    assert alias_version(config, CHAMPION) == at_good.good
    assert len(champion_history(config)) == moves
    assert version_tags(config, at_good.ungated)["gate.decision"] == "rejected"  # written last, so not half-way


# ---------------------------------------------------------------- last-known-good


@pytest.mark.slow  # registers models in a real MLflow store
def test_last_known_good_is_served_when_the_champion_fails_at_start(at_good: Store, trained: TrainResult,
                                                                    monkeypatch: pytest.MonkeyPatch,
                                                                    tmp_path: Path) -> None:
    config = at_good.config
    with serving(config, monkeypatch) as url:  # serving the good champion keeps it locally
        version, good_answers = answered_by(url, at_good.rows)
        assert version == at_good.good and gauge(url, SERVING_DEGRADED) == 0
    kept = config.state_dir / "serving" / "last-known-good"
    assert yaml.safe_load((kept / "current.json").read_text())["version"] == at_good.good
    promote(config, at_good.tampered, "promoted, then its artifact was changed")
    shutil.rmtree(config.state_dir / "cache")
    with serving(config, monkeypatch) as url:  # the champion cannot be loaded at start
        health = httpx.get(f"{url}/healthz", timeout=30)
        assert health.status_code == 200 and health.json()["status"] == "degraded"
        assert f"version {at_good.tampered} cannot be loaded" in health.json()["detail"]
        version, answers = answered_by(url, at_good.rows)
        assert version == at_good.good
        np.testing.assert_allclose(answers, good_answers, rtol=1e-6)
        assert gauge(url, SERVING_DEGRADED) == 1 and gauge(url, SERVED_VERSION) == int(at_good.good)
        assert gauge(url, CHAMPION_ALIAS_VERSION) == int(at_good.tampered)
        set_alias(config, CHAMPION, at_good.good)  # the champion loads again: no longer degraded
        assert reload(url)["model_version"] == at_good.good
        assert httpx.get(f"{url}/healthz", timeout=30).json()["status"] == "ok"
        assert gauge(url, SERVING_DEGRADED) == 0
    other = make_config(config.state_dir, registry={"tracking_uri": f"sqlite:///{tmp_path / 'other.db'}"})
    with pytest.raises(RegistryError, match="another registry store"):
        load_last_known_good(other)
    copy = next(p for p in kept.rglob(WEIGHTS))
    flip_last_byte(copy)
    with pytest.raises(DigestMismatch, match="last-known-good copy"):
        load_last_known_good(config)
    flip_last_byte(copy)


# ---------------------------------------------------------------- the cache


@pytest.mark.slow  # registers models in a real MLflow store
def test_the_cache_is_keyed_by_run_id(at_good: Store, trained: TrainResult, flights_jan: pd.DataFrame,
                                      tmp_path: Path) -> None:
    config = at_good.config
    other = make_config(config.state_dir, registry={"tracking_uri": f"sqlite:///{tmp_path / 'other.db'}",
                                                    "artifact_location": (tmp_path / "artifacts").as_uri()})
    worse = scrambled(trained)
    assert register(other, worse, lineage_for(other, flights_jan), flights_jan).version == "1"
    frame = flights_jan.head(50)
    first = load_version(config, "1").predict(frame)  # the same state_dir, the same name, "version 1" twice
    second = load_version(other, "1").predict(frame)
    np.testing.assert_allclose(first, predict(trained.model(), trained.spec, frame), rtol=1e-6)
    np.testing.assert_allclose(second, predict(worse.model(), worse.spec, frame), rtol=1e-6)
    assert not np.allclose(first, second)
    assert len(list((config.state_dir / "cache" / "runs").iterdir())) >= 2


# ---------------------------------------------------------------- quick: digests and the server's fall-back


def test_digests_name_the_changed_file(model_folders: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(model_folders["1"], folder)
    recorded = model_digests(folder)
    assert sorted(recorded) == [PREFIX + name for name in sorted(MODEL_FILES)]
    verify(folder, recorded, "model m version 1")
    spec = folder / SPEC
    spec.write_text(spec.read_text() + " ")  # one byte more: the JSON still parses
    with pytest.raises(DigestMismatch, match=f"model m version 1: {SPEC} has sha256"):
        verify(folder, recorded, "model m version 1")
    (folder / WEIGHTS).unlink()
    with pytest.raises(DigestMismatch, match=f"{WEIGHTS} is missing"):
        verify(folder, {PREFIX + WEIGHTS: recorded[PREFIX + WEIGHTS]}, "model m version 1")


def test_the_server_falls_back_only_while_nothing_is_served(config: Config, model_folders: dict[str, Path],
                                                            flights_jan: pd.DataFrame) -> None:
    """App logic on saved folders: an unloadable champion at start serves the copy, degraded; once a champion is
    served, a later failure never swaps the copy in; the copy is kept after each registry swap."""
    kept: list[str] = []
    copy = LastKnownGood(lambda: load_model(model_folders["1"], version="1"), kept.append)
    shelf = Shelf(model_folders, "3")  # version 3 cannot be loaded
    rows = rows_json(flights_jan.head(3))
    with TestClient(create_app(config, shelf.load, shelf.version, last_known_good=copy), base_url=LOCAL) as client:
        health = client.get("/healthz").json()
        assert health["status"] == "degraded" and "version 3 cannot be loaded" in health["detail"]
        assert client.post("/predict", json={"rows": rows}).json()["model_version"] == "1"
        assert metric(client, SERVING_DEGRADED, model=config.model.name) == 1
        assert metric(client, CHAMPION_ALIAS_VERSION, model=config.model.name) == 3
        assert kept == []  # the copy is not kept again from itself
        shelf.champion = "2"
        client.app.state.models.refresh()
        assert client.get("/healthz").json()["status"] == "ok" and kept == ["2"]
        assert metric(client, SERVING_DEGRADED, model=config.model.name) == 0
        shelf.champion = "3"
        client.app.state.models.refresh()  # fails: version 2 keeps serving, the copy is not used
        assert client.post("/predict", json={"rows": rows}).json()["model_version"] == "2"
        assert metric(client, SERVED_VERSION, model=config.model.name) == 2
    without = Shelf(model_folders, "3")
    with TestClient(create_app(config, without.load, without.version), base_url=LOCAL) as client:
        assert client.get("/healthz").status_code == 503  # no copy: nothing to serve

    def unreachable() -> str | None:
        raise ConnectionError("tracking server down")

    with TestClient(create_app(config, shelf.load, unreachable, last_known_good=copy), base_url=LOCAL) as client:
        health = client.get("/healthz").json()  # the registry cannot even be asked at start
        assert health["status"] == "degraded" and "the registry cannot be read" in health["detail"]
        assert client.post("/predict", json={"rows": rows}).json()["model_version"] == "1"
