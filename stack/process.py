"""Child processes of the stack: start one detached, tell whether it lives, stop its whole group, read its log."""

from __future__ import annotations

import errno
import os
import pwd
import signal
import socket
import subprocess
import time
from pathlib import Path

# Popen objects of the children this process started: kept so that they are not collected (and warned about)
# while the child runs on after `stack up` returns.
_CHILDREN: dict[int, subprocess.Popen] = {}


def _identity(user: str | None) -> dict:
    """Popen's arguments that run a child as `user` with that user's own group and no other (root's groups would
    decide its access to root's folders); nothing for None."""
    if user is None:
        return {}
    return {"user": user, "group": pwd.getpwnam(user).pw_gid, "extra_groups": []}


def spawn(command: list[str], env: dict[str, str], log: Path, user: str | None = None) -> int:
    """Start `command` in its own session (it outlives this process and owns its process group), as `user` when
    given (only root may switch); output to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        out.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}\n".encode())
        out.flush()
        child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                                 start_new_session=True, close_fds=True, cwd="/" if user else None,
                                 **_identity(user))  # the user may not enter our working directory
    _CHILDREN[child.pid] = child
    return child.pid


def _stat(pid: int) -> list[str] | None:
    """Fields 3 onwards of /proc/<pid>/stat (state, ppid, pgrp, ...), None without /proc or the process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: count from its last closing parenthesis.
    return stat.rsplit(")", 1)[1].split()


def process_start(pid: int) -> str | None:
    """When the process started (clock ticks since boot): with the pid, it names one process for good."""
    fields = _stat(pid)
    return fields[19] if fields else None  # field 22


def _zombie(pid: int) -> bool:
    """An exited process its parent has not reaped yet: init may take seconds, and kill(pid, 0) still succeeds."""
    fields = _stat(pid)
    return fields is not None and fields[0] in ("Z", "X")


def pid_alive(pid: int) -> bool:
    """Whether the process runs; a child of ours that exited is reaped here (a zombie would look alive)."""
    child = _CHILDREN.get(pid)
    if child is not None:
        if child.poll() is not None:
            return False
    else:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done == pid:
                return False
        except ChildProcessError:
            pass  # not our child: its parent (or init) reaps it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _zombie(pid)


def is_ours(pid: int, started: str | None) -> bool:
    """Whether `pid` is still the detached child that was recorded, not a reused pid of some other process."""
    if not pid_alive(pid):
        return False
    try:
        if os.getpgid(pid) != pid:  # every part leads its own process group (start_new_session)
            return False
    except ProcessLookupError:
        return False
    now = process_start(pid)
    return started is None or now is None or now == started


def _group_alive(pgid: int) -> bool:
    """Whether any live (not zombie) process of the group is left."""
    if Path("/proc/self/stat").exists():
        for entry in Path("/proc").iterdir():
            fields = _stat(int(entry.name)) if entry.name.isdigit() else None
            if fields and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
                return True
        return False
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _wait_gone(pid: int, deadline: float) -> bool:
    """Poll until the leader and its group are gone or the deadline passes."""
    while time.monotonic() < deadline:
        if not pid_alive(pid) and not _group_alive(pid):
            return True
        time.sleep(0.1)
    return not pid_alive(pid) and not _group_alive(pid)


def exit_code(pid: int) -> int | None:
    """The exit status of a child this process started, None while it runs (or when it is not ours)."""
    child = _CHILDREN.get(pid)
    return None if child is None else child.poll()


def stop_group(pid: int, timeout_s: float = 15.0, leader_signal: int | None = None) -> str:
    """SIGTERM the process group led by `pid` (or send `leader_signal` to the leader alone, which stops its own
    children, as PostgreSQL's postmaster does), SIGKILL what is left after `timeout_s`: "stopped", "killed" or
    "gone"."""
    try:
        if leader_signal is None:
            os.killpg(pid, signal.SIGTERM)
        else:
            os.kill(pid, leader_signal)
    except ProcessLookupError:
        pid_alive(pid)  # reap it if it was ours
        return "gone"
    if _wait_gone(pid, time.monotonic() + timeout_s):
        return "stopped"
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    _wait_gone(pid, time.monotonic() + 5.0)
    return "killed"


def port_free(host: str, port: int) -> bool:
    """Whether a server could listen on host:port now (SO_REUSEADDR as servers use: TIME_WAIT does not count)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def log_tail(log: Path, lines: int = 15) -> list[str]:
    """The last `lines` lines of a log file (none if it does not exist)."""
    try:
        with log.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 64 * 1024))  # enough for 15 lines, whatever the log's size
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    return text.splitlines()[-lines:]
