"""The stack's PostgreSQL (`stack.database: postgres`): a private cluster under state_dir/stack/postgres, made once
with initdb (driftloop.postgres_cluster), run in the foreground as a part, one database each for the Prefect server,
the MLflow server and the prediction log (Prefect's and MLflow's migrations both keep an `alembic_version` table)."""

from __future__ import annotations

import secrets
from pathlib import Path

from driftloop import postgres_cluster
from driftloop.config import Config

# One database per user of the cluster; the prediction log's is the cluster's own (postgres_cluster.DATABASE).
PREFECT_DATABASE = "prefect"
MLFLOW_DATABASE = "mlflow"
PASSWORD_BYTES = 24  # secrets.token_urlsafe: 32 characters
CONNECT_TIMEOUT_S = 2


def cluster_dir(config: Config) -> Path:
    """state_dir/stack/postgres: the data directory, the password file (0600) and the socket."""
    return Path(config.state_dir).resolve() / "stack" / "postgres"


def ensure_cluster(config: Config) -> postgres_cluster.Cluster:
    """The stack's cluster, made with initdb and a generated password on first use (not started here)."""
    folder = cluster_dir(config)
    if (folder / postgres_cluster.DATA_DIR / "PG_VERSION").exists():
        return postgres_cluster.open_cluster(folder, config.stack.postgres_port)
    return postgres_cluster.init_cluster(folder, config.stack.postgres_port, secrets.token_urlsafe(PASSWORD_BYTES))


def cluster(config: Config) -> postgres_cluster.Cluster | None:
    """The cluster if it was made (its password is readable), else None: nothing is created here."""
    try:
        return postgres_cluster.open_cluster(cluster_dir(config), config.stack.postgres_port)
    except OSError:
        return None


def database_url(config: Config, database: str = postgres_cluster.DATABASE, driver: str = "") -> str | None:
    """A database's URL with the password (`driver`: SQLAlchemy's, e.g. "asyncpg"); None before the first `up`."""
    made = cluster(config)
    if made is None:
        return None
    url = postgres_cluster.url(made, database)
    return url.replace("postgresql://", f"postgresql+{driver}://", 1) if driver else url


def server_command(config: Config) -> list[str]:
    """The PostgreSQL server in the foreground (the part's process), on the configured port, loopback only."""
    folder = cluster_dir(config)
    return [postgres_cluster.pg_binary("postgres"), "-D", str(folder / postgres_cluster.DATA_DIR),
            "-p", str(config.stack.postgres_port), "-c", "listen_addresses=127.0.0.1",
            "-c", f"max_connections={config.stack.postgres_max_connections}",
            "-c", f"unix_socket_directories={folder}"]


def ready_at(url: str) -> bool:
    """Whether the server at `url` (with its password) accepts a login."""
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT_S):
            return True
    except psycopg.Error:
        return False


def ensure_databases(config: Config) -> None:
    """Create the Prefect and MLflow databases when missing (the server runs)."""
    import psycopg

    with psycopg.connect(database_url(config, "postgres"), autocommit=True) as db:
        present = {row[0] for row in db.execute("SELECT datname FROM pg_database")}
        for name in (PREFECT_DATABASE, MLFLOW_DATABASE, postgres_cluster.DATABASE):
            if name not in present:
                db.execute(f'CREATE DATABASE "{name}"')
