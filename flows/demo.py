"""`driftloop demo`: the whole loop on the real 2013 NYC flights, with embedded defaults.

Train on the first months, serve the champion over HTTP, replay the later weeks through it, check each
week for drift, retrain on drift, gate the new model and let the server switch to it without a restart.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pandas as pd
import yaml
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from rich.console import Console

from driftloop.config import Config
from driftloop.data import Window
from driftloop.datasets import load_flights
from driftloop.errors import DriftloopError
from driftloop.flows import backtest
from driftloop.flows.backtest import Backtest, Model, backtest_config, latest_time
from driftloop.flows.monitoring import monitoring_flow
from driftloop.flows.retraining import retraining_flow
from driftloop.flows.summary import WindowRow, markdown_table, worth_table, write_summary
from driftloop.flows.training import training_pipeline
from driftloop.monitoring.policy import Decision, PolicyState, new_champion
from driftloop.monitoring.windows import cut_windows
from driftloop.monitoring.workspace import ui_command
from driftloop.registry.store import holdout_figures, load_version
from driftloop.serving.admin import labels_auth
from driftloop.state import reports_dir, state_path

# Logs and CI capture are wider than rich's 80-column fallback for a non-terminal.
console = Console(stderr=True, width=None if sys.stderr.isatty() else 120)


@dataclass
class LoopState:
    """What the replay loop remembers between windows."""

    id_ranges: list[tuple[int, int]] = field(default_factory=list)
    policy: dict = field(default_factory=dict)  # the retraining policy's state (PolicyState JSON)
    rows: list[WindowRow] = field(default_factory=list)


def demo_config(config: Config) -> Config:
    """The config with its state in a fresh `demo/` folder under state_dir (the demo owns that folder)."""
    state = (Path(config.state_dir) / "demo").resolve()
    if state.exists():
        shutil.rmtree(state)
    state.mkdir(parents=True)
    return config.model_copy(update={"state_dir": state})


def split_flights(config: Config) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Training months and the later traffic to replay, from the bundled data."""
    flights = load_flights()
    if config.demo.sample_fraction < 1:
        flights = flights.sample(frac=config.demo.sample_fraction, random_state=0).sort_index()
    times = flights["time_hour"]
    until = pd.Timestamp(config.demo.train_until, tz="UTC")
    stop = pd.Timestamp(config.demo.replay_until, tz="UTC")
    return (flights[times < until].reset_index(drop=True),
            flights[(times >= until) & (times < stop)].reset_index(drop=True))


def free_port(host: str) -> int:
    """A port nobody listens on now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def start_server(config: Config) -> tuple[subprocess.Popen, str]:
    """`driftloop serve` in a child process on a free port; waits until it serves the champion."""
    host = config.serving.host
    port = free_port(host)
    config_file = state_path(config, "config.yaml")
    config_file.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    log = state_path(config, "logs", "server.log").open("w")
    process = subprocess.Popen([sys.executable, "-m", "driftloop.cli", "serve", "--config", str(config_file),
                                "--host", host, "--port", str(port)], stdout=log, stderr=subprocess.STDOUT,
                               env=os.environ.copy())
    url = f"http://{host}:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise DriftloopError(f"model server exited with code {process.returncode}; see {log.name}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    process.terminate()
    raise DriftloopError(f"model server did not become healthy within 120 s; see {log.name}")


def request_rows(config: Config, frame: pd.DataFrame) -> list[dict]:
    """Rows as the client sends them: features, timestamp and the PII column, never the label."""
    columns = [c for c in frame.columns if c != config.data.target]
    payload = frame[columns].copy()
    if config.data.timestamp:
        payload[config.data.timestamp] = payload[config.data.timestamp].map(pd.Timestamp.isoformat)
    return payload.astype(object).where(payload.notna(), None).to_dict("records")


def replay(client: httpx.Client, config: Config, window: Window) -> tuple[int, int]:
    """Send a window's rows to /predict, then its labels to /labels (they arrive after the window)."""
    ids: list[int] = []
    rows = request_rows(config, window.frame)
    step = config.demo.request_rows
    for start in range(0, len(rows), step):
        response = client.post("/predict", json={"rows": rows[start:start + step]})
        response.raise_for_status()
        ids.extend(response.json()["prediction_ids"])
    labels = window.frame[config.data.target].tolist()
    client.post("/labels", json={"labels": [{"prediction_id": i, "label": y} for i, y in zip(ids, labels,
                                                                                          strict=True)]},
                headers=labels_auth(config)).raise_for_status()
    return ids[0], ids[-1]


def served_version(client: httpx.Client) -> str:
    """The version the server answers with now."""
    return client.get("/healthz").json()["model_version"]


def wait_for_version(client: httpx.Client, version: str, timeout_s: float) -> bool:
    """Poll /healthz until the server has switched to `version` (no restart)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if served_version(client) == version:
            return True
        time.sleep(0.25)
    return False


def champion_policy(config: Config, state: LoopState, version: str) -> None:
    """A new champion serves: the policy judges performance against its holdout figures from now on."""
    current = PolicyState.from_json(state.policy) if state.policy else PolicyState()
    state.policy = new_champion(current, holdout_figures(config, version)).to_json()


def baseline_line(baseline: dict | None) -> str:
    """The baseline's holdout figures in one line ("baseline HistGradientBoostingClassifier ...: auc 0.717, ...")."""
    if baseline is None:
        return "baseline: off (training.baseline)"
    figures = ", ".join(f"{k} {v:.3f}" for k, v in baseline["metrics"].items()) or "no figures"
    return f"baseline {baseline['model']} on the same rows and holdout: {figures}"


def window_event(decision: Decision, drifted: bool) -> str:
    """A short word on what the policy made of a window that did not retrain."""
    if decision.reason.startswith("cooldown"):
        return "cooldown"
    if drifted:
        return "drift only: reported"
    return ""


def retrain(client: httpx.Client, config: Config, state: LoopState, index: int) -> tuple[str, str]:
    """Retrain on what the retraining data policy (config `retraining`) takes of the first model's training months
    and the labelled windows before `index`; gate on window `index`. Returns (event, detail)."""
    history = state.id_ranges[:index]
    gate_first, gate_last = state.id_ranges[index]
    outcome = retraining_flow(config, history[0][0], history[-1][1], gate_first, gate_last, progress=False,
                              history_path=str(state_path(config, "data", "train.parquet")))
    if outcome.refusal is not None:
        return "retrain refused", "\n    ".join(outcome.refusal.lines())
    gate, version = outcome.gate, outcome.model.model_version
    if outcome.promoted:
        champion_policy(config, state, version)
    # The gate's reason names every body of evidence (recent window, holdout, slices) and what failed.
    detail = f"gate: v{version} (champion v{gate.champion_version}): {gate.reason}"
    if not outcome.promoted:
        return f"retrained v{version}, rejected", detail
    switched = wait_for_version(client, version, timeout_s=60)
    served = "server switched without restart" if switched else "server has not switched yet"
    return f"retrained v{version}, PROMOTED", f"{detail} to champion; {served}"


@flow(name="demo-loop", validate_parameters=False)
def demo_loop(config: Config) -> tuple[list[WindowRow], Backtest | None]:
    """Train, serve, replay week by week, monitor, retrain on drift, summarise."""
    logger = get_run_logger()
    train, live = split_flights(config)
    train_path = state_path(config, "data", "train.parquet")
    train.to_parquet(train_path, index=False)
    console.print(f"[bold]1-4.[/] validate → train → register on {len(train):,} flights before "
                  f"{config.demo.train_until}")
    first = training_pipeline(config, str(train_path))
    if first.refusal is not None:
        raise DriftloopError("\n".join(first.refusal.lines()))
    state = LoopState()
    champion_policy(config, state, first.model.model_version)
    console.print(f"    champion v{first.model.model_version}: holdout "
                  + ", ".join(f"{k} {v:.3f}" for k, v in first.model.metrics.items()), soft_wrap=True)
    console.print(f"    {baseline_line(first.model.baseline)}", soft_wrap=True)
    server, url = start_server(config)
    console.print(f"[bold]5.[/] model server on {url} (/predict, /healthz, /metrics)")
    windows = list(cut_windows(live, config))[: config.demo.max_windows]
    console.print(f"[bold]6-7.[/] replaying {len(windows)} windows of {config.monitoring.window} "
                  f"({len(live):,} flights) through the server")
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            for window in windows:
                label = f"w{window.index:02d}-{window.start:%Y-%m-%d}"
                state.id_ranges.append(replay(client, config, window))
                version = served_version(client)
                before = state.policy
                checked = monitoring_flow(config, *state.id_ranges[-1], label, before)
                state.policy = checked.policy
                drifted, decision = checked.drift.drift_detected, checked.decision
                event, detail = window_event(decision, drifted), ""
                if decision.retrain and window.index == 0:
                    # Nothing was retrained, so no cooldown starts.
                    state.policy = {**state.policy, "last_retrain": before.get("last_retrain")}
                    event = "retrain wanted, no labelled history yet"
                elif decision.retrain:
                    event, gate = retrain(client, config, state, window.index)
                    detail = f"why: {decision.reason}\n    {gate}"
                row = WindowRow(label, window.start, checked.rows, checked.drift.drift_share, drifted,
                                checked.performance.get(config.gate_metric()), version, event,
                                checked.drift.report.name if checked.drift.report else "")
                state.rows.append(row)
                console.print(row.line(), soft_wrap=True)
                if detail:
                    console.print(f"    {detail}", soft_wrap=True)
                logger.info("%s %s", row.line(), detail)
    finally:
        server.terminate()
        server.wait(timeout=30)
    create_markdown_artifact(markdown_table(state.rows), key="demo-summary", description="driftloop demo")
    return state.rows, compare_policies(config, train, windows, first.model.model_version)


def compare_policies(config: Config, train: pd.DataFrame, windows: list[Window], version: str) -> Backtest | None:
    """demo.compare's policies replayed in this process on the same weeks, from the registered first model
    (flows/backtest.py): what the loop is worth beside them. None when demo.compare is empty."""
    names = config.demo.compare
    if not names:
        return None
    started = time.monotonic()
    loaded = load_version(config, version)
    first = Model(loaded.predict, latest_time(config, train), train, holdout_figures(config, version))
    console.print(f"[bold]8.[/] the same {len(windows)} weeks under {', '.join(names)}, in this process")
    result = backtest.replay(backtest_config(config), train, windows, names, first=first)
    console.print(f"    {time.monotonic() - started:.0f} s", soft_wrap=True)
    return result


def run_demo(config: Config) -> Path:
    """Entry point of `driftloop demo`: run the loop and write the summary; returns the HTML path."""
    started = time.monotonic()
    config = demo_config(config)
    console.print(f"[bold]driftloop demo[/] — state in {config.state_dir}")
    rows, comparison = demo_loop(config)
    html, table = write_summary(rows, reports_dir(config, "summary") / "summary.html", config, comparison)
    console.print(table)
    console.print(worth_table(rows, comparison, config.gate_metric()))
    console.print(f"[bold]9.[/] summary: {html}   ({time.monotonic() - started:.0f} s)")
    console.print(f"    every window as an Evidently snapshot: {ui_command(config)}  (then open "
                  f"http://127.0.0.1:{config.stack.evidently_port})", soft_wrap=True)
    return html
