"""`driftloop stack up | down | status`: start the parts in order and wait for each one's health, stop them in
reverse order, report each part's URL and health. Every started part is recorded in state_dir/stack/<part>.json."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from driftloop.config import Config
from driftloop.errors import ConfigError, DataError
from driftloop.stack import postgres
from driftloop.stack.parts import (
    DEPLOYMENTS,
    POSTGRES,
    SERVER,
    Part,
    build_parts,
    healthy,
    log_path,
    part_names,
    prefect_record_path,
    record_path,
    remote_parts,
    select_parts,
    server_names,
    shown_url,
    stack_dir,
    write_part_files,
)
from driftloop.stack.process import (
    exit_code,
    is_ours,
    log_tail,
    pid_alive,
    port_free,
    process_start,
    spawn,
    stop_group,
)

HEALTH_TIMEOUT_S = 2.0  # one probe; a healthy part answers in milliseconds
POLL_S = 0.5
LOG_LINES = 15
INSTALL_HINT = "install the Debian packages with `sudo make system-deps` (apt-get install prometheus " \
               "prometheus-alertmanager)"


def _console() -> Console:
    """Human output goes to stderr (stdout stays free for --json); logs and CI capture are wider than 80 columns."""
    return Console(stderr=True, width=None if sys.stderr.isatty() else 120)


def _client() -> httpx.Client:
    """Short timeouts, and no proxy from the environment: every part listens on this machine."""
    return httpx.Client(timeout=HEALTH_TIMEOUT_S, trust_env=False)


# ---------------------------------------------------------------------------------------------- records


def read_record(config: Config, name: str) -> dict | None:
    """The record of a started (or waiting) part, or None."""
    try:
        record = json.loads(record_path(config, name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _write_json(path: Path, payload: dict) -> None:
    """Write a JSON file whole (a reader never sees half of it), readable by this user only: PostgreSQL's record
    holds its password."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    with os.fdopen(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="utf-8") as out:
        out.write(json.dumps(payload, indent=2) + "\n")
    partial.replace(path)


def _remove_record(config: Config, name: str) -> None:
    """Forget a part; for Prefect also prefect.json, so later commands stop reporting to a server that is gone."""
    record_path(config, name).unlink(missing_ok=True)
    if name == "prefect":
        prefect_record_path(config).unlink(missing_ok=True)


def _record_alive(record: dict) -> bool:
    """Whether the recorded process is still the one that was started."""
    pid = record.get("pid")
    return isinstance(pid, int) and is_ours(pid, record.get("proc_start"))


# ---------------------------------------------------------------------------------------------- checks


def champion_version(config: Config) -> str | None:
    """The registry's champion version, None without one. Through the stack's MLflow server's REST API when it
    runs (no MLflow import: it is slow); else MLflow itself on the configured store."""
    from driftloop.state import mlflow_tracking_uri

    uri = mlflow_tracking_uri(config)
    if uri.startswith(("http://", "https://")):
        with _client() as client:
            response = client.get(f"{uri.rstrip('/')}/api/2.0/mlflow/registered-models/alias",
                                  params={"name": config.model.name, "alias": "champion"})
        if response.status_code == 200:
            return str(response.json()["model_version"]["version"])
        if response.status_code in (400, 404):  # no such model or alias (RESOURCE_DOES_NOT_EXIST / INVALID_PARAMETER)
            return None
        response.raise_for_status()
    from driftloop.registry.store import alias_version

    return alias_version(config, "champion")


def _waiting_reason(config: Config, config_path: Path) -> str | None:
    """Why the model server cannot start yet, or None when a champion is there."""
    try:
        if champion_version(config) is not None:
            return None
    except Exception as error:  # any registry failure means: no model to serve yet
        return f"waiting: the registry cannot be read ({error.__class__.__name__}: {error})"
    return f"waiting: no champion model yet — train one with `driftloop train --config {config_path}`"


def preflight(config: Config, parts: list[Part]) -> None:
    """Before anything starts: the external binaries exist and every port is free; a ConfigError otherwise."""
    for part in parts:
        if part.binary_key and shutil.which(part.command[0]) is None:
            raise ConfigError(f"{part.command[0]} not found: {INSTALL_HINT}, or set {part.binary_key} in the config")
    busy = []
    for part in parts:
        if part.port is None:
            continue
        try:
            free = port_free(config.stack.host if part.name != POSTGRES else "127.0.0.1", part.port)
        except OSError as error:
            raise ConfigError(f"stack.host {config.stack.host!r} cannot be listened on ({error.strerror}): "
                              "set stack.host to an address of this machine, such as 127.0.0.1") from None
        if not free:
            busy.append(f"{part.name}: port {part.port} on {config.stack.host} is in use — stop what holds it "
                        f"or change {part.port_key} in the config")
    if busy:
        raise ConfigError("; ".join(busy))


def _prepare_database(config: Config, names: list[str]) -> None:
    """Make the stack's PostgreSQL cluster (initdb, first `up` only) before the parts are built: their
    environments carry its URLs. A missing server package is one clear line."""
    if POSTGRES not in names:
        return
    try:
        postgres.ensure_cluster(config)
    except DataError as error:
        raise ConfigError(f"stack.database is postgres: {error}") from None


# ---------------------------------------------------------------------------------------------- up


def _start(config: Config, part: Part) -> dict:
    """Render the part's files, start it detached and record it (mode 0600: PostgreSQL's URL holds its password)."""
    write_part_files(config, part.name)
    log = log_path(config, part.name)
    pid = spawn(part.command, part.env, log, user=part.user)
    record = {"pid": pid, "url": part.url, "health_url": part.health_url, "log": str(log),
              "started_at": datetime.now(UTC).isoformat(timespec="seconds"), "command": part.command,
              "proc_start": process_start(pid)}
    _write_json(record_path(config, part.name), record)
    return record


def _check(part: Part, pid: int, begun: float, timeout_s: float, client: httpx.Client) -> str | None:
    """One look at a starting part: "healthy", why it failed, or None while it is still starting."""
    if part.oneshot:
        code = exit_code(pid)
        if code is None and pid_alive(pid):
            return _timed_out(part, begun, timeout_s)
        if code not in (0, None):
            return f"{part.name} exited with status {code}"
        return "healthy" if healthy(part, client) else f"{part.name} finished but Prefect lists no deployments"
    if not pid_alive(pid):
        return f"{part.name} exited before it was healthy"
    if healthy(part, client):
        return "healthy"
    return _timed_out(part, begun, timeout_s)


def _timed_out(part: Part, begun: float, timeout_s: float) -> str | None:
    """The timeout's message once `timeout_s` passed since `begun`, else None."""
    if time.monotonic() - begun > timeout_s:
        return f"{part.name} not healthy after {timeout_s:.0f} s (stack.start_timeout_s)"
    return None


def _print_failure(config: Config, part: Part, reason: str, console: Console) -> None:
    """The reason and the last lines of the part's log."""
    log = log_path(config, part.name)
    console.print(f"[red]✗ {reason}[/]; last lines of {log}:", soft_wrap=True)
    for line in log_tail(log, LOG_LINES):
        console.print(f"    {line}", markup=False, highlight=False, soft_wrap=True)


def _stop_record(config: Config, name: str, record: dict) -> str:
    """Stop a recorded part's process: "stopped", "killed" or "gone"."""
    part = next((p for p in build_parts(config, Path("config.yaml")) if p.name == name), None)
    leader = part.stop_signal if part is not None and part.stop_signal != signal.SIGTERM else None
    return stop_group(record["pid"], leader_signal=leader)


def _stop_started(config: Config, started: list[str], console: Console) -> None:
    """Undo this call: stop the parts it started, newest first, and forget them."""
    for name in reversed(started):
        record = read_record(config, name) or {}
        if _record_alive(record):
            _stop_record(config, name, record)
        _remove_record(config, name)
        console.print(f"stopped {name} (started by this call)")


@dataclass
class _Starting:
    """A part `up` started (or found running) and waits for."""

    part: Part
    pid: int
    begun: float
    running_before: bool


def _ready_to_start(part: Part, chosen: set[str], done: set[str]) -> bool:
    """Whether every dependency of `part` that this call handles is healthy."""
    return all(dependency in done or dependency not in chosen for dependency in part.after)


def _on_healthy(config: Config, part: Part, pid: int) -> None:
    """What follows a part's health: Prefect's URL for every later command, PostgreSQL's databases."""
    if part.name == "prefect":
        _write_json(prefect_record_path(config), {"pid": pid, "api_url": part.url})
    if part.name == POSTGRES:
        postgres.ensure_databases(config)


def _mark_done(config: Config, part: Part) -> None:
    """A one-shot part finished: its record says so (`status` asks Prefect; `down` has nothing to stop)."""
    _write_json(record_path(config, part.name), {"state": "done", "url": part.url,
                                                 "log": str(log_path(config, part.name)),
                                                 "finished_at": datetime.now(UTC).isoformat(timespec="seconds")})


def stack_up(config: Config, config_path: Path, parts: list[str] | None = None) -> bool:
    """Start the parts that are not running yet, each as soon as the parts it needs are healthy.

    Independent parts start at once and their start-ups overlap (`Part.after` says what waits for what). A part
    whose recorded process lives is left alone (`up` twice is safe); stale records are dropped. A model server
    waits (not a failure) while the registry has no champion. If a part fails, the parts this call started are
    stopped again. True when every part is healthy (or waiting).
    """
    console = _console()
    names = select_parts(config, parts)
    for name, where in remote_parts(config).items():
        if not parts and name in names:
            # A remote service (orchestration.api_url, an MLflow tracking server) takes the local one's place.
            names.remove(name)
            console.print(f"{name}: remote, {where}", soft_wrap=True)
    _prepare_database(config, names)
    chosen = [part for part in build_parts(config, Path(config_path)) if part.name in names]
    running: dict[str, dict] = {}
    for part in chosen:
        record = read_record(config, part.name)
        if record is not None and (_record_alive(record) or (part.oneshot and record.get("state") == "done")):
            running[part.name] = record
        elif record is not None:
            _remove_record(config, part.name)  # a stale record: its process is gone
    preflight(config, [part for part in chosen if part.name not in running])

    started: list[str] = []
    states: dict[str, tuple[str, int | None]] = {}
    up_since = time.monotonic()
    timeout_s = config.stack.start_timeout_s
    pending = [part for part in chosen if part.name not in running or "pid" in running[part.name]]
    done = {name for name, record in running.items() if record.get("state") == "done"}
    states.update({name: ("up", None) for name in done})
    waiting_on: dict[str, _Starting] = {}
    try:
        with _client() as client, console.status("starting") as spinner:
            while pending or waiting_on:
                for part in [p for p in pending if _ready_to_start(p, set(names), done)]:
                    pending.remove(part)
                    if part.name in running:
                        waiting_on[part.name] = _Starting(part, running[part.name]["pid"], time.monotonic(), True)
                        continue
                    reason = _waiting_reason(config, Path(config_path)) if part.name in server_names(config) else None
                    if reason:
                        _write_json(record_path(config, part.name), {"state": "waiting", "reason": reason,
                                                                     "url": part.url,
                                                                     "log": str(log_path(config, part.name))})
                        console.print(f"[yellow]… {part.name}: {reason}[/]", soft_wrap=True)
                        states[part.name] = ("waiting", None)
                        done.add(part.name)
                        continue
                    waiting_on[part.name] = _Starting(part, _start(config, part)["pid"], time.monotonic(), False)
                    started.append(part.name)
                for name, entry in list(waiting_on.items()):
                    verdict = _check(entry.part, entry.pid, entry.begun, timeout_s, client)
                    if verdict is None:
                        continue
                    if verdict != "healthy":
                        if entry.running_before:
                            verdict += " — it was already running: `driftloop stack down` stops it"
                        _print_failure(config, entry.part, verdict, console)
                        _stop_started(config, started, console)
                        return False
                    del waiting_on[name]
                    _on_healthy(config, entry.part, entry.pid)
                    if entry.part.oneshot:
                        _mark_done(config, entry.part)
                    done.add(name)
                    how = "already up" if entry.running_before else \
                        f"healthy in {time.monotonic() - entry.begun:.0f} s"
                    console.print(f"[green]✓[/] {name} {how}: {entry.part.ui_url or shown_url(entry.part.url)}",
                                  soft_wrap=True)
                    states[name] = ("up", None if entry.part.oneshot else entry.pid)
                if pending or waiting_on:
                    spinner.update(f"waiting for {', '.join(waiting_on) or '-'} "
                                   f"({time.monotonic() - up_since:.0f} s); then {', '.join(p.name for p in pending)}")
                    time.sleep(POLL_S)
    except BaseException:  # Ctrl-C or an error while rendering a config: leave nothing half-started
        _stop_started(config, started, console)
        raise
    console.print(_table(config, chosen, states))
    console.print(f"stack up in {time.monotonic() - up_since:.0f} s")
    return True


# ---------------------------------------------------------------------------------------------- down


def recorded_names(config: Config) -> list[str]:
    """The parts to look at: the config's, plus replicas recorded under an earlier, larger server_replicas."""
    names = part_names(config)
    extra = sorted((path.stem for path in stack_dir(config).glob(f"{SERVER}-*.json")
                    if path.stem not in names and path.stem.removeprefix(f"{SERVER}-").isdigit()),
                   key=lambda name: int(name.rsplit("-", 1)[1]))
    at = names.index(DEPLOYMENTS)
    return names[:at] + extra + names[at:]


def stack_down(config: Config) -> None:
    """Stop every recorded part, newest first (SIGTERM to its process group, SIGKILL after 15 s); drop the records."""
    console = _console()
    stopped_any = False
    for name in reversed(recorded_names(config)):
        record = read_record(config, name)
        if record is None:
            continue
        stopped_any = True
        if record.get("state") in ("waiting", "done"):
            console.print(f"{name}: {'was waiting' if record['state'] == 'waiting' else 'ran once'}, nothing to stop")
        elif _record_alive(record):
            how = _stop_record(config, name, record)
            console.print(f"{name}: {'killed (did not stop on SIGTERM)' if how == 'killed' else 'stopped'} "
                          f"(pid {record['pid']})")
        else:
            console.print(f"{name}: was not running (stale record of pid {record.get('pid')} removed)")
        _remove_record(config, name)
    prefect_record_path(config).unlink(missing_ok=True)
    if not stopped_any:
        console.print("stack: nothing is running")


# ---------------------------------------------------------------------------------------------- status


def _part_state(part: Part, record: dict | None, client: httpx.Client) -> tuple[str, int | None]:
    """up / down / unhealthy / waiting, and the pid when it runs."""
    if record is None:
        return "down", None
    if record.get("state") == "waiting":
        return "waiting", None
    if record.get("state") == "done":
        return ("up" if healthy(part, client) else "unhealthy"), None
    pid = record.get("pid")
    if not _record_alive(record):
        return "down", pid
    return ("up" if healthy(part, client) else "unhealthy"), pid


def _table(config: Config, parts: list[Part], states: dict[str, tuple[str, int | None]]) -> Table:
    """part, URL, page (what a person opens in a browser), state, pid, log."""
    colours = {"up": "green", "down": "red", "unhealthy": "red", "waiting": "yellow"}
    table = Table("part", "URL", "page", "state", "pid", "log", title=f"driftloop stack ({config.state_dir})")
    for part in parts:
        state, pid = states.get(part.name, ("down", None))
        table.add_row(part.name, shown_url(part.url), part.ui_url or "", f"[{colours.get(state, 'white')}]{state}[/]",
                      "" if pid is None else str(pid), str(log_path(config, part.name)))
    return table


def stack_status(config: Config, as_json: bool = False) -> bool:
    """Each part's URL and health, as a table (stderr) or one JSON object (stdout).

    True when at least one part is recorded and every recorded part is up (or waiting for a champion).
    """
    parts = build_parts(config, Path("config.yaml"))  # commands are not run here: the config path does not matter
    records = {part.name: read_record(config, part.name) for part in parts}
    with _client() as client:
        states = {part.name: _part_state(part, records[part.name], client) for part in parts}
    recorded = [name for name, record in records.items() if record is not None]
    ok = bool(recorded) and all(states[name][0] in ("up", "waiting") for name in recorded)
    if as_json:
        payload = {"parts": {part.name: {"state": states[part.name][0], "url": part.url, "ui": part.ui_url,
                                         "pid": states[part.name][1], "log": str(log_path(config, part.name))}
                             for part in parts},
                   "healthy": ok}
        sys.stdout.write(json.dumps(payload) + "\n")
    else:
        console = _console()
        console.print(_table(config, parts, states))
        if not recorded:
            console.print("nothing is running: `driftloop stack up` starts the stack")
    return ok
