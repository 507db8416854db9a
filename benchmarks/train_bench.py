"""`driftloop train` on 5,000 rows: wall time, CPU and where the time goes, this checkout against an older one.

Each run is the real command, `driftloop train --config core/configs/flights.yaml --data <first N flights> --json`,
in a child process: the first training in a fresh state dir ("first": it creates the MLflow and Prefect databases,
copies of the install's migrated templates where the checkout has them (`make setup`, core/state_templates.py), and
links the Evidently project), then a second one in the same state dir ("again"). Runs alternate between the two
checkouts (old, new, old, new, ...) so that both see the same load on a shared machine.

- wall: the command's elapsed time. CPU: user + system time of the command and of every process it started (Prefect's
  temporary server, the fork server and the training ranks; this process adopts orphans as a subreaper, so the fork
  server, which outlives the command by a moment, is counted too).
- phases: wall-clock seconds inside the command, from a hook that times the functions both checkouts share
  (imports until driftloop.flows.training is loaded, the input checks, the flow's tasks, ...); "flow start" is the
  time from the input checks' end to the flow's first line (old: Prefect starts its temporary server there; new:
  waiting for the early start, if it is not done yet).

    git worktree add /tmp/old <commit>     # the code before
    .venv/bin/python benchmarks/train_bench.py --old /tmp/old --runs 2     # not niced: the command as a user runs it

Writes benchmarks/results/train.json and prints a table. Goal (issue 13): ≤ 20 s wall on 2 cores.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "train.json"
GOAL_WALL_S = 20.0
PR_SET_CHILD_SUBREAPER = 36
# The phases both checkouts have: (label, module, function); tasks are timed through their .fn.
TIMED = [
    ("input checks", "driftloop.flows.training", "checked_training_data"),
    ("validation (GX)", "driftloop.flows.training", "validate_batch"),
    ("governance", "driftloop.flows.training", "governance_gate"),
    ("provenance record", "driftloop.flows.training", "record_offer"),
    ("training", "driftloop.flows.training", "train_model"),
    ("registration (MLflow)", "driftloop.flows.training", "register_model"),
    ("links and artifact", "driftloop.flows.training", "publish_validation"),
    ("flow", "driftloop.flows.training", "training_pipeline"),
]
# Run in the child: times the functions above once driftloop.flows.training is loaded, then runs the CLI.
HOOK = r'''
import atexit, importlib.abc, importlib.machinery, json, os, sys, time
T0 = time.perf_counter()
marks, spans = {}, []
TIMED = json.loads(os.environ["TRAIN_BENCH_TIMED"])

def timed(label, fn):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            spans.append((label, start - T0, time.perf_counter() - T0))
    wrapper.__wrapped__ = fn
    return wrapper

class Loader(importlib.abc.Loader):
    def __init__(self, inner): self.inner = inner
    def create_module(self, spec): return self.inner.create_module(spec)
    def exec_module(self, module):
        self.inner.exec_module(module)
        marks["imported"] = time.perf_counter() - T0
        for label, _, name in TIMED:
            obj = getattr(module, name)
            if hasattr(obj, "fn"):  # a Prefect task or flow
                obj.fn = timed(label, obj.fn)
            else:
                setattr(module, name, timed(label, obj))

class Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != "driftloop.flows.training":
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        spec.loader = Loader(spec.loader)
        return spec

sys.meta_path.insert(0, Finder())

@atexit.register
def dump():
    marks["exit"] = time.perf_counter() - T0
    import resource
    own, reaped = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    marks["cpu_command"] = own.ru_utime + own.ru_stime
    marks["cpu_reaped_by_command"] = reaped.ru_utime + reaped.ru_stime
    with open(os.environ["TRAIN_BENCH_OUT"], "w") as out:
        json.dump({"marks": marks, "spans": spans}, out)

import driftloop.cli as cli
if hasattr(cli, "run"):  # the console script's entry where the checkout has one
    cli.run()
sys.exit(cli.main())
'''


def link_tree(checkout: Path, into: Path) -> Path:
    """A package tree of `checkout` under `into` as pip's strict editable install makes it (links to the sources,
    pyproject's package-dir mapping), to put first on PYTHONPATH; returns `into`."""
    mapping = tomllib.loads((checkout / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    for package, folder in sorted(mapping.items(), key=lambda item: item[0].count(".")):
        target = into.joinpath(*package.split("."))
        if target.is_symlink() or target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if package == "driftloop":  # the core folder: its files beside the stage packages
            target.mkdir()
            for item in (checkout / folder).iterdir():
                if item.name != "__pycache__":
                    (target / item.name).symlink_to(item)
        else:
            target.symlink_to(checkout / folder, target_is_directory=True)
    return into


def become_subreaper() -> None:
    """Orphaned descendants (the fork server after the command exits) become this process's children, so their
    CPU is counted once they are reaped."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def reap_all(deadline_s: float = 30.0) -> None:
    """Wait for every remaining descendant (it exits once the command's pipes close)."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            time.sleep(0.05)


def children_cpu() -> float:
    """User + system seconds of every reaped descendant so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def phases(record: dict) -> dict[str, float]:
    """Seconds per phase from the hook's marks and spans (a phase run several times is summed)."""
    marks, spans = record["marks"], record["spans"]
    total = {label: 0.0 for label, _, _ in TIMED}
    for label, start, end in spans:
        total[label] += end - start
    first = {label: start for label, start, _ in reversed(spans)}
    last_end = {label: end for label, _, end in spans}
    flow = total.pop("flow")
    out = {"start-up and imports": marks.get("imported", float("nan"))}
    out["input checks"] = total.pop("input checks")
    if "flow" in first and "input checks" in last_end:
        out["flow start (Prefect API)"] = first["flow"] - last_end["input checks"]
    tasks = sum(total.values())
    out.update(total)
    out["flow, other"] = flow - tasks
    if "flow" in last_end:
        out["after the flow (exit)"] = marks["exit"] - last_end["flow"]
    out["total (in the command)"] = marks["exit"]
    return out


def run_once(python: str, env: dict[str, str], config: Path, data: Path, state: Path) -> dict:
    """One `driftloop train` in `state` (its working directory); wall, CPU, exit code and phases."""
    state.mkdir(parents=True, exist_ok=True)
    out = state / "bench-phases.json"
    env = {**env, "TRAIN_BENCH_OUT": str(out), "TRAIN_BENCH_TIMED": json.dumps(TIMED)}
    load = os.getloadavg()[0]
    reap_all(0)
    cpu0 = children_cpu()
    start = time.perf_counter()
    # Output to files, not pipes: a shell waits for the command, not for the fork server that still holds a pipe.
    with open(state / "bench-stdout.txt", "w") as stdout, open(state / "bench-stderr.txt", "w") as stderr:
        proc = subprocess.Popen([python, "-c", HOOK, "train", "--config", str(config), "--data", str(data),
                                 "--json"], cwd=state, env=env, stdout=stdout, stderr=stderr)
        _, status, usage = os.wait4(proc.pid, 0)  # the command and the descendants it reaped
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    reap_all()
    cpu = children_cpu() - cpu0
    result = {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "load_at_start": round(load, 1),
              "exit": proc.returncode}
    if proc.returncode != 0:
        result["stderr"] = (state / "bench-stderr.txt").read_text()[-2000:]
        return result
    result["model_version"] = json.loads((state / "bench-stdout.txt").read_text())["model_version"]
    record = json.loads(out.read_text())
    result["phases"] = {k: round(v, 2) for k, v in phases(record).items()}
    own, reaped = record["marks"]["cpu_command"], record["marks"]["cpu_reaped_by_command"]
    command = usage.ru_utime + usage.ru_stime
    result["phases"]["after exit handlers (interpreter teardown)"] = round(wall - record["marks"]["exit"], 2)
    result["cpu_by_process_s"] = {"command": round(own, 2), "command's teardown": round(command - own - reaped, 2),
                                  "reaped by the command (Prefect's server)": round(reaped, 2),
                                  "others (fork server, ranks)": round(cpu - command, 2)}
    return result


def environment(tree: Path | None) -> dict[str, str]:
    """The child's environment: this one, with `tree` first on PYTHONPATH (the old checkout) when given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    return env


def templates_present(python: str) -> list[str]:
    """The migrated database templates a new state dir of this checkout starts from (none: it migrates its own)."""
    code = ("from driftloop.state_templates import KINDS, template_path, usable\n"
            "print('\\n'.join(str(p) for p in map(template_path, KINDS) if p and p.is_file() and usable(p)))")
    done = subprocess.run([python, "-c", code], capture_output=True, text=True)
    return done.stdout.split() if done.returncode == 0 else []


def summary(runs: list[dict]) -> dict:
    """Median and range of wall and CPU over successful runs, and the median of each phase."""
    ok = [r for r in runs if r["exit"] == 0]
    if not ok:
        return {"runs": len(runs), "failed": len(runs)}
    labels = list(ok[0]["phases"])
    return {"runs": len(runs), "failed": len(runs) - len(ok),
            "wall_s": {"median": round(statistics.median(r["wall_s"] for r in ok), 2),
                       "min": min(r["wall_s"] for r in ok), "max": max(r["wall_s"] for r in ok)},
            "cpu_s": {"median": round(statistics.median(r["cpu_s"] for r in ok), 2),
                      "min": min(r["cpu_s"] for r in ok), "max": max(r["cpu_s"] for r in ok)},
            "load": [min(r["load_at_start"] for r in ok), max(r["load_at_start"] for r in ok)],
            "phases_median": {k: round(statistics.median(r["phases"].get(k, 0.0) for r in ok), 2) for k in labels},
            "cpu_by_process_median": {k: round(statistics.median(r["cpu_by_process_s"][k] for r in ok), 2)
                                      for k in ok[0]["cpu_by_process_s"]}}


def print_table(result: dict) -> None:
    """Wall, CPU and phases side by side, one column per checkout and case."""
    columns = [(f"{variant} {case}", result["summary"][variant][case]) for variant in result["summary"]
               for case in ("first", "again")]
    print("| | " + " | ".join(name for name, _ in columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    print("| wall s, median (min-max) | " + " | ".join(
        f"{s['wall_s']['median']} ({s['wall_s']['min']}-{s['wall_s']['max']})" if "wall_s" in s else "failed"
        for _, s in columns) + " |")
    print("| CPU s (user+sys, all processes) | " + " | ".join(
        f"{s['cpu_s']['median']} ({s['cpu_s']['min']}-{s['cpu_s']['max']})" if "cpu_s" in s else "failed"
        for _, s in columns) + " |")
    for key, title in (("cpu_by_process_median", "CPU s: "), ("phases_median", "")):
        labels = next((list(s[key]) for _, s in columns if key in s), [])
        for label in labels:
            print(f"| {title}{label} | " + " | ".join(str(s.get(key, {}).get(label, "")) for _, s in columns) + " |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", type=Path, help="a checkout of the code before (git worktree add /tmp/old <commit>)")
    parser.add_argument("--rows", type=int, default=5000, help="the first N flights of 2013 (default 5000)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each checkout, alternating (default 3)")
    parser.add_argument("--config", type=Path, default=ROOT / "core" / "configs" / "flights.yaml")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    become_subreaper()
    python = str(ROOT / ".venv" / "bin" / "python")
    with tempfile.TemporaryDirectory(prefix="train-bench-") as tmp:
        work = Path(tmp)
        data = work / f"flights-{args.rows}.csv"
        subprocess.run([python, "-c", "import sys; from driftloop.datasets import load_flights; "
                        f"load_flights().head({args.rows}).to_csv(sys.argv[1], index=False)", str(data)], check=True)
        variants: dict[str, tuple[dict[str, str], Path]] = {}
        if args.old is not None:
            old = args.old.resolve()
            variants["old"] = (environment(link_tree(old, work / "old-tree")), old / "core" / "configs" /
                               args.config.name)
        variants["new"] = (environment(None), args.config.resolve())
        runs: dict[str, dict[str, list[dict]]] = {v: {"first": [], "again": []} for v in variants}
        for index in range(args.runs):
            for variant, (env, config) in variants.items():
                state = work / f"{variant}-{index}"
                for case in ("first", "again"):
                    record = run_once(python, env, config, data, state)
                    runs[variant][case].append(record)
                    print(f"run {index + 1}/{args.runs} {variant} {case}: wall {record['wall_s']} s, CPU "
                          f"{record['cpu_s']} s, load {record['load_at_start']}, exit {record['exit']}",
                          file=sys.stderr, flush=True)
    result = {
        "command": f"driftloop train --config {args.config.name} --data <first {args.rows} flights> --json",
        "rows": args.rows, "old": str(args.old) if args.old else None,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "goal_wall_s": GOAL_WALL_S,
        "state_templates": templates_present(python),
        "summary": {v: {case: summary(runs[v][case]) for case in ("first", "again")} for v in variants},
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
