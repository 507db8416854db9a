"""A private PostgreSQL cluster in a folder: made with initdb, started and stopped with pg_ctl, loopback only.

Used by the tests (a throw-away cluster for the prediction log's PostgreSQL backend) and by the stack
(`stack.database: postgres`, a cluster under state_dir/stack/postgres). Needs the PostgreSQL server binaries
(Debian's `postgresql` package: initdb and pg_ctl on PATH or under /usr/lib/postgresql/<major>/bin).

initdb and the server refuse to run as root. When this process is root, every PostgreSQL command runs as an
unprivileged user through `runuser -u USER --` (util-linux): the `postgres` user Debian's package creates, else
`nobody`. The cluster folder (and its parents' search permission) is handed to that user; the password file
stays readable by that user only while initdb reads it, then is removed. Not root: the commands run as this user.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from driftloop.errors import DataError

# The database and role the cluster is made with; the password is the caller's (generated, stored 0600).
SUPERUSER = "driftloop"
DATABASE = "driftloop"
# Unprivileged users a root process runs PostgreSQL as, in order of preference.
RUN_AS_CANDIDATES = ("postgres", "nobody")
# How long pg_ctl waits for the server to start or stop (seconds).
PG_CTL_TIMEOUT_S = 60
PASSWORD_FILE = "password"
DATA_DIR = "data"
LOG_FILE = "postgres.log"


@dataclass(frozen=True)
class Cluster:
    """A cluster folder: its data directory, port and superuser password (kept in `dir/password`, mode 0600)."""

    dir: Path
    port: int
    password: str

    @property
    def data(self) -> Path:
        return self.dir / DATA_DIR


def pg_binary(name: str) -> str:
    """The path of a PostgreSQL server program (initdb, pg_ctl, postgres); DataError naming the package if absent."""
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(Path(p).parts[4]))
    if versions:
        return versions[-1]
    raise DataError(f"{name} not found: install the PostgreSQL server (Debian: apt-get install postgresql, "
                    "or make system-deps)")


def run_as_user() -> str | None:
    """The unprivileged user a root process runs PostgreSQL as; None when this process is not root."""
    if os.geteuid() != 0:
        return None
    for name in RUN_AS_CANDIDATES:
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise DataError("running as root and neither a 'postgres' nor a 'nobody' user exists: initdb refuses root; "
                    "create a 'postgres' user or run as an unprivileged user")


def _command(args: list[str]) -> list[str]:
    """`args` as the unprivileged user when root (runuser), else unchanged."""
    user = run_as_user()
    return ["runuser", "-u", user, "--", *args] if user else args


def _hand_over(path: Path) -> None:
    """Make `path` (recursively) the run-as user's, and let that user pass through its parent folders."""
    user = run_as_user()
    if user is None:
        return
    entry = pwd.getpwnam(user)
    for root, dirs, files in os.walk(path):
        for name in [root, *(os.path.join(root, d) for d in dirs), *(os.path.join(root, f) for f in files)]:
            os.chown(name, entry.pw_uid, entry.pw_gid)
    for parent in path.resolve().parents:  # search (x) permission only, no listing: the tmp/state folders stay private
        mode = parent.stat().st_mode
        if not mode & 0o001:
            parent.chmod(mode | 0o001)


def _run(args: list[str], what: str) -> None:
    """Run a PostgreSQL command; DataError with its output when it fails."""
    done = subprocess.run(_command(args), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise DataError(f"{what} failed ({done.returncode}): {(done.stderr or done.stdout).strip()[-2000:]}")


def init_cluster(dir: Path, port: int, password: str) -> Cluster:  # noqa: A002 - the documented name
    """Make a cluster in `dir` (DataError if it holds one already): superuser `driftloop` with `password`
    (scram-sha-256), listening on 127.0.0.1:`port` only, password auth for every connection (also local)."""
    dir = Path(dir).resolve()  # noqa: A001
    if (dir / DATA_DIR / "PG_VERSION").exists():
        raise DataError(f"{dir}: a PostgreSQL cluster exists already; start it, or remove the folder")
    dir.mkdir(parents=True, exist_ok=True)
    dir.chmod(0o700)
    secret = dir / PASSWORD_FILE
    secret.write_text(password, encoding="utf-8")
    secret.chmod(0o600)
    _hand_over(dir)
    _run([pg_binary("initdb"), "-D", str(dir / DATA_DIR), "-U", SUPERUSER, f"--pwfile={secret}",
          "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C"], "initdb")
    settings = (f"\nlisten_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{dir}'\n"
                "fsync = on\nsynchronous_commit = on\n")
    with (dir / DATA_DIR / "postgresql.conf").open("a", encoding="utf-8") as conf:
        conf.write(settings)
    cluster = Cluster(dir, port, password)
    start(cluster)
    try:
        _create_database(cluster)
    finally:
        stop(cluster)
    return cluster


def _create_database(cluster: Cluster) -> None:
    """Create the `driftloop` database through psycopg (the cluster runs)."""
    import psycopg

    with psycopg.connect(url(cluster, "postgres"), autocommit=True) as db:
        db.execute(f'CREATE DATABASE "{DATABASE}"')


def open_cluster(dir: Path, port: int) -> Cluster:
    """A cluster made earlier in `dir` (its password read from `dir/password`)."""
    dir = Path(dir).resolve()  # noqa: A001
    return Cluster(dir, port, (dir / PASSWORD_FILE).read_text(encoding="utf-8"))


def start(cluster: Cluster) -> None:
    """Start the server and wait until it accepts connections; DataError with its log otherwise."""
    log = cluster.dir / LOG_FILE
    try:
        _run([pg_binary("pg_ctl"), "-D", str(cluster.data), "-l", str(log), "-w", "-t", str(PG_CTL_TIMEOUT_S),
              "-o", f"-p {cluster.port}", "start"], "pg_ctl start")
    except DataError as error:
        tail = log.read_text(encoding="utf-8", errors="replace")[-2000:] if log.exists() else ""
        raise DataError(f"{error}\n{tail}") from None


def stop(cluster: Cluster, mode: str = "fast") -> None:
    """Stop the server (fast: roll back open transactions, then shut down cleanly); no-op if it is not running."""
    if not is_running(cluster):
        return
    _run([pg_binary("pg_ctl"), "-D", str(cluster.data), "-w", "-t", str(PG_CTL_TIMEOUT_S), "-m", mode, "stop"],
         "pg_ctl stop")


def is_running(cluster: Cluster) -> bool:
    """Whether a server runs on the cluster's data directory (pg_ctl status)."""
    if not (cluster.data / "PG_VERSION").exists():
        return False
    done = subprocess.run(_command([pg_binary("pg_ctl"), "-D", str(cluster.data), "status"]),
                          capture_output=True, check=False)
    return done.returncode == 0


def url(cluster: Cluster, database: str = DATABASE) -> str:
    """The `postgresql://` URL of a database of the cluster (loopback TCP, password included)."""
    return f"postgresql://{SUPERUSER}:{quote(cluster.password, safe='')}@127.0.0.1:{cluster.port}/{database}"
