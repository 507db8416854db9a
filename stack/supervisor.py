"""`driftloop stack up | down | status`: start the parts in order and wait for each one's health, stop them in
reverse order, report each part's URL and health. Every started part is recorded in state_dir/stack/<part>.json."""

from __future__ import annotations

import json
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from driftloop.config import Config
from driftloop.errors import ConfigError
from driftloop.stack.parts import (
    INDEPENDENT,
    PART_NAMES,
    Part,
    build_parts,
    healthy,
    log_path,
    prefect_record_path,
    record_path,
    remote_parts,
    select_parts,
    write_part_files,
)
from driftloop.stack.process import is_ours, log_tail, pid_alive, port_free, process_start, spawn, stop_group
from driftloop.state import write_atomic

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
    """Write a JSON file whole (a reader never sees half of it)."""
    write_atomic(path, json.dumps(payload, indent=2) + "\n")


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
    """The registry's champion version, None without one (MLflow is imported only here: it is slow to import)."""
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
            free = port_free(config.stack.host, part.port)
        except OSError as error:
            raise ConfigError(f"stack.host {config.stack.host!r} cannot be listened on ({error.strerror}): "
                              "set stack.host to an address of this machine, such as 127.0.0.1") from None
        if not free:
            busy.append(f"{part.name}: port {part.port} on {config.stack.host} is in use — stop what holds it "
                        f"or change {part.port_key} in the config")
    if busy:
        raise ConfigError("; ".join(busy))


# ---------------------------------------------------------------------------------------------- up


def _start(config: Config, part: Part) -> dict:
    """Render the part's files, start it detached and record it."""
    write_part_files(config, part.name)
    log = log_path(config, part.name)
    pid = spawn(part.command, part.env, log)
    record = {"pid": pid, "url": part.url, "health_url": part.health_url, "log": str(log),
              "started_at": datetime.now(UTC).isoformat(timespec="seconds"), "command": part.command,
              "proc_start": process_start(pid)}
    _write_json(record_path(config, part.name), record)
    return record


def _wait_healthy(part: Part, pid: int, timeout_s: float, console: Console, client: httpx.Client) -> str | None:
    """Wait for the part's health; None when healthy, else why not."""
    started = time.monotonic()
    target = part.health_url or f"{part.url} (deployments registered)"
    with console.status(f"{part.name}: waiting for {target}") as status:
        while True:
            if not pid_alive(pid):
                return f"{part.name} exited before it was healthy"
            if healthy(part, client):
                return None
            elapsed = time.monotonic() - started
            if elapsed > timeout_s:
                return f"{part.name} not healthy after {timeout_s:.0f} s (stack.start_timeout_s)"
            status.update(f"{part.name}: waiting for {target} ({elapsed:.0f} s)")
            time.sleep(POLL_S)


def _print_failure(config: Config, part: Part, reason: str, console: Console) -> None:
    """The reason and the last lines of the part's log."""
    log = log_path(config, part.name)
    console.print(f"[red]✗ {reason}[/]; last lines of {log}:", soft_wrap=True)
    for line in log_tail(log, LOG_LINES):
        console.print(f"    {line}", markup=False, highlight=False, soft_wrap=True)


def _stop_started(config: Config, started: list[str], console: Console) -> None:
    """Undo this call: stop the parts it started, newest first, and forget them."""
    for name in reversed(started):
        record = read_record(config, name) or {}
        if _record_alive(record):
            stop_group(record["pid"])
        _remove_record(config, name)
        console.print(f"stopped {name} (started by this call)")


def stack_up(config: Config, config_path: Path, parts: list[str] | None = None) -> bool:
    """Start the parts that are not running yet, in order, each once the previous one is healthy.

    A part whose recorded process lives is left alone (`up` twice is safe); stale records are dropped. The model
    server waits (not a failure) while the registry has no champion. If a part fails, the parts this call started
    are stopped again. True when every part is healthy (or waiting).
    """
    console = _console()
    names = select_parts(parts)
    for name, where in remote_parts(config).items():
        if not parts and name in names:
            # A remote service (orchestration.api_url, an MLflow tracking server) takes the local one's place.
            names.remove(name)
            console.print(f"{name}: remote, {where}", soft_wrap=True)
    chosen = [part for part in build_parts(config, Path(config_path)) if part.name in names]
    running: dict[str, dict] = {}
    for part in chosen:
        record = read_record(config, part.name)
        if record is not None and _record_alive(record):
            running[part.name] = record
        elif record is not None:
            _remove_record(config, part.name)  # a stale record: its process is gone
    waiting: dict[str, str] = {}
    if any(part.name == "server" and part.name not in running for part in chosen):
        reason = _waiting_reason(config, Path(config_path))
        if reason:
            waiting["server"] = reason
    preflight(config, [part for part in chosen if part.name not in running and part.name not in waiting])

    started: list[str] = []
    states: dict[str, tuple[str, int | None]] = {}
    up_since = time.monotonic()
    timeout_s = config.stack.start_timeout_s
    try:
        with _client() as client:
            early = {part.name: _start(config, part)["pid"] for part in chosen
                     if part.name in INDEPENDENT and part.name not in running and part.name not in waiting}
            started += list(early)
            for part in chosen:
                if part.name in waiting:
                    _write_json(record_path(config, part.name), {"state": "waiting", "reason": waiting[part.name],
                                                                 "url": part.url, "log": str(log_path(config,
                                                                                                      part.name))})
                    console.print(f"[yellow]… {part.name}: {waiting[part.name]}[/]", soft_wrap=True)
                    states[part.name] = ("waiting", None)
                    continue
                if part.name in running:
                    pid, begun = running[part.name]["pid"], time.monotonic()
                elif part.name in early:
                    pid, begun = early[part.name], up_since
                else:
                    begun = time.monotonic()
                    pid = _start(config, part)["pid"]
                    started.append(part.name)
                failure = _wait_healthy(part, pid, timeout_s, console, client)
                if failure:
                    if part.name in running:
                        failure += " — it was already running: `driftloop stack down` stops it"
                    _print_failure(config, part, failure, console)
                    _stop_started(config, started, console)
                    return False
                if part.name == "prefect":
                    _write_json(prefect_record_path(config), {"pid": pid, "api_url": part.url})
                how = "already up" if part.name in running else f"healthy in {time.monotonic() - begun:.0f} s"
                console.print(f"[green]✓[/] {part.name} {how}: {part.ui_url or part.url}", soft_wrap=True)
                states[part.name] = ("up", pid)
    except BaseException:  # Ctrl-C or an error while rendering a config: leave nothing half-started
        _stop_started(config, started, console)
        raise
    console.print(_table(config, chosen, states))
    console.print(f"stack up in {time.monotonic() - up_since:.0f} s")
    return True


# ---------------------------------------------------------------------------------------------- down


def stack_down(config: Config) -> None:
    """Stop every recorded part, newest first (SIGTERM to its process group, SIGKILL after 15 s); drop the records."""
    console = _console()
    stopped_any = False
    for name in reversed(PART_NAMES):
        record = read_record(config, name)
        if record is None:
            continue
        stopped_any = True
        if record.get("state") == "waiting":
            console.print(f"{name}: was waiting, nothing to stop")
        elif _record_alive(record):
            how = stop_group(record["pid"])
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
        table.add_row(part.name, part.url, part.ui_url or "", f"[{colours.get(state, 'white')}]{state}[/]",
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
