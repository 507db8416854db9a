"""Model benchmark: driftloop's network against scikit-learn's HistGradientBoosting and a logistic / linear
regression, on public tables of different shapes (benchmarks/tables.py), on the same split.

Run:  nice .venv/bin/python benchmarks/model_bench.py [--tables flights,fair] [--variants default,old]
                                                     [--out benchmarks/results/model.json]

Split: the time-latest 20% of rows when the table has a timestamp, else a random 25% (seed 0, stratified for
classification); every method fits on the rest and is scored on that holdout. The network trains in one process
(stages 1: a pipeline of any schedule gives the same weights) with the config's defaults plus the variant's
overrides, and carves its own validation split from its training rows. HistGB: scikit-learn's defaults, categorical
columns as native categories. Linear: one-hot categories and standardised numbers (missing values imputed), then
LogisticRegression (C = 1) or Ridge (alpha = 1). Metrics: holdout AUC (classification), RMSE (regression).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table as RichTable
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import mean_squared_error, roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tables import LOADERS  # noqa: E402

from driftloop.config import parse_config  # noqa: E402
from driftloop.training.features import category_strings  # noqa: E402
from driftloop.training.trainer import train  # noqa: E402

SEED = 0
TIME_HOLDOUT = 0.2
RANDOM_HOLDOUT = 0.25
MAX_NATIVE_LEVELS = 250  # below HistGB's 255 bins (one bin is kept for missing values)
# Network variants: overrides of the config's defaults per section. "default" is the shipped configuration; "old"
# the settings before early stopping (issue 13's starting point); the others each change one default.
# "previous" is the default before the wide path, the refit and the small-table batch (December 4, 2026).
PREVIOUS: dict[str, dict[str, Any]] = {"model": {"wide": False, "numerical_embedding": "none", "periodic_sigma": 0.1},
                                       "training": {"refit": False, "min_epoch_steps": 1, "wide_lr_factor": 1.0}}
VARIANTS: dict[str, dict[str, dict[str, Any]]] = {
    "default": {},
    "previous": PREVIOUS,
    "old": {"model": {**PREVIOUS["model"], "scaling": "standard", "embedding_rule": "fixed"},
            "training": {**PREVIOUS["training"], "epochs": 3, "batch_size": 512, "lr_schedule": "constant",
                         "validation_fraction": 0.0, "max_steps": None}},
    "periodic": {"model": {"numerical_embedding": "periodic"}},
    "no_periodic": {"model": {"numerical_embedding": "none"}},
    "standard": {"model": {"scaling": "standard"}},
    "quantile": {"model": {"scaling": "quantile"}},
    "robust": {"model": {"scaling": "robust"}},
    "small": {"model": {"hidden": 32, "blocks": 2}},
    "lr_low": {"training": {"learning_rate": 5e-4}},
    "batch_64": {"training": {"batch_size": 64}},
    "dropout": {"model": {"dropout": 0.2}},
    "quantile_dropout": {"model": {"scaling": "quantile", "dropout": 0.2}},
    "wide_levels_1000": {"model": {"wide_max_levels": 1000}},
    "wide_levels_256": {"model": {"wide_max_levels": 256}},
    "wide_levels_64": {"model": {"wide_max_levels": 64}},
    "wide_levels_32": {"model": {"wide_max_levels": 32}},
    "wide_levels_16": {"model": {"wide_max_levels": 16}},
    "steps_16": {"training": {"min_epoch_steps": 16}},
    "steps_32": {"training": {"min_epoch_steps": 32}},
}


def split(frame: pd.DataFrame, data: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The benchmark's one split: time-later rows held out with a timestamp, a stratified random draw otherwise."""
    if data.get("timestamp"):
        cut = int(len(frame) * (1 - TIME_HOLDOUT))
        return frame.iloc[:cut].reset_index(drop=True), frame.iloc[cut:].reset_index(drop=True)
    stratify = frame[data["target"]] if data["task"] == "classification" else None
    fit, held = train_test_split(frame, test_size=RANDOM_HOLDOUT, random_state=SEED, stratify=stratify)
    return fit.reset_index(drop=True), held.reset_index(drop=True)


def score(task: str, truth: np.ndarray, predicted: np.ndarray) -> float:
    """AUC for classification, RMSE for regression."""
    if task == "classification":
        return float(roc_auc_score(truth, predicted))
    return float(np.sqrt(mean_squared_error(truth, predicted)))


def as_categories(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Categorical columns as strings (driftloop's spelling), missing as a level of its own."""
    out = frame.copy()
    for column in columns:
        out[column] = category_strings(out[column]).fillna("<missing>").astype(str)
    return out


def fit_histgb(fit: pd.DataFrame, held: pd.DataFrame, data: dict[str, Any]) -> np.ndarray:
    """HistGradientBoosting with scikit-learn's defaults; categories as native categorical features."""
    numerical, categorical = data.get("numerical", []), data.get("categorical", [])
    encoder = OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=np.nan)
    prepare = ColumnTransformer([("cat", encoder, categorical), ("num", "passthrough", numerical)])
    # HistGB takes at most 255 levels per native category: a larger one (an id) enters as its ordinal code.
    mask = [fit[c].nunique() <= MAX_NATIVE_LEVELS for c in categorical] + [False] * len(numerical)
    if data["task"] == "classification":
        model = HistGradientBoostingClassifier(categorical_features=mask, random_state=SEED)
    else:
        model = HistGradientBoostingRegressor(categorical_features=mask, random_state=SEED)
    pipeline = make_pipeline(prepare, model)
    columns = categorical + numerical
    pipeline.fit(as_categories(fit, categorical)[columns], fit[data["target"]])
    x = as_categories(held, categorical)[columns]
    return pipeline.predict_proba(x)[:, 1] if data["task"] == "classification" else pipeline.predict(x)


def fit_linear(fit: pd.DataFrame, held: pd.DataFrame, data: dict[str, Any]) -> np.ndarray:
    """Logistic (C = 1) or ridge (alpha = 1) regression on one-hot categories and standardised numbers."""
    numerical, categorical = data.get("numerical", []), data.get("categorical", [])
    numbers = make_pipeline(SimpleImputer(strategy="median"), StandardScaler())
    prepare = ColumnTransformer([("cat", OneHotEncoder(handle_unknown="ignore"), categorical),
                                 ("num", numbers, numerical)])
    model = LogisticRegression(max_iter=2000) if data["task"] == "classification" else Ridge(alpha=1.0)
    pipeline = make_pipeline(prepare, model)
    columns = categorical + numerical
    pipeline.fit(as_categories(fit, categorical)[columns], fit[data["target"]])
    x = as_categories(held, categorical)[columns]
    return pipeline.predict_proba(x)[:, 1] if data["task"] == "classification" else pipeline.predict(x)


def fit_network(fit: pd.DataFrame, held: pd.DataFrame, data: dict[str, Any],
                overrides: dict[str, dict[str, Any]], state_dir: Path) -> tuple[np.ndarray, dict[str, Any]]:
    """driftloop's network with the config defaults and `overrides`, one process; its predictions and run facts."""
    from driftloop.training.artifacts import predict

    raw: dict[str, Any] = {"state_dir": str(state_dir), "data": data,
                           "model": dict(overrides.get("model", {})),
                           "training": {"stages": 1, "seed": SEED, **overrides.get("training", {})}}
    config = parse_config(raw, "benchmark config")
    result = train(fit, config, holdout=held, progress=False)
    facts = {"epochs": len(result.validation_losses) or config.training.epochs, "best_epoch": result.best_epoch,
             "steps": len(result.losses), "refit_steps": result.refit_steps, "seconds": round(result.seconds, 2),
             "validation_rows": result.validation_rows}
    return predict(result.model(), result.spec, held), facts


def run_table(name: str, variants: list[str], console: Console) -> dict[str, Any]:
    """Every method on one table's split."""
    frame, data = LOADERS[name]()
    fit, held = split(frame, data)
    truth = held[data["target"]].to_numpy(dtype="float64")
    row: dict[str, Any] = {"rows": len(frame), "train_rows": len(fit), "holdout_rows": len(held),
                           "task": data["task"], "numerical": len(data.get("numerical", [])),
                           "categorical": len(data.get("categorical", [])),
                           "metric": "auc" if data["task"] == "classification" else "rmse", "methods": {}}
    for method, fn in (("histgb", fit_histgb), ("linear", fit_linear)):
        started = time.perf_counter()
        row["methods"][method] = {"score": score(data["task"], truth, fn(fit, held, data)),
                                  "seconds": round(time.perf_counter() - started, 2)}
    for variant in variants:
        with tempfile.TemporaryDirectory(prefix="model-bench-") as tmp:
            predicted, facts = fit_network(fit, held, data, VARIANTS[variant], Path(tmp))
        row["methods"][f"net:{variant}"] = {"score": score(data["task"], truth, predicted), **facts}
        console.log(f"{name} net:{variant} {row['methods'][f'net:{variant}']}")
    return row


def verdict(row: dict[str, Any], method: str) -> tuple[float, bool]:
    """The gap to HistGB (AUC difference, or RMSE ratio) and whether the issue's goal holds."""
    ours, theirs = row["methods"][method]["score"], row["methods"]["histgb"]["score"]
    if row["metric"] == "auc":
        return ours - theirs, ours >= theirs - 0.005
    return ours / theirs, ours <= 1.02 * theirs


def show(results: dict[str, Any], variants: list[str], console: Console) -> None:
    """One rich table: a row per benchmark table, the metric of each method, the default's gap to HistGB."""
    table = RichTable(title="holdout AUC (classification) / RMSE (regression), same split for every method")
    for column in ("table", "rows", "num/cat", "metric", "histgb", "linear", *[f"net:{v}" for v in variants],
                   "net:default vs histgb", "goal"):
        table.add_column(column, justify="right" if column not in ("table", "metric") else "left")
    for name, row in results["tables"].items():
        gap, met = verdict(row, "net:default") if "net:default" in row["methods"] else (float("nan"), False)
        gap_text = f"{gap:+.3f}" if row["metric"] == "auc" else f"x{gap:.3f}"
        table.add_row(name, f"{row['rows']:,}", f"{row['numerical']}/{row['categorical']}", row["metric"],
                      *[f"{row['methods'][m]['score']:.4f}" for m in ("histgb", "linear")],
                      *[f"{row['methods'][f'net:{v}']['score']:.4f}" for v in variants],
                      gap_text, "met" if met else "missed")
    console.print(table)


def markdown(results: dict[str, Any]) -> str:
    """The table of `show` in Markdown (benchmarks/results/model.md, pasted into benchmarks/README.md)."""
    variants = list(results["variants"])
    head = ["table", "rows", "num/cat", "metric", "HistGB", "linear", *[f"net: {v}" for v in variants],
            "net: default vs HistGB", "goal", "default: epochs (best)", "default: seconds",
            *(["previous: seconds"] if "previous" in variants else [])]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in results["tables"].items():
        methods = row["methods"]
        gap, met = verdict(row, "net:default")
        net = methods["net:default"]
        cells = [name, f"{row['rows']:,}", f"{row['numerical']}/{row['categorical']}", row["metric"],
                 *[f"{methods[m]['score']:.4f}" for m in ("histgb", "linear")],
                 *[f"{methods[f'net:{v}']['score']:.4f}" for v in variants],
                 f"{gap:+.4f}" if row["metric"] == "auc" else f"x{gap:.3f}", "met" if met else "missed",
                 f"{net['epochs']} ({net['best_epoch'] + 1})", f"{net['seconds']:.0f}",
                 *([f"{methods['net:previous']['seconds']:.0f}"] if "previous" in variants else [])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", default=",".join(LOADERS), help="comma-separated names from benchmarks/tables.py")
    parser.add_argument("--variants", default="default,previous", help=f"network variants: {', '.join(VARIANTS)}")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "model.json"))
    args = parser.parse_args(argv)
    console = Console(stderr=True)
    variants = args.variants.split(",")
    started = time.perf_counter()
    results: dict[str, Any] = {"command": " ".join(["benchmarks/model_bench.py", *(argv or sys.argv[1:])]),
                               "variants": {v: VARIANTS[v] for v in variants}, "tables": {}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    for name in args.tables.split(","):
        results["tables"][name] = run_table(name, variants, console)
        results["seconds"] = round(time.perf_counter() - started, 1)
        # Written after every table: a long run that fails later keeps what it measured.
        Path(args.out).write_text(json.dumps(results, indent=1))
        Path(args.out).with_suffix(".md").write_text(markdown(results))
    show(results, variants, Console(width=200))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
