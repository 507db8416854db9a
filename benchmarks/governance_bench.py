"""Governance benchmark: do the default checks pass clean public tables and catch injected defects?

Each table of benchmarks/tables.py is put in order (by its timestamp, else shuffled with a fixed seed) and cut in
two halves: the first is the champion's training data (the guard's reference and the validation reference), the
second the batch offered for training. A stand-in champion (scikit-learn's histogram gradient boosting on the first
half, categories as ordinal codes) gives the guard its predictions. The batch is checked as `driftloop train`
checks it: the GX contract (validation, with the PII scan) against the reference, then the governance checks
(leakage on the trainer's own time-later split, class balance, the guard's label rate and champion score). The
guard's drift check is left out (it needs the monitor's calibration, a minute a table; see benchmarks/README.md).

Defects, each injected into the clean batch alone, with the check that must catch it:

- copied_holdout -> leakage.overlap: 10% of the holdout's rows copied into the training part (with training-period
  times: re-ingested, not late);
- label_feature -> leakage.feature: a new feature, the label plus Gaussian noise of a quarter of its spread;
- flipped_slice -> guard.champion_score: the labels of one slice flipped (rows whose first numerical feature is
  above its median; regression: mirrored around the mean);
- late_rows -> leakage.time: 5% of the training part's rows stamped a day after the holdout's last row (tables
  with a timestamp only);
- email_column -> validation.pii: a text column of e-mail addresses the config does not declare.

    .venv/bin/python benchmarks/governance_bench.py                      # every table, ~N min on 2 cores
    .venv/bin/python benchmarks/governance_bench.py --tables anes96 fair  # some of them
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tables import LOADERS  # noqa: E402

from driftloop.config import Config, parse_config  # noqa: E402
from driftloop.data import split_by_fraction  # noqa: E402
from driftloop.data_checks.balance import champion_agreement, class_balance, label_shift  # noqa: E402
from driftloop.data_checks.findings import Finding  # noqa: E402
from driftloop.data_checks.validate import validate_frame  # noqa: E402
from driftloop.flows.governance import leakage_checks  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "governance.json"
SEED = 0
DEFECTS = {
    "copied_holdout": "leakage.overlap",
    "label_feature": "leakage.feature",
    "flipped_slice": "guard.champion_score",
    "late_rows": "leakage.time",
    "email_column": "validation.pii",
}
COPIED_SHARE = 0.10  # of the holdout's rows copied into the training part
LATE_SHARE = 0.05  # of the training part's rows stamped after the holdout
NOISE = 0.25  # the leaked feature's noise, in the label's standard deviations


def ordered(frame: pd.DataFrame, data: dict[str, Any]) -> pd.DataFrame:
    """The rows in time order with a timestamp, else shuffled (a table without time has no natural order)."""
    if data.get("timestamp"):
        return frame.sort_values(data["timestamp"], kind="stable").reset_index(drop=True)
    return frame.sample(frac=1.0, random_state=SEED).reset_index(drop=True)


def text(column: pd.Series) -> pd.Series:
    """A category column as plain text, missing values as "nan" (string dtypes keep NA through astype(str))."""
    return column.astype(object).map(str)


def encoded(frame: pd.DataFrame, config: Config, codes: dict[str, dict[str, int]]) -> np.ndarray:
    """The features as numbers for the stand-in champion: categories as the reference's codes (unseen: -1)."""
    data = config.data
    columns = {}
    for column in data.features:
        if column in data.categorical:
            columns[column] = text(frame[column]).map(codes[column]).fillna(-1)
        else:
            columns[column] = pd.to_numeric(frame[column], errors="coerce")
    return pd.DataFrame(columns).to_numpy(dtype="float64")


def champion(reference: pd.DataFrame, config: Config) -> Callable[[pd.DataFrame], np.ndarray]:
    """A stand-in champion trained on the reference: a function scoring a batch (P(positive) or the value)."""
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    codes = {c: {v: i for i, v in enumerate(sorted(text(reference[c]).unique()))}
             for c in config.data.categorical}
    y = pd.to_numeric(reference[config.data.target], errors="coerce").to_numpy()
    known = ~np.isnan(y)
    x = encoded(reference, config, codes)[known]
    if config.data.task == "classification":
        classifier = HistGradientBoostingClassifier(random_state=SEED).fit(x, y[known])
        return lambda batch: classifier.predict_proba(encoded(batch, config, codes))[:, 1]
    regressor = HistGradientBoostingRegressor(random_state=SEED).fit(x, y[known])
    return lambda batch: regressor.predict(encoded(batch, config, codes))


def copied_holdout(batch: pd.DataFrame, config: Config, rng: np.random.Generator) -> tuple[pd.DataFrame, int]:
    """COPIED_SHARE of the holdout's rows copied into the training part, given training-period times."""
    fit, holdout = split_by_fraction(batch, config.training.holdout_fraction)
    copies = holdout.sample(n=max(1, round(COPIED_SHARE * len(holdout))), random_state=SEED)
    if config.data.timestamp:
        copies = copies.assign(**{config.data.timestamp: fit[config.data.timestamp].sample(
            n=len(copies), replace=True, random_state=SEED).to_numpy()})
    training = pd.concat([fit, copies], ignore_index=True)
    training = (training.sort_values(config.data.timestamp, kind="stable") if config.data.timestamp
                else training.sample(frac=1.0, random_state=SEED))
    # The trainer's split of the defective batch must keep the same holdout: the training part grew, so the
    # holdout fraction of the whole grows with it.
    return pd.concat([training, holdout], ignore_index=True), len(holdout)


def label_feature(batch: pd.DataFrame, config: Config, rng: np.random.Generator) -> pd.DataFrame:
    """A feature `leak` = the label plus noise of NOISE of its standard deviation."""
    y = pd.to_numeric(batch[config.data.target], errors="coerce")
    return batch.assign(leak=y + rng.normal(0, NOISE * float(y.std()), len(y)))


def flipped_slice(batch: pd.DataFrame, config: Config, rng: np.random.Generator) -> pd.DataFrame:
    """The labels of the rows whose first numerical feature is above its median flipped (mirrored: regression)."""
    column = config.data.numerical[0]
    values = pd.to_numeric(batch[column], errors="coerce")
    inside = (values > values.median()).to_numpy()
    y = pd.to_numeric(batch[config.data.target], errors="coerce")
    flipped = 1 - y if config.data.task == "classification" else 2 * y.mean() - y
    out = batch.copy()
    out[config.data.target] = np.where(inside, flipped, y).astype(batch[config.data.target].dtype)
    return out


def late_rows(batch: pd.DataFrame, config: Config, rng: np.random.Generator) -> pd.DataFrame | None:
    """LATE_SHARE of the training part's rows stamped a day after the holdout's last row (None without time)."""
    column = config.data.timestamp
    if not column:
        return None
    fit, holdout = split_by_fraction(batch, config.training.holdout_fraction)
    late = rng.choice(len(fit), size=max(1, round(LATE_SHARE * len(fit))), replace=False)
    fit = fit.copy()
    stamps = fit[column].copy()
    stamps.iloc[late] = pd.to_datetime(holdout[column], utc=True).max() + pd.Timedelta(days=1)
    fit[column] = stamps
    return pd.concat([fit, holdout], ignore_index=True)


def email_column(batch: pd.DataFrame, config: Config, rng: np.random.Generator) -> pd.DataFrame:
    """A text column `contact` of e-mail addresses, not declared in the config."""
    return batch.assign(contact=[f"person{i}@example.org" for i in range(len(batch))])


def caught(batch: pd.DataFrame, reference: pd.DataFrame, predict: Callable[[pd.DataFrame], np.ndarray], config: Config,
           holdout_rows: int | None = None) -> tuple[list[str], list[str]]:
    """The checks that block the batch and those that only warn, named as in the findings ("validation.pii" for
    the PII scan, "validation.<expectation>" for the rest of the contract)."""
    if holdout_rows is not None:
        config = config.model_copy(update={"training": config.training.model_copy(
            update={"holdout_fraction": holdout_rows / len(batch)})})
    report = validate_frame(batch, config, reference, name="bench")
    blocks = sorted({"validation.pii" if "regex" in f.expectation else f"validation.{f.expectation}"
                     for f in report.failed})
    findings: list[Finding] = leakage_checks(config, batch, None)
    findings += [f for f in (class_balance(batch, config), label_shift(batch, reference, config),
                             champion_agreement(batch, predict(batch), "bench", config)) if f is not None]
    blocks += sorted({f.check for f in findings if f.blocking})
    return blocks, sorted({f.check for f in findings if not f.blocking})


def run_table(name: str, state: Path) -> dict[str, Any]:
    """The clean batch and every defect of one table: what blocked, what warned, the figures."""
    started = time.perf_counter()
    frame, data = LOADERS[name]()
    config = parse_config({"data": data, "state_dir": str(state / name)}, name)
    frame = ordered(frame, data)
    reference, batch = frame.iloc[: len(frame) // 2].reset_index(drop=True), frame.iloc[len(frame) // 2:]
    batch = batch.reset_index(drop=True)
    predict = champion(reference, config)
    blocks, warns = caught(batch, reference, predict, config)
    result: dict[str, Any] = {"rows": len(frame), "columns": len(config.data.features), "task": config.data.task,
                              "timestamp": bool(config.data.timestamp),
                              "clean": {"blocked": bool(blocks), "blocks": blocks, "warnings": warns}, "defects": {}}
    rng = np.random.default_rng(SEED)
    for defect, check in DEFECTS.items():
        holdout_rows = None
        if defect == "copied_holdout":
            variant, holdout_rows = copied_holdout(batch, config, rng)
        else:
            variant = globals()[defect](batch, config, rng)
        if variant is None:
            result["defects"][defect] = {"applicable": False}
            continue
        if defect == "label_feature":
            variant_config = parse_config({"data": {**data, "numerical": data["numerical"] + ["leak"]},
                                           "state_dir": str(state / name)}, name)
            reference_leak = label_feature(reference, config, rng)
            blocks, warns = caught(variant, reference_leak, predict, variant_config)
        else:
            blocks, warns = caught(variant, reference, predict, config, holdout_rows)
        result["defects"][defect] = {"applicable": True, "check": check, "caught": check in blocks,
                                     "blocks": blocks, "warnings": warns}
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def summary(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Clean tables blocked, and defects caught by their own check, over every table."""
    cases = [d for r in results.values() for d in r["defects"].values() if d["applicable"]]
    per_check: dict[str, list[int]] = {}
    for defect, check in DEFECTS.items():
        hits = [r["defects"][defect]["caught"] for r in results.values() if r["defects"][defect]["applicable"]]
        per_check[f"{defect} -> {check}"] = [sum(hits), len(hits)]
    return {"clean_blocked": sum(r["clean"]["blocked"] for r in results.values()), "tables": len(results),
            "defects_caught": sum(d["caught"] for d in cases), "defects": len(cases), "per_check": per_check}


def print_table(results: dict[str, dict[str, Any]], totals: dict[str, Any]) -> None:
    """One row per table: its shape, the clean verdict, and each defect caught (yes / NO / n/a)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Governance defaults on public tables")
    for heading in ["table", "rows", "features", "task", "clean"] + list(DEFECTS):
        table.add_column(heading)
    for name, r in results.items():
        clean = "passes" + (f" (warns {', '.join(r['clean']['warnings'])})" if r["clean"]["warnings"] else "")
        if r["clean"]["blocked"]:
            clean = "BLOCKED: " + ", ".join(r["clean"]["blocks"])
        cells = []
        for defect in DEFECTS:
            d = r["defects"][defect]
            cells.append("n/a" if not d["applicable"] else "yes" if d["caught"] else
                         "NO" + (f" ({', '.join(d['blocks'])})" if d["blocks"] else ""))
        table.add_row(name, f"{r['rows']:,}", str(r["columns"]), r["task"], clean, *cells)
    console = Console(width=200)
    console.print(table)
    console.print(f"clean tables blocked: {totals['clean_blocked']} of {totals['tables']}; defects caught by their "
                  f"own check: {totals['defects_caught']} of {totals['defects']}")
    for label, (hit, total) in totals["per_check"].items():
        console.print(f"  {label}: {hit} of {total}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", nargs="*", default=list(LOADERS), choices=list(LOADERS))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    os.environ.setdefault("DRIFTLOOP_PII_KEY", "benchmark-key-not-secret")
    results = {}
    with tempfile.TemporaryDirectory() as state:
        for name in args.tables:
            results[name] = run_table(name, Path(state))
            print(f"{name}: {results[name]['seconds']} s", file=sys.stderr)
            args.out.parent.mkdir(parents=True, exist_ok=True)  # what is done so far survives a failing table
            args.out.write_text(json.dumps({"summary": summary(results), "tables": results}, indent=2) + "\n")
    totals = summary(results)
    print_table(results, totals)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"summary": totals, "tables": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
