"""What `driftloop train` pays before and after its work (issue 13, ≤ 20 s on 5,000 rows): the training flow's imports
leave Evidently out, the Evidently project's id is read from disk (reserved before the project exists), Prefect's
temporary API and the ranks' fork server start early, and the console script skips the interpreter's teardown but not
the exit handlers. (A new state dir's databases: tests/test_state_templates.py.)"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from driftloop.config import Config


def run_python(code: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter of this venv (nothing imported yet), its output captured."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
def test_the_training_flow_imports_neither_evidently_nor_dcp_nor_pipelining(tmp_path: Path) -> None:
    result = run_python("""
        import json, sys
        import driftloop.flows.training, driftloop.flows.monitoring, driftloop.flows.governance
        heavy = ["evidently", "torch.distributed.checkpoint", "prefect.server.api.server",
                 "torch.distributed.pipelining"]
        print(json.dumps({name: name in sys.modules for name in heavy}))
    """, tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"evidently": False, "torch.distributed.checkpoint": False,
                                         "prefect.server.api.server": False, "torch.distributed.pipelining": False}


@pytest.mark.slow
def test_the_project_id_read_from_disk_is_evidentlys_own(config: Config) -> None:
    from driftloop.flows.links import evidently_snapshots_url
    from driftloop.monitoring.projects import existing_project_id, project_ids
    from driftloop.monitoring.workspace import dashboard_panels, open_project
    from driftloop.state import evidently_workspace

    assert existing_project_id(config) is None  # no workspace yet
    url = evidently_snapshots_url(config)  # the id is reserved; the project is not made yet
    assert existing_project_id(config) is None and evidently_snapshots_url(config) == url
    workspace, project = open_project(config)  # the monitor's first window: Evidently creates it with that id
    assert existing_project_id(config) == str(project.id)
    assert url.endswith(f"/projects/{project.id}/reports")
    assert [panel.title for panel in workspace.get_dashboard(project.id).panels] == \
        [panel.title for _, panel in dashboard_panels(config)]
    assert evidently_snapshots_url(config) == url  # from the project on disk now, the same link
    # Another model's project, and a folder that is not a project, are not this model's.
    other = workspace.create_project("another-model")
    (evidently_workspace(config) / "junk").mkdir()
    (evidently_workspace(config) / "junk" / "metadata.json").write_text("{not json")
    assert project_ids(evidently_workspace(config), "another-model") == [str(other.id)]
    assert existing_project_id(config) == str(project.id)
    shutil.rmtree(evidently_workspace(config) / "junk")  # Evidently itself would fail on it
    # Two projects of one name: the fast path steps aside and Evidently decides, as before.
    workspace.create_project(config.model.name)
    assert existing_project_id(config) is None
    assert evidently_snapshots_url(config).endswith(f"/projects/{open_project(config)[1].id}/reports")


@pytest.mark.slow
def test_a_first_versions_evidently_link_imports_no_evidently_and_names_the_monitors_project(
        tmp_path: Path, config: Config) -> None:
    import yaml

    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json")))
    result = run_python("""
        import json, sys
        from driftloop.config import load_config
        from driftloop.flows.links import evidently_snapshots_url
        config = load_config("config.yaml")
        first, again = evidently_snapshots_url(config), evidently_snapshots_url(config)
        imported = "evidently" in sys.modules
        from driftloop.monitoring.workspace import open_project
        workspace, project = open_project(config)
        print(json.dumps({"links": [first, again], "evidently": imported, "project": str(project.id),
                          "projects": [str(p.id) for p in workspace.list_projects()]}))
    """, tmp_path)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert not found["evidently"]
    assert found["links"][0] == found["links"][1]
    assert found["links"][0].endswith(f"/projects/{found['project']}/reports")
    assert found["projects"] == [found["project"]]


@pytest.mark.slow
def test_the_early_prefect_api_is_the_one_the_flow_uses(tmp_path: Path) -> None:
    result = run_python("""
        import json, os
        from driftloop.env import prepare_environment
        os.environ.pop("PREFECT_API_URL", None)
        prepare_environment(os.path.abspath("state"))
        from driftloop.flows.prefect_api import start_early, wait_until_ready
        start_early()
        wait_until_ready()
        from prefect.server.api.server import SubprocessASGIServer
        server = SubprocessASGIServer()
        started = server.running and server.server_process is not None and server.server_process.poll() is None
        from prefect import flow
        from prefect.client.orchestration import get_client

        @flow
        def used_api() -> str:
            with get_client(sync_client=True) as client:
                return str(client.api_url)

        print(json.dumps({"started": started, "early": server.api_url, "flow": used_api(),
                          "servers": len(SubprocessASGIServer._instances)}))
    """, tmp_path)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["started"]
    assert found["flow"].rstrip("/") == found["early"].rstrip("/")
    assert found["servers"] == 1  # Prefect found the early server and did not start another


def test_no_early_server_where_an_api_is_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from driftloop.flows import prefect_api

    monkeypatch.setattr(prefect_api, "_started", [])
    before = dict(SubprocessASGIServer._instances)
    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        prefect_api.start_early()
        prefect_api.wait_until_ready()
    assert len(prefect_api._started) == 1
    assert SubprocessASGIServer._instances == before  # the thread saw the API (this thread's settings): no server


@pytest.mark.slow
def test_the_fork_server_starts_early_only_when_ranks_will_fork(tmp_path: Path) -> None:
    result = run_python("""
        import json, sys
        from multiprocessing import forkserver
        from driftloop.training.fork_server import start_early
        start_early(1, "local")
        one_stage = forkserver._forkserver._forkserver_pid
        start_early(2, "single_process")
        one_process = forkserver._forkserver._forkserver_pid
        start_early(2, "local")
        print(json.dumps({"one_stage": one_stage, "one_process": one_process,
                          "two_ranks": forkserver._forkserver._forkserver_pid,
                          "preload": forkserver._forkserver._preload_modules,
                          "torch_here": "torch" in sys.modules}))
    """, tmp_path)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["one_stage"] is None and found["one_process"] is None
    assert isinstance(found["two_ranks"], int)
    assert found["preload"] == ["driftloop.training.trainer", "torch.distributed.pipelining"]
    assert not found["torch_here"]  # the server imports torch, not this process


@pytest.mark.slow
def test_exit_now_runs_threads_and_exit_handlers_then_exits_with_the_code(tmp_path: Path) -> None:
    result = run_python("""
        import atexit, sys, threading, time
        from concurrent.futures import ThreadPoolExecutor
        from driftloop.cli import exit_now
        pool = ThreadPoolExecutor(1)  # its idle worker ends only through threading's exit hook, never by a join
        pool.submit(print, "pool", flush=True).result()
        out = open("written.txt", "w")
        atexit.register(lambda: (print("handler", flush=True), out.write("flushed"), out.close()))
        threading.Thread(target=lambda: (time.sleep(0.3), print("thread", flush=True))).start()
        print("buffered", end="")  # not flushed by hand
        sys.stderr.write("err")
        exit_now(3)
    """, tmp_path, timeout=60)
    assert result.returncode == 3
    assert result.stdout.splitlines() == ["pool", "bufferedthread", "handler"]
    assert result.stderr == "err"
    assert (tmp_path / "written.txt").read_text() == "flushed"


@pytest.mark.slow
def test_bad_input_stops_the_early_server_and_leaves_no_process(tmp_path: Path) -> None:
    from tests.helpers import assert_one_clean_error, run_cli

    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    config = Path(__file__).resolve().parents[1] / "core" / "configs" / "flights.yaml"
    result = run_cli("train", "--config", str(config), "--data", str(bad), cwd=tmp_path)
    assert result.returncode == 2
    assert_one_clean_error(result, "bad.csv")
    home = f"PREFECT_HOME={(tmp_path / '.driftloop' / 'prefect').resolve()}".encode()
    deadline = time.monotonic() + 10  # the fork server ends once it sees the command gone
    while time.monotonic() < deadline and processes_with(home):
        time.sleep(0.2)
    assert not processes_with(home), "a process of the command outlived it (Prefect's server or the fork server)"


def processes_with(variable: bytes) -> list[int]:
    """Live (not zombie) processes whose environment holds `variable` (NAME=value)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and variable in (proc / "environ").read_bytes().split(b"\0") \
                    and " Z " not in (proc / "stat").read_text():
                found.append(int(proc.name))
        except OSError:
            continue
    return found
