"""Empty, already migrated MLflow and Prefect databases, made once per install, that a new state dir starts from.

A new SQLite store costs its first user seconds: MLflow runs its alembic migrations (about a thousand fdatasync
calls, 5 s of wall time on this disk for 1 s of CPU) and Prefect's temporary server runs its own (its first start
takes twice the CPU of a later one). `make setup` runs `python -m driftloop.state_templates`, which builds each
database once with the library's own command (`mlflow db upgrade`, `prefect server database upgrade`) under the
venv (`share/driftloop/state-templates/`, named by the library's installed version). A new state dir then gets a
copy of the file (`seed_database`), which the library opens as any migrated database: MLflow checks that the
alembic revision is its head and, finding no experiment, creates its default one; Prefect's alembic upgrade finds
nothing to do. Without a template for the installed version (not made, or the library upgraded since), nothing is
copied and the library migrates a new database as before.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

# Where the templates are looked for: this variable, else share/driftloop/state-templates under the venv (its
# packages' versions are the ones the templates are made for).
TEMPLATES_ENV = "DRIFTLOOP_STATE_TEMPLATES"
# SQLite's user_version of a template and of every copy (neither MLflow nor Prefect uses it): a state dir's database
# made from a template says so.
TEMPLATE_MARK = 0x64726C70  # "drlp"
# The databases: template kind -> the distribution whose migrations made it.
KINDS = {"mlflow": "mlflow", "prefect": "prefect"}


def templates_dir() -> Path:
    """The folder holding the templates of this install."""
    configured = os.environ.get(TEMPLATES_ENV)
    return Path(configured) if configured else Path(sys.prefix) / "share" / "driftloop" / "state-templates"


def template_path(kind: str, folder: Path | None = None) -> Path | None:
    """The template of `kind` for the installed version of its library (None when that library is not installed)."""
    try:
        version = metadata.version(KINDS[kind])
    except metadata.PackageNotFoundError:
        return None
    return (folder or templates_dir()) / f"{kind}-{version}.db"


def usable(template: Path) -> bool:
    """Whether `template` is a complete template: a SQLite file with the mark and an alembic revision."""
    try:
        db = sqlite3.connect(f"{template.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error:
        return False
    try:
        mark = db.execute("PRAGMA user_version").fetchone()[0]
        revisions = db.execute("SELECT count(*) FROM alembic_version").fetchone()[0]
    except sqlite3.Error:
        return False
    finally:
        db.close()
    return mark == TEMPLATE_MARK and revisions >= 1


def seed_database(database: Path, kind: str, folder: Path | None = None) -> bool:
    """Copy the template of `kind` to `database` when that file does not exist yet; False (nothing written) when it
    exists or there is no usable template for the installed version. The copy appears whole or not at all (a
    concurrent first user either finds nothing, and migrates as before, or the whole file)."""
    if database.exists():
        return False
    template = template_path(kind, folder)
    if template is None or not template.is_file() or not usable(template):
        return False
    database.parent.mkdir(parents=True, exist_ok=True)
    partial = database.with_name(f"{database.name}.{os.getpid()}.partial")
    try:
        shutil.copyfile(template, partial)
        os.link(partial, database)  # never replaces a database another process made meanwhile
    except OSError:  # made meanwhile, or a full disk, or no hard links here: the library makes its own
        return False
    finally:
        partial.unlink(missing_ok=True)
    return True


def _finish(built: Path, target: Path) -> None:
    """Copy the library's new database to `target` as one self-contained file (no -wal beside it), marked."""
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    partial.unlink(missing_ok=True)
    source, copy = sqlite3.connect(built), sqlite3.connect(partial)
    try:
        source.backup(copy)
        copy.execute("PRAGMA journal_mode=DELETE")
        copy.execute(f"PRAGMA user_version={TEMPLATE_MARK}")
        copy.commit()
    finally:
        source.close()
        copy.close()
    partial.replace(target)


def _library_env(home: Path) -> dict[str, str]:
    """The environment of a library's migration command: telemetry off, Prefect's home in `home`, no API or
    database configured from outside."""
    from driftloop.env import DEFAULTS

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_TRACKING"))}
    return {**env, **DEFAULTS, "PREFECT_HOME": str(home)}


def make_template(kind: str, folder: Path | None = None) -> Path:
    """Build the template of `kind` with the library's own migration command; returns its path."""
    target = template_path(kind, folder)
    if target is None:
        raise RuntimeError(f"{KINDS[kind]} is not installed")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"driftloop-{kind}-template-") as work:
        built = Path(work) / f"{kind}.db"
        command = [sys.executable, "-m", "mlflow", "db", "upgrade", f"sqlite:///{built}"] if kind == "mlflow" \
            else [sys.executable, "-m", "prefect", "server", "database", "upgrade", "-y"]
        done = subprocess.run(command, env=_library_env(Path(work)), capture_output=True, text=True)
        if kind == "prefect":
            built = Path(work) / "prefect.db"  # Prefect's default database in its home
        if done.returncode != 0 or not built.is_file():
            raise RuntimeError(f"{' '.join(command[1:5])} failed: {(done.stderr or done.stdout).strip()[-500:]}")
        _finish(built, target)
    return target


def make_templates(folder: Path | None = None) -> list[str]:
    """Every template this install lacks; returns one line per database (made, present, or why not)."""
    lines = []
    for kind in KINDS:
        target = template_path(kind, folder)
        if target is not None and target.is_file() and usable(target):
            lines.append(f"{kind}: {target} (present)")
            continue
        try:
            lines.append(f"{kind}: {make_template(kind, folder)}")
        except (RuntimeError, OSError, sqlite3.Error) as error:
            lines.append(f"{kind}: not made ({error}); new state dirs migrate their own database")
    return lines


if __name__ == "__main__":
    # Best effort (`make setup`): without a template a new state dir migrates its database, as before.
    for line in make_templates():
        print(f"state template {line}")
