"""The HTTP model server: /predict, /labels, /healthz, /metrics, and hot swap of the champion model.

Where the champion comes from is the caller's business (the registry): the app gets two callables,
a cheap version probe polled every `serving.reload_interval_s` and a loader called when the probed
version changes. A new model is smoke-tested before one reference assignment puts it in service, so
requests in flight finish on the model they started with and none fails during a swap.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from driftloop.config import Config
from driftloop.metrics import ServingMetrics, serving_metrics
from driftloop.state import prediction_log_path
from serving.prediction_log import PredictionLog, UnknownPredictionIds
from serving.validation import InvalidRequest, feature_frame, parse_labels, parse_rows
from training.artifacts import LoadedModel

ModelSource = Callable[[], LoadedModel]
VersionProbe = Callable[[], str | None]

# Recent logged rows a new model must score before it serves; a handful catches a broken model.
SMOKE_ROWS = 8

logger = logging.getLogger("driftloop.serving")


class PredictRequest(BaseModel):
    """Body of POST /predict; rows are checked against the data contract by serving.validation."""

    rows: list[Any]


class LabelsRequest(BaseModel):
    """Body of POST /labels: [{"prediction_id": int, "label": number}, ...]."""

    labels: list[Any]


@dataclass(frozen=True)
class Served:
    """The model in service, the version it reports and the probed version it was loaded for."""

    model: LoadedModel
    version: str
    probed: str


class SmokeTestError(RuntimeError):
    """A newly loaded model failed to score sample rows."""


def default_row(model: LoadedModel) -> dict[str, Any]:
    """A row of typical values from the model's own spec: training means, the first known category."""
    row: dict[str, Any] = dict(zip(model.spec.numerical, model.spec.means, strict=True))
    for column in model.spec.categorical:
        known = model.spec.vocab.get(column) or [None]
        row[column] = known[0]
    return row


def smoke_test(model: LoadedModel, config: Config, recent: pd.DataFrame) -> None:
    """Score recent rows (or one default row) with `model`; raise SmokeTestError if anything is off."""
    needed = model.spec.numerical + model.spec.categorical
    unknown = sorted(set(needed) - set(config.data.features))
    if unknown:
        raise SmokeTestError(f"model needs column(s) {unknown} that the data contract does not list")
    defaults = default_row(model)
    if recent.empty:
        sample = pd.DataFrame([defaults])
    else:
        sample = pd.DataFrame({c: recent[c] if c in recent.columns else defaults[c] for c in needed},
                              index=recent.index)
    out = np.asarray(model.predict(sample), dtype="float64")
    if out.shape != (len(sample),):
        raise SmokeTestError(f"expected {len(sample)} predictions, got shape {out.shape}")
    if not np.isfinite(out).all():
        raise SmokeTestError("model returned non-finite predictions")
    if config.data.task == "classification" and ((out < 0) | (out > 1)).any():
        raise SmokeTestError("classification model returned values outside [0, 1]")


class Champion:
    """Holds the served model and keeps it in step with the registry's champion."""

    def __init__(self, config: Config, load: ModelSource, probe: VersionProbe, log: PredictionLog,
                 metrics: ServingMetrics) -> None:
        self.config = config
        self._load = load
        self._probe = probe
        self._log = log
        self._metrics = metrics
        self._refresh_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failed: str | None = None  # last version that failed, so its traceback is logged once
        self.current: Served | None = None  # replaced, never mutated: readers take it once per request

    def refresh(self) -> bool:
        """Poll once; load, smoke-test and swap in a new champion. True if the served model changed."""
        with self._refresh_lock:
            try:
                probed = self._probe()
            except Exception as error:  # the registry may be briefly unreachable: keep serving
                logger.warning("champion version probe failed: %s", error)
                return False
            served = self.current
            if probed is None or (served is not None and probed == served.probed):
                return False
            try:
                model = self._load()
                smoke_test(model, self.config, self._recent_rows())
            except Exception as error:  # any failure leaves the old model serving
                self._metrics.swap_failures.inc()
                if self._failed != probed:
                    logger.exception("loading champion version %s failed; still serving %s", probed,
                                     served.version if served else "nothing")
                else:
                    logger.debug("champion version %s still fails to load: %s", probed, error)
                self._failed = probed
                return False
            self._swap(Served(model, str(model.version or probed), probed))
            return True

    def _swap(self, new: Served) -> None:
        """Put `new` in service (one assignment) and update the metrics."""
        old, self.current = self.current, new
        self._failed = None
        info = self._metrics.model_info
        info.labels(self.config.model.name, new.version).set(1)
        if old is not None:
            self._metrics.swaps.inc()
            if old.version != new.version:
                info.remove(self.config.model.name, old.version)
        logger.info("now serving %s version %s", self.config.model.name, new.version)

    def _recent_rows(self) -> pd.DataFrame:
        """The last few logged rows, for the smoke test; empty if the log has none or cannot be read."""
        try:
            last = self._log.last_id()
            return self._log.read(first_id=max(1, last - SMOKE_ROWS + 1)) if last else pd.DataFrame()
        except Exception as error:  # the smoke test falls back to a default row
            logger.warning("cannot read recent rows from the prediction log: %s", error)
            return pd.DataFrame()

    def start(self) -> None:
        """Start the background poller."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._poll, name="champion-poller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the poller and wait for a load in progress to finish."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _poll(self) -> None:
        while not self._stop.wait(self.config.serving.reload_interval_s):
            self.refresh()


def _no_model(config: Config) -> str:
    return (f"no {config.model.name} champion is loaded yet; register one (driftloop train) and the server "
            f"will pick it up within serving.reload_interval_s ({config.serving.reload_interval_s} s)")


def create_app(config: Config, load_champion: ModelSource, champion_version: VersionProbe,
               log: PredictionLog | None = None) -> FastAPI:
    """The model server app; the champion is loaded at startup and hot-swapped by a background poller."""
    owns_log = log is None
    log = log or PredictionLog(prediction_log_path(config), pii=config.data.pii)
    metrics = serving_metrics()
    champion = Champion(config, load_champion, champion_version, log, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        torch.set_num_threads(1)  # requests score in parallel threads; 2 cores must not be oversubscribed
        champion.refresh()
        champion.start()
        try:
            yield
        finally:
            champion.stop()
            if owns_log:
                log.close()

    app = FastAPI(title="driftloop model server", lifespan=lifespan)
    app.state.champion = champion
    app.state.metrics = metrics
    app.state.log = log

    @app.middleware("http")
    async def measure_predict(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        """Latency and status of every /predict request, rejected ones included."""
        if request.url.path != "/predict":
            return await call_next(request)
        start = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            metrics.latency.observe(time.perf_counter() - start)
            metrics.requests.labels(str(status)).inc()

    @app.post("/predict")
    def predict(body: PredictRequest) -> dict[str, Any]:
        """Score rows with the champion and log them; a sync endpoint, so scoring runs off the event loop."""
        served = champion.current
        if served is None:
            raise HTTPException(503, _no_model(config))
        try:
            batch = parse_rows(body.rows, config.data, config.serving.max_batch_rows)
        except InvalidRequest as invalid:
            raise HTTPException(422, invalid.errors) from None
        predictions = np.asarray(served.model.predict(feature_frame(batch.rows, config.data)), dtype="float64")
        if not np.isfinite(predictions).all():
            raise HTTPException(500, f"model version {served.version} returned non-finite predictions")
        values = predictions.tolist()
        try:
            ids = log.append(batch.rows, values, served.version, batch.event_times)
        except sqlite3.Error as error:  # no id, no answer: a prediction that cannot be labelled is not served
            raise HTTPException(503, f"prediction log unavailable: {error}") from None
        metrics.prediction_rows.labels(served.version).inc(len(values))
        return {"predictions": values, "model_version": served.version, "prediction_ids": ids}

    @app.post("/labels")
    def labels(body: LabelsRequest) -> dict[str, int]:
        """Attach delayed labels to logged predictions, all or nothing."""
        try:
            ids, values = parse_labels(body.labels, config.data.task, config.serving.max_batch_rows)
            return {"updated": log.attach_labels(ids, values)}
        except InvalidRequest as invalid:
            raise HTTPException(422, invalid.errors) from None
        except UnknownPredictionIds as unknown:
            missing = set(unknown.ids)
            errors = [{"row": i, "field": "prediction_id", "error": f"unknown prediction id {pid}"}
                      for i, pid in enumerate(ids) if pid in missing]
            raise HTTPException(422, errors) from None

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        """200 with the served version, or 503 while no model is loaded."""
        served = champion.current
        if served is None:
            return JSONResponse({"status": "unavailable", "model_version": None, "detail": _no_model(config)},
                                status_code=503)
        return JSONResponse({"status": "ok", "model_version": served.version})

    @app.get("/metrics")
    def prometheus() -> Response:
        """The server's own metrics in Prometheus text format."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app

