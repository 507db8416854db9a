"""Prefect's temporary local API, started before the first flow asks for it.

Without a Prefect API (no PREFECT_API_URL, no running stack), Prefect starts a temporary server process when the
first flow runs and waits for it: seconds, the process imports Prefect's server and opens its database. `start_early`
starts that same server, Prefect's own (prefect.server.api.server.SubprocessASGIServer, which Prefect's client then
finds running and reuses), in a thread at the start of a command, so that the server's start-up runs beside the
command's imports and input checks instead of after them; `wait_until_ready` joins it before the first flow.
Nothing changes where an API is configured: then no server is started, as before.
"""

from __future__ import annotations

import contextvars
import threading
from typing import Any

_started: list[threading.Thread] = []
_servers: list[Any] = []  # the server the thread started (prefect.server.api.server.SubprocessASGIServer)
_lock = threading.Lock()
_cancelled = threading.Event()


def _start_temporary_server() -> None:
    """What Prefect's get_client does without an API: start (or find) its temporary server and wait until it
    answers. A failure is left to Prefect, which tries again at the first flow and reports it there."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        return
    from prefect.server.api.server import SubprocessASGIServer

    with _lock:
        if _cancelled.is_set():
            return
        server = SubprocessASGIServer()
        _servers.append(server)
    try:
        server.start()
    except Exception:  # noqa: BLE001 - cancelled, or else Prefect starts it again at the first flow and says why
        server.stop()


def start_early() -> None:
    """Start Prefect's temporary server in a thread, once per process (no-op where an API is configured).

    The thread sees this thread's Prefect settings (a test harness's API, temporary settings). It is not a daemon:
    a command that ends before its first flow waits for the start to finish, and Prefect's exit handler then stops
    the server, so no server process outlives the command."""
    if _started:
        return
    thread = threading.Thread(target=contextvars.copy_context().run, args=(_start_temporary_server,),
                              name="prefect-temporary-api")
    thread.start()
    _started.append(thread)


def wait_until_ready() -> None:
    """Block until the early start (if any) is done; a flow started before would find the server not yet
    answering."""
    for thread in _started:
        thread.join()


def cancel() -> None:
    """For a command that ends before its first flow (bad input): stop the early start instead of waiting for a
    server nobody will use. The server process is stopped (Prefect's own stop) if it was started; the thread then
    ends at once."""
    with _lock:
        _cancelled.set()
        servers = list(_servers)
    for server in servers:
        server.stop()
    wait_until_ready()
