"""The loop as Prefect deployments: the monitor on a schedule, a weekly retraining, and retrain-on-drift.

`driftloop deploy` registers them and serves them from its own process (or, with orchestration.work_pool or
the stack's worker (stack.worker), registers them for that pool's workers). The monitor flow emits
`driftloop.drift.detected` when the retraining policy says so; an automation (a DeploymentEventTrigger) starts
`retrain-on-drift`, which runs one at a time: a run that starts while another is going is cancelled.
Alertmanager's webhook starts the same deployment (`retraining_starter`).

Deployed flows take the config file's path, not a Config: Prefect stores parameters as JSON, and an edited
config applies to the next run.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from prefect import flow, get_run_logger, serve
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.deployments.runner import EntrypointType, RunnerDeployment
from prefect.events import DeploymentEventTrigger
from prefect.schedules import Cron

from driftloop.config import Config, load_config
from driftloop.flows.starter import DRIFT_EVENT, RETRAIN_FLOW, RETRAIN_ON_DRIFT, drift_resource, require_prefect_server
from driftloop.stack.parts import work_pool
from driftloop.state import read_json_state, state_path, write_atomic

# The stages (torch, MLflow, Great Expectations, Evidently: about 12 s of CPU to import) are imported where a flow
# runs them, not here: registering and serving the deployments (a part of `driftloop stack up`) needs none of them,
# and each flow run is a fresh process (Prefect spawns it) that imports what it uses.
if TYPE_CHECKING:
    import pandas as pd

    from driftloop.data import Window
    from driftloop.flows.outcomes import MonitoringOutcome, MonitorRun, RetrainingOutcome
    from driftloop.serving.prediction_log import LogBase

MONITOR = "monitor"
SCHEDULED_RETRAINING = "scheduled-retraining"
MONITOR_FLOW = "monitor-traffic"


CURSOR_STATE = "monitor_cursor"
LAST_RETRAINING_STATE = "last_retraining"


def load_state(name: str, path: Path, log: LogBase | None) -> dict | None:
    """A state record: from the log's database (the truth, written transactionally) when `log` is given and holds
    it, else from the file (fsynced, with its last good copy: read_json_state); None when neither has it."""
    raw = log.get_state(name) if log is not None else None
    return raw if raw is not None else read_json_state(path)


def save_state(name: str, path: Path, value: dict, log: LogBase | None) -> None:
    """Record `value` in the log's database (one transaction) and mirror it to the file for people to read."""
    if log is not None:
        log.put_state(name, value)
    write_atomic(path, json.dumps(value), keep_last_good=True)


@dataclass
class MonitorCursor:
    """What the deployed monitor remembers between runs: the last checked prediction id and the policy. Kept in the
    prediction log's database (state `monitor_cursor`) beside the rows it points into, mirrored to
    state_dir/monitor/cursor.json."""

    last_id: int = 0
    champion: str | None = None
    policy: dict | None = None

    @classmethod
    def load(cls, path: Path, log: LogBase | None = None) -> MonitorCursor:
        """The saved cursor, or a fresh one."""
        raw = load_state(CURSOR_STATE, path, log)
        return cls(**raw) if raw else cls()

    def save(self, path: Path, log: LogBase | None = None) -> None:
        """Write atomically: a killed run leaves the previous cursor."""
        save_state(CURSOR_STATE, path, asdict(self), log)


def complete_windows(config: Config, logged: pd.DataFrame) -> list[Window]:
    """Windows of logged traffic that can no longer grow: all but the last, and the last when it is full.

    A time window is full once traffic later than its end has arrived; a row window at its row count.
    """
    from driftloop.flows.monitoring import log_to_contract
    from driftloop.monitoring.windows import cut_windows

    if logged.empty:
        return []
    windows = list(cut_windows(log_to_contract(config, logged), config))
    size = config.monitoring.window
    last = windows[-1]
    full = len(last.frame) >= size if isinstance(size, int) else False
    return windows if full else windows[:-1]


def id_range(window: Window) -> tuple[int, int]:
    """First and last prediction id of a window of logged traffic."""
    ids = window.frame["prediction_id"]
    return int(ids.min()), int(ids.max())


def policy_for(config: Config, cursor: MonitorCursor, champion: str) -> dict:
    """The policy state, with the champion's holdout figures as the baseline when the champion changed."""
    from driftloop.monitoring.policy import PolicyState, new_champion
    from driftloop.registry.store import holdout_figures

    state = PolicyState.from_json(cursor.policy) if cursor.policy else PolicyState()
    if cursor.champion != champion:
        state = new_champion(state, holdout_figures(config, champion))
    return state.to_json()


@flow(name=MONITOR_FLOW, validate_parameters=False)
def monitor_traffic(config_path: str) -> MonitorRun:
    """Check each complete window of traffic logged since the last run; the policy may ask for a retrain."""
    from driftloop.serving.prediction_log import open_log

    config = load_config(config_path)
    cursor_path = state_path(config, "monitor", "cursor.json")
    with open_log(config, config.data.pii) as log:
        cursor = MonitorCursor.load(cursor_path, log)
        return _check_windows(config, log, cursor, cursor_path)


def window_ranges(config: Config, log: LogBase, after_id: int, span: int) -> tuple[list[tuple[int, int]], int]:
    """The id ranges of the complete windows among the `span` ids after `after_id`, cut from their ids and event
    times alone (read in chunks), and how many rows those ids hold."""
    chunk = config.serving.log_read_chunk_rows
    index = log.read_index(first_id=after_id + 1, last_id=after_id + span, chunk_rows=chunk)
    return [id_range(window) for window in complete_windows(config, index)], len(index)


def _check_windows(config: Config, log: LogBase, cursor: MonitorCursor, cursor_path: Path) -> MonitorRun:
    """monitor_traffic's loop: the complete windows since the cursor, checked in order, the cursor saved after each.

    Memory is bounded: the windows are cut from the ids and event times of at most serving.log_index_rows rows at
    a time (more only when one window is larger), and each window's rows are read by monitoring_flow. A pass over
    the next rows starts where the last checked window ended, as the next scheduled run would.
    """
    from driftloop.flows.monitoring import monitoring_flow
    from driftloop.flows.outcomes import MonitorRun
    from driftloop.registry.store import CHAMPION, alias_version

    logger = get_run_logger()
    newest, span = log.last_id(), config.serving.log_index_rows
    checked: list[MonitoringOutcome] = []
    while True:
        ranges, rows = window_ranges(config, log, cursor.last_id, span)
        if not ranges and cursor.last_id + span < newest:
            span *= 2  # one window holds more rows than the span: read more at once
            continue
        if not ranges:
            if not checked:
                logger.info("no complete window since prediction id %d (%d new rows)", cursor.last_id, rows)
                return MonitorRun(pending_rows=rows)
            return MonitorRun(tuple(checked))
        for first, last in ranges:
            champion = alias_version(config, CHAMPION)
            if champion is None:
                logger.warning("no champion model: nothing to monitor")
                return MonitorRun(tuple(checked))
            outcome = monitoring_flow(config, first, last, f"ids-{first}-{last}",
                                      policy=policy_for(config, cursor, champion))
            cursor = MonitorCursor(last_id=last, champion=champion, policy=outcome.policy)
            cursor.save(cursor_path, log)
            checked.append(outcome)


@dataclass(frozen=True)
class RetrainPlan:
    """Which logged predictions a retraining trains on and which window gates it."""

    train: tuple[int, int]
    gate: tuple[int, int]


def plan_retraining(config: Config, labelled: pd.DataFrame) -> RetrainPlan | None:
    """The latest labelled window gates; the windows before it are the candidates to train on (the retraining
    data policy, config `retraining`, chooses among their rows).

    None when there are fewer than two windows with at least monitoring.min_labelled_rows labels.
    """
    from driftloop.flows.monitoring import log_to_contract
    from driftloop.monitoring.windows import cut_windows

    windows = [w for w in cut_windows(log_to_contract(config, labelled), config)
               if len(w.frame) >= config.monitoring.min_labelled_rows]
    if len(windows) < 2:
        return None
    gate = windows[-1]
    train = windows[:-1]
    return RetrainPlan(train=(id_range(train[0])[0], id_range(train[-1])[1]), gate=id_range(gate))


@dataclass(frozen=True)
class LastRetraining:
    """What the retraining deployment remembers of its last run: the gate window, the version trained, the status,
    and the fingerprint of a refused batch. Kept in the prediction log's database (state `last_retraining`),
    mirrored to state_dir/retraining/last.json."""

    gate: tuple[int, int] | None = None
    version: str | None = None
    status: str | None = None
    fingerprint: str | None = None

    @classmethod
    def load(cls, path: Path, log: LogBase | None = None) -> LastRetraining:
        """The saved record, or an empty one."""
        raw = load_state(LAST_RETRAINING_STATE, path, log)
        if raw is None:
            return cls()
        gate = raw.get("gate")
        return cls(tuple(gate) if gate else None, raw.get("version"), raw.get("status"), raw.get("fingerprint"))

    def save(self, path: Path, log: LogBase | None = None) -> None:
        """Write atomically: a killed run leaves the previous record."""
        save_state(LAST_RETRAINING_STATE, path, {"gate": list(self.gate) if self.gate else None,
                                                 "version": self.version, "status": self.status,
                                                 "fingerprint": self.fingerprint}, log)


def approved_since(config: Config, previous: LastRetraining) -> bool:
    """Whether the last retraining's batch was refused and a person has approved it since (`driftloop approve`):
    then the same windows are offered again, and the approval lets them through."""
    from driftloop.data_checks.approvals import find_approval
    from driftloop.flows.outcomes import Status

    # Records written before the refused status named governance refusals "quarantined".
    refused = previous.status in {Status.REFUSED, Status.QUARANTINED}
    return refused and previous.fingerprint is not None and find_approval(config, previous.fingerprint) is not None


@flow(name=RETRAIN_FLOW, validate_parameters=False)
def retrain_from_log(config_path: str, reason: str = "scheduled") -> RetrainingOutcome:
    """Retrain on recent labelled traffic and gate the new version on the latest labelled window.

    Skipped when nothing new was labelled since the last retraining: the same incident reported twice (by
    the automation and by Alertmanager) retrains once. A batch the governance checks refused is offered again
    once a person approved it.
    """
    from driftloop.serving.prediction_log import open_log

    config = load_config(config_path)
    with open_log(config, config.data.pii) as log:
        # Ids and event times of the labelled rows (chunked): the plan; retraining_flow reads the planned rows.
        labelled = log.read_index(labelled_only=True, chunk_rows=config.serving.log_read_chunk_rows)
        return _retrain_planned(config, log, labelled, reason)


def _retrain_planned(config: Config, log: LogBase, labelled: pd.DataFrame, reason: str) -> RetrainingOutcome:
    """retrain_from_log once the labelled rows' ids and times are known; the last retraining's record in `log`."""
    from driftloop.flows.outcomes import RetrainingOutcome
    from driftloop.flows.retraining import retraining_flow

    logger = get_run_logger()
    plan = plan_retraining(config, labelled) if not labelled.empty else None
    if plan is None:
        logger.warning("retraining (%s) skipped: fewer than two windows with %d labels each in the prediction log",
                       reason, config.monitoring.min_labelled_rows)
        return RetrainingOutcome.skipped("not enough labelled traffic")
    last_path = state_path(config, "retraining", "last.json")
    previous = LastRetraining.load(last_path, log)
    if previous.gate == plan.gate and not approved_since(config, previous):
        logger.info("retraining (%s) skipped: no new labelled window since version %s", reason, previous.version)
        return RetrainingOutcome.skipped(f"no new labelled window since version {previous.version}")
    logger.info("retraining (%s) on predictions %d-%d, gate on %d-%d", reason, *plan.train, *plan.gate)
    outcome = replace(retraining_flow(config, *plan.train, *plan.gate, progress=False), reason=reason)
    if outcome.refusal is not None:
        logger.warning("retraining (%s) refused:\n%s", reason, "\n".join(outcome.refusal.lines()))
    LastRetraining(plan.gate, outcome.model.model_version if outcome.model else None, str(outcome.status),
                   outcome.refusal.fingerprint if outcome.refusal else None).save(last_path, log)
    return outcome


def build_deployments(config: Config, config_path: Path) -> list[RunnerDeployment]:
    """The three deployments with their schedules, trigger and concurrency limit."""
    settings = config.orchestration
    parameters = {"config_path": str(config_path)}
    # By module path: the deployments run from any working directory where driftloop is installed.
    pool = {"entrypoint_type": EntrypointType.MODULE_PATH}
    if work_pool(config):
        pool["work_pool_name"] = work_pool(config)
    one_at_a_time = ConcurrencyLimitConfig(limit=settings.retrain_concurrency,
                                           collision_strategy=ConcurrencyLimitStrategy(settings.retrain_collision))
    on_drift = DeploymentEventTrigger(
        name=f"retrain {config.model.name} on drift",
        expect={DRIFT_EVENT},
        match=drift_resource(config),
        parameters={**parameters, "reason": "drift event: window {{ event.payload.window }}"},
    )
    return [
        monitor_traffic.to_deployment(
            name=MONITOR, schedules=[Cron(settings.monitor_cron, timezone=settings.timezone)],
            parameters=parameters, description="Drift and performance of each complete window of logged traffic.",
            tags=["driftloop", "monitor"], **pool),
        retrain_from_log.to_deployment(
            name=SCHEDULED_RETRAINING, schedules=[Cron(settings.retrain_cron, timezone=settings.timezone)],
            parameters={**parameters, "reason": "schedule"}, concurrency_limit=one_at_a_time,
            description="Retrain on recent labelled traffic on a schedule; gated.",
            tags=["driftloop", "retraining"], **pool),
        retrain_from_log.to_deployment(
            name=RETRAIN_ON_DRIFT, triggers=[on_drift], parameters=parameters, concurrency_limit=one_at_a_time,
            description=f"Started by the automation on {DRIFT_EVENT} and by Alertmanager's webhook; one at a time.",
            tags=["driftloop", "retraining"], **pool),
    ]


def ensure_process_pool(name: str) -> None:
    """Create the process work pool `name` when Prefect has none of that name (an existing pool is left as is)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
        except ObjectNotFound:
            try:
                client.create_work_pool(WorkPoolCreate(name=name, type="process"))
            except ObjectAlreadyExists:
                pass  # a worker starting at the same time made it


def deploy(config: Config, config_path: Path, serve_them: bool = True) -> None:
    """Register the deployments; serve them here until interrupted, unless they go to a work pool (created as a
    process pool when missing: the stack's worker serves it)."""
    require_prefect_server()
    deployments = build_deployments(config, config_path)
    names = ", ".join(f"{d.flow_name}/{d.name}" for d in deployments)
    where = os.environ["PREFECT_API_URL"]
    pool = work_pool(config)
    if pool or not serve_them:
        if pool:
            ensure_process_pool(pool)
        for deployment in deployments:
            deployment.apply(work_pool_name=pool)
        sys.stderr.write(f"registered {names} on {where}" + (f" for work pool {pool}\n" if pool else "\n"))
        return
    sys.stderr.write(f"serving {names} from this process, reporting to {where}; Ctrl-C stops\n")
    serve(*deployments, print_starting_message=False)
