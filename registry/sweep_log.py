"""Recording a pipeline sweep (`driftloop tune-pipeline`) in MLflow: one run per sweep, every row, the best set-up."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from driftloop.config import Config
from driftloop.registry.store import experiment_id, mlflow_client

if TYPE_CHECKING:
    from driftloop.training.sweep import Sweep

KIND_TAG = "driftloop.kind"
SWEEP_KIND = "pipeline-sweep"
TABLE_ARTIFACT = "sweep.json"


def row_prefix(stages: int, schedule: str, microbatches: int) -> str:
    """The metric prefix of one row, e.g. 'p2.1F1B.m8'."""
    return f"p{stages}.{schedule if schedule != '-' else 'one_process'}.m{microbatches}"


def log_sweep(config: Config, sweep: Sweep) -> str:
    """One run in the config's experiment, tagged driftloop.kind=pipeline-sweep: the whole table as a JSON
    artifact, each row's figures as metrics, the best configuration as params and tags. Returns the run id."""
    import mlflow

    client = mlflow_client(config)
    with mlflow.start_run(experiment_id=experiment_id(config, client), run_name="pipeline-sweep") as run:
        mlflow.set_tag(KIND_TAG, SWEEP_KIND)
        mlflow.log_params({"sweep.steps": sweep.steps, "sweep.batch_size": sweep.batch_size,
                           "sweep.model_parameters": sweep.model_parameters, "sweep.rows": len(sweep.rows),
                           "model.hidden": config.model.hidden, "model.blocks": config.model.blocks,
                           "training.threads_per_rank": config.training.threads_per_rank})
        mlflow.log_dict(sweep.to_json(), TABLE_ARTIFACT)
        figures: dict[str, float] = {}
        for row in sweep.rows:
            if not row.ok:
                continue
            prefix = row_prefix(row.stages, row.schedule, row.microbatches)
            for name in ("samples_per_second", "step_seconds", "efficiency", "bubble", "imbalance",
                         "peak_state_bytes", "peak_rss_bytes"):
                figures[f"{prefix}.{name}"] = float(getattr(row, name))
        best = sweep.best
        if best is not None:
            mlflow.log_params({"best.stages": best.stages, "best.schedule": best.schedule,
                               "best.microbatches": best.microbatches, "best.ranks": best.ranks})
            mlflow.set_tags({"best.stages": str(best.stages), "best.schedule": best.schedule,
                             "best.microbatches": str(best.microbatches)})
            figures.update({"best_samples_per_second": best.samples_per_second,
                            "best_efficiency": best.efficiency})
        mlflow.log_metrics({k: v for k, v in figures.items() if math.isfinite(v)})
    return run.info.run_id
