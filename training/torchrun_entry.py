"""What every torchrun worker runs: one rank of a pipeline over several machines (training.launcher torchrun).

    torchrun --nnodes=2 --nproc-per-node=2 --rdzv-backend=c10d --rdzv-endpoint=node0:29500 --rdzv-id=job7 \\
        -m driftloop.training.torchrun_entry --config C --data FILE [--stages N] [--schedule S] [--microbatches M] \\
        [--seed S]

`driftloop train --launcher torchrun` prints this command from the config's rendezvous settings. Every worker
reads the same config and data (the paths must exist on every node), trains its stages, and receives the merged
model; rank 0 writes it (safetensors, feature spec, model shape: training.artifacts) and a JSON summary under
--output, by default state_dir/torchrun/<rdzv_id>/. Exit codes: 0 ok, 2 bad input (one line on stderr).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from driftloop.config import load_config, parse_config
from driftloop.data import read_table, sort_by_time
from driftloop.errors import DriftloopError
from driftloop.state import state_path
from driftloop.training.artifacts import save_model
from driftloop.training.trainer import TrainResult, train

SUMMARY = "train.json"


def parser() -> argparse.ArgumentParser:
    """The worker's arguments: those of `driftloop train` that shape the run."""
    p = argparse.ArgumentParser(prog="python -m driftloop.training.torchrun_entry", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="YAML config file (the same on every node)")
    p.add_argument("--data", required=True, help="CSV or Parquet training data (the same on every node)")
    p.add_argument("--stages", type=int, help="pipeline stages (overrides training.stages)")
    p.add_argument("--schedule", help="pipeline schedule (overrides training.schedule)")
    p.add_argument("--microbatches", type=int, help="microbatches per batch (overrides training.microbatches)")
    p.add_argument("--seed", type=int, help="random seed (overrides training.seed)")
    p.add_argument("--output", help="where rank 0 writes the model (default: state_dir/torchrun/<rdzv_id>)")
    return p


def summary(result: TrainResult) -> dict:
    """The run's figures, like `driftloop train --json` without the registry's fields."""
    return {"final_loss": result.final_loss, "stages": result.stages, "schedule": result.schedule,
            "microbatches": result.microbatches, "stages_per_rank": result.stages_per_rank, "ranks": result.ranks,
            "launcher": result.launcher, "device": result.device, "resumed_from": result.resumed_from,
            "metrics": result.metrics, "losses": result.losses}


def main(argv: list[str] | None = None) -> int:
    """Train this worker's rank; rank 0 saves the merged model and prints the summary as one JSON line."""
    args = parser().parse_args(argv)
    try:
        config = load_config(args.config)
        if config.training.launcher != "torchrun":  # being run by torchrun is what this entry point is for
            raw = config.model_dump()
            raw["training"]["launcher"] = "torchrun"
            config = parse_config(raw, args.config)
        frame = sort_by_time(read_table(Path(args.data)), config.data)
        result = train(frame, config, stages=args.stages, schedule=args.schedule, microbatches=args.microbatches,
                       seed=args.seed, progress=False)
    except DriftloopError as error:
        sys.stderr.write(f"error: {error}\n")
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        default = state_path(config, "torchrun", config.training.rdzv_id, "x").parent
        output = Path(args.output) if args.output else default
        save_model(output, result.state, result.spec, config.model)
        (output / SUMMARY).write_text(json.dumps(summary(result), indent=1))
        sys.stdout.write(json.dumps({**summary(result), "output": str(output)}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
