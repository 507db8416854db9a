"""A new state dir starts from the install's already migrated MLflow and Prefect databases (driftloop.state_templates,
made by `make setup`), and migrates its own, as before, when there is no template for the installed versions."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pandas as pd
import pytest
import yaml

from driftloop.state_templates import TEMPLATE_MARK, TEMPLATES_ENV, make_templates, seed_database, template_path
from tests.helpers import make_config, run_cli


def user_version(database: Path) -> int:
    """SQLite's user_version of `database` (TEMPLATE_MARK when it was copied from a template)."""
    db = sqlite3.connect(database)
    try:
        return db.execute("PRAGMA user_version").fetchone()[0]
    finally:
        db.close()


def fake_template(path: Path, mark: int = TEMPLATE_MARK, revision: str | None = "0123abcd") -> Path:
    """A small SQLite file shaped like a template: the mark and an alembic revision (either left out on request)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
    if revision is not None:
        db.execute("INSERT INTO alembic_version VALUES (?)", (revision,))
    db.execute(f"PRAGMA user_version={mark}")
    db.commit()
    db.close()
    return path


def test_only_a_complete_template_of_the_installed_version_is_copied(tmp_path: Path) -> None:
    folder, target = tmp_path / "templates", tmp_path / "state" / "mlflow.db"
    assert not seed_database(target, "mlflow", folder)  # no templates at all
    installed = template_path("mlflow", folder)
    assert installed is not None and installed.name.startswith("mlflow-") and installed.name.endswith(".db")
    fake_template(folder / "mlflow-0.0.0.db")  # another MLflow version's
    assert not seed_database(target, "mlflow", folder)
    fake_template(installed, mark=0)  # not made by driftloop.state_templates (or cut short before its mark)
    assert not seed_database(target, "mlflow", folder)
    installed.unlink()
    fake_template(installed, revision=None)  # no alembic revision: not migrated
    assert not seed_database(target, "mlflow", folder)
    installed.write_bytes(b"not a database")
    assert not seed_database(target, "mlflow", folder)
    assert not target.exists() and not list(target.parent.glob("*.partial"))

    installed.unlink()
    fake_template(installed)
    assert seed_database(target, "mlflow", folder)
    assert target.read_bytes() == installed.read_bytes()
    target.write_bytes(b"a store in use")
    assert not seed_database(target, "mlflow", folder)  # an existing database is never replaced
    assert target.read_bytes() == b"a store in use"
    assert not list(target.parent.glob("*.partial"))


def test_a_new_prefect_home_gets_the_template_unless_the_database_is_elsewhere(tmp_path: Path) -> None:
    from driftloop.env import prepare_environment

    fake_template(template_path("prefect", tmp_path / "templates"))
    saved = dict(os.environ)
    try:
        for name in ("PREFECT_HOME", "PREFECT_API_URL", "PREFECT_API_DATABASE_CONNECTION_URL",
                     "PREFECT_SERVER_DATABASE_CONNECTION_URL"):
            os.environ.pop(name, None)
        os.environ[TEMPLATES_ENV] = str(tmp_path / "templates")
        prepare_environment(tmp_path / "one")
        assert os.environ["PREFECT_HOME"] == str((tmp_path / "one" / "prefect").resolve())
        assert user_version(tmp_path / "one" / "prefect" / "prefect.db") == TEMPLATE_MARK

        del os.environ["PREFECT_HOME"]
        os.environ["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = f"sqlite+aiosqlite:///{tmp_path / 'elsewhere.db'}"
        prepare_environment(tmp_path / "two")
        assert (tmp_path / "two" / "prefect").is_dir() and not (tmp_path / "two" / "prefect" / "prefect.db").exists()
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Templates made here as `make setup` makes them (the libraries' own migration commands), in a private folder."""
    folder = tmp_path_factory.mktemp("templates")
    lines = make_templates(folder)
    assert all("not made" not in line for line in lines), lines
    return folder


@pytest.mark.slow
def test_a_state_dir_made_from_the_templates_trains_and_keeps_its_records(
        tmp_path: Path, templates: Path, flights_jan: pd.DataFrame, monkeypatch: pytest.MonkeyPatch) -> None:
    for kind in ("mlflow", "prefect"):
        assert user_version(template_path(kind, templates)) == TEMPLATE_MARK
        assert sqlite3.connect(template_path(kind, templates)).execute("SELECT count(*) FROM alembic_version") \
            .fetchone()[0] == 1
    monkeypatch.setenv(TEMPLATES_ENV, str(templates))  # the children's templates: these
    config = make_config(tmp_path / "state")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json")))
    flights_jan.to_csv(tmp_path / "batch.csv", index=False)

    trained = run_cli("train", "--config", "config.yaml", "--data", "batch.csv", "--json", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert json.loads(trained.stdout)["model_version"] == "1"
    state = tmp_path / "state"
    assert user_version(state / "mlflow.db") == TEMPLATE_MARK  # both came from the templates
    assert user_version(state / "prefect" / "prefect.db") == TEMPLATE_MARK

    models = run_cli("models", "--config", "config.yaml", "--json", cwd=tmp_path)
    assert models.returncode == 0, models.stderr[-3000:]
    overview = json.loads(models.stdout)
    assert overview["champion"] == "1" and [str(v["version"]) for v in overview["versions"]] == ["1"]
    with sqlite3.connect(state / "mlflow.db") as db:  # MLflow created its default experiment in the copy
        names = {name for (name,) in db.execute("SELECT name FROM experiments")}
    assert {"Default", config.registry.experiment} <= names
    with sqlite3.connect(state / "prefect" / "prefect.db") as db:  # the flow run, in the copied Prefect database
        runs = db.execute("SELECT flow.name, flow_run.state_type FROM flow_run JOIN flow ON flow.id = "
                          "flow_run.flow_id").fetchall()
    assert runs == [("training-pipeline", "COMPLETED")]


@pytest.mark.slow
def test_without_a_template_for_the_installed_version_mlflow_migrates_a_new_store(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from driftloop.registry.store import experiment_id, mlflow_client

    fake_template(tmp_path / "templates" / "mlflow-0.0.0.db")  # another version's: not for this install
    monkeypatch.setenv(TEMPLATES_ENV, str(tmp_path / "templates"))
    config = make_config(tmp_path / "state")
    client = mlflow_client(config)
    assert experiment_id(config, client) == client.get_experiment_by_name(config.registry.experiment).experiment_id
    assert user_version(tmp_path / "state" / "mlflow.db") == 0  # MLflow's own migration, not a copy
    assert client.get_experiment("0").name == "Default"
