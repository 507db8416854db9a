"""A private PostgreSQL cluster for the tests (driftloop.postgres_cluster): one per test session, made with initdb in a
temporary folder on a free loopback port, started once and stopped at the session's end; each test that wants a
PostgreSQL prediction log gets a database of its own in it."""

from __future__ import annotations

import itertools
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from driftloop import postgres_cluster
from tests.helpers import free_port

_NUMBERS = itertools.count(1)


def cluster_or_skip(folder: Path) -> postgres_cluster.Cluster:
    """A started cluster in `folder`; the test is skipped only when the PostgreSQL server is not installed."""
    try:
        postgres_cluster.pg_binary("initdb")
    except Exception as error:  # noqa: BLE001 - the message names the package to install
        pytest.skip(str(error))
    cluster = postgres_cluster.init_cluster(folder, free_port(), secrets.token_urlsafe(16))
    postgres_cluster.start(cluster)
    return cluster


def session_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[postgres_cluster.Cluster]:
    """The session's cluster (the body of the `pg_cluster` fixture in conftest.py).

    Its folder is a fresh one directly under the system's temporary folder, not under pytest's: when root, the
    server runs as the unprivileged `postgres` user (driftloop.postgres_cluster), which must pass through every
    parent folder, and another pytest session starting meanwhile makes pytest-of-root private (0700) again.
    """
    del tmp_path_factory  # the signature of a session fixture; see above for why its folders are not used
    folder = Path(tempfile.mkdtemp(prefix="driftloop-pg-"))
    cluster = cluster_or_skip(folder / "cluster")
    try:
        yield cluster
    finally:
        postgres_cluster.stop(cluster)
        shutil.rmtree(folder, ignore_errors=True)


def fresh_database(cluster: postgres_cluster.Cluster) -> str:
    """The URL of a new, empty database in the cluster (one per test: nothing leaks from one test to the next)."""
    import psycopg

    name = f"log_{next(_NUMBERS)}_{secrets.token_hex(3)}"
    with psycopg.connect(postgres_cluster.url(cluster, "postgres"), autocommit=True) as db:
        db.execute(f'CREATE DATABASE "{name}"')
    return postgres_cluster.url(cluster, name)
