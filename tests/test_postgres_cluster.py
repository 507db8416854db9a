"""The private PostgreSQL cluster (driftloop.postgres_cluster) the log's tests and the stack run on."""

from __future__ import annotations

import shutil
import stat
import tempfile
from pathlib import Path

import pytest

from driftloop import postgres_cluster
from driftloop.errors import DataError
from tests.helpers import free_port
from tests.postgres import cluster_or_skip


@pytest.mark.slow
def test_cluster_listens_on_loopback_with_a_password() -> None:
    import psycopg

    folder = Path(tempfile.mkdtemp(prefix="driftloop-pg-test-"))  # not under pytest's private folder: tests/postgres.py
    cluster = cluster_or_skip(folder / "pg")
    try:
        with psycopg.connect(postgres_cluster.url(cluster)) as db:
            assert db.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)
            assert db.execute("SELECT current_database()").fetchone() == ("driftloop",)
        wrong = postgres_cluster.url(postgres_cluster.Cluster(cluster.dir, cluster.port, "not-it"))
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(wrong).close()
        assert stat.S_IMODE((cluster.dir / "password").stat().st_mode) == 0o600
        with pytest.raises(DataError, match="exists already"):
            postgres_cluster.init_cluster(cluster.dir, free_port(), "x")
        again = postgres_cluster.open_cluster(cluster.dir, cluster.port)
        assert again.password == cluster.password
    finally:
        postgres_cluster.stop(cluster)
    assert not postgres_cluster.is_running(cluster)
    postgres_cluster.start(cluster)  # a stopped cluster starts again with its data
    try:
        with psycopg.connect(postgres_cluster.url(cluster)) as db:
            assert db.execute("SELECT 1").fetchone() == (1,)
    finally:
        postgres_cluster.stop(cluster)
        shutil.rmtree(folder, ignore_errors=True)
