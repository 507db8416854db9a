"""The HTTP model server: /predict, /labels, /healthz, /metrics, /admin/*, and hot swap of the champion.

Where models come from is the caller's business (the registry): the app gets, per alias, a cheap version
probe polled every `serving.reload_interval_s` and a loader called when the probed version changes. A new
model is loaded beside the old one, smoke-tested on recently logged rows and put in service by one
reference assignment, so requests in flight finish on the model they started with and none fails during a
swap; a model that fails to load or to pass the smoke test is never served (the old one keeps serving).

Shadow mode (`serving.shadow`): the `challenger` alias, when there is one and it is not the champion, scores
the same rows in the same request, after the champion's answer is computed; its outputs are logged beside
the champion's. It runs in the request rather than in a background worker so that the log row is written
once, complete, in the same commit (a worker would need a second write per row, and a queue that must never
drop); it costs one more forward pass per request, about 0.8 ms for a 1-row request on a CPU
(benchmarks/serve_bench.py), and nothing when shadow mode is off. A failing challenger never fails a request:
its columns stay null and driftloop_shadow_failures_total counts it.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
import torch
from fastapi import Body, FastAPI, Header, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from driftloop.config import Config
from driftloop.errors import RegistryError
from driftloop.metrics import ServingMetrics, serving_metrics
from driftloop.pii import pii_policy
from driftloop.serving.admin import admin_token, authorized, labels_token, token_principal
from driftloop.serving.guard import SCORING_PATHS, RequestGuard
from driftloop.serving.invocations import invocations_router
from driftloop.serving.oip import oip_router
from driftloop.serving.prediction_log import AlreadyLabelled, LogBase, LogUnavailable, UnknownPredictionIds, open_log
from driftloop.serving.protocol import Answer, RowsOf, route
from driftloop.serving.quantization import frame_rows, quantize_if_close
from driftloop.serving.validation import (
    InvalidRequest,
    TimeBounds,
    check_known_categories,
    json_type,
    parse_labels,
    parse_rows,
)
from driftloop.training.artifacts import LoadedModel

ModelSource = Callable[[], LoadedModel]
VersionProbe = Callable[[], str | None]
# registry rollback(config, to_version=None) -> RollbackResult (from_version, to_version, reason), bound to a
# config; raises driftloop.errors.RegistryError when there is nothing to roll back to.
Rollback = Callable[..., Any]
Role = Literal["champion", "challenger"]

# Recent logged rows a new model must score before it serves; a handful catches a broken model.
SMOKE_ROWS = 8
# Scoring threads per request: requests already run in parallel in the threadpool, one per core is enough.
TORCH_THREADS = 1

logger = logging.getLogger("driftloop.serving")


# Documents the body of POST /predict, which the endpoint parses itself (see request_rows), and its answers.
PREDICT_OPENAPI = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "required": ["rows"],
    "properties": {"rows": {"type": "array", "items": {"type": "object"}}}}}}},
    "responses": {
        "200": {"description": "One prediction per row (classification: the probability of the positive class)",
                "content": {"application/json": {"schema": {
                    "type": "object", "required": ["predictions", "model_version", "prediction_ids"],
                    "properties": {"predictions": {"type": "array", "items": {"type": "number"}},
                                   "model_version": {"type": "string"},
                                   "prediction_ids": {"type": "array", "items": {"type": "integer"}}}}}}},
        "422": {"description": "Invalid rows: `detail` lists each row and field at fault"},
        "503": {"description": "No model loaded yet, or the prediction log unavailable (nothing written)"},
        "507": {"description": "The prediction log's disk is full (nothing written)"}}}


def request_rows(body: bytes) -> list[Any]:
    """The `rows` list of a /predict body, or HTTPException 422 naming what is wrong with the body."""
    return request_list(body, "rows", '{"rows": [{column: value, ...}, ...]}', "row objects")


def request_list(body: bytes, key: str, shape: str, items: str) -> list[Any]:
    """The list under `key` of a JSON object body, or HTTPException 422 naming what is wrong with the body.

    Python's json accepts NaN and Infinity, so such values reach validation and get a 422 naming the field.
    Nesting deeper than the parser's recursion limit (about 1,000 levels; the contract needs 3) is a 422 too.
    """
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise HTTPException(422, [{"row": None, "field": "body", "error": f"not valid JSON: {error}"}]) from None
    except RecursionError:
        raise HTTPException(422, [{"row": None, "field": "body",
                                   "error": f"JSON nested too deeply; expected {shape}"}]) from None
    if not isinstance(payload, dict) or key not in payload:
        raise HTTPException(422, [{"row": None, "field": key, "error": f"expected a JSON object {shape}"}])
    value = payload[key]
    if not isinstance(value, list):
        raise HTTPException(422, [{"row": None, "field": key,
                                   "error": f"expected an array of {items}, got {json_type(value)}"}])
    return value


class RollbackRequest(BaseModel):
    """Body of POST /admin/rollback (optional): the version to go back to; none: the registry's choice."""

    to_version: str | None = None


@dataclass(frozen=True)
class LastKnownGood:
    """A local copy of the last champion served (registry/trust.py): `load` it when the champion cannot be loaded
    while nothing is served yet; `keep` a newly served champion's version as the copy."""

    load: ModelSource
    keep: Callable[[str], Any]


@dataclass(frozen=True)
class AliasSource:
    """How to follow one registry alias: a cheap version probe, a loader of the version it names, and optionally
    the last-known-good copy to fall back on."""

    load: ModelSource
    probe: VersionProbe
    last_known_good: LastKnownGood | None = None


@dataclass(frozen=True)
class Served:
    """A model in service, the version it reports, the probed version it was loaded for, why int8 or not, and why
    it is a degraded fallback (the last-known-good copy; empty when it is not)."""

    model: LoadedModel
    version: str
    probed: str
    quantize_reason: str = ""
    degraded: str = ""


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
    rows = [defaults] if recent.empty else [
        {c: defaults[c] if c not in recent.columns else row[c] for c in needed}
        for row in frame_rows(recent, model)]
    out = np.asarray(model.predict_rows(rows), dtype="float64")  # the path /predict takes
    if out.shape != (len(rows),):
        raise SmokeTestError(f"expected {len(rows)} predictions, got shape {out.shape}")
    if not np.isfinite(out).all():
        raise SmokeTestError("model returned non-finite predictions")
    if config.data.task == "classification" and ((out < 0) | (out > 1)).any():
        raise SmokeTestError("classification model returned values outside [0, 1]")


class AliasSlot:
    """Holds the model of one alias and keeps it in step with the registry.

    The champion slot counts failures in driftloop_model_swap_failures_total and may quantize; the challenger
    slot (shadow mode) empties itself when the alias vanishes or names the champion's version.
    """

    def __init__(self, role: Role, config: Config, source: AliasSource, log: LogBase,
                 metrics: ServingMetrics) -> None:
        self.role = role
        self.config = config
        self._source = source
        self._log = log
        self._metrics = metrics
        self._failed: str | None = None  # last version that failed, so its traceback is logged once
        self._fell_back = False  # the last-known-good copy is tried once
        self.current: Served | None = None  # replaced, never mutated: readers take it once per request

    def refresh(self, exclude: str | None = None) -> bool:
        """Poll once; load, smoke-test and swap in a new version. True if the served model changed.

        `exclude`: a version this slot must not serve (the champion's, for the challenger slot).
        """
        try:
            probed = self._source.probe()
        except Exception as error:  # the registry may be briefly unreachable: keep serving
            logger.warning("%s version probe failed: %s", self.role, error)
            return self._fall_back(f"the registry cannot be read: {error}")
        if self.role == "champion" and probed is not None and probed.isdigit():
            self._metrics.alias_version.labels(self.config.model.name).set(int(probed))
        served = self.current
        if probed is None or probed == exclude:
            if self.role == "challenger" and served is not None:
                self.current = None
                logger.info("shadow mode: no challenger apart from the champion; shadow scoring stops")
                return True
            return False
        if served is not None and probed == served.probed:
            return False
        try:
            model = self._source.load()
            smoke_test(model, self.config, self._recent_rows())
        except Exception as error:  # any failure leaves the old model serving
            self._count_failure()
            if self._failed != probed:
                logger.exception("loading %s version %s failed; still serving %s", self.role, probed,
                                 served.version if served else "nothing")
            else:
                logger.debug("%s version %s still fails to load: %s", self.role, probed, error)
            self._failed = probed
            return self._fall_back(f"version {probed} cannot be loaded: {error}")
        reason = ""
        if self.role == "champion" and self.config.serving.quantize:
            decision = quantize_if_close(model, self.config, self._log)
            model, reason = decision.model, decision.reason
        self._swap(Served(model, str(model.version or probed), probed, reason))
        return True

    def _fall_back(self, why: str) -> bool:
        """While nothing is served, serve the last-known-good copy (marked degraded) if there is one; True if so."""
        fallback = self._source.last_known_good
        if self.current is not None or fallback is None or self._fell_back:
            return False
        self._fell_back = True
        try:
            model = fallback.load()
            smoke_test(model, self.config, self._recent_rows())
        except Exception as error:
            logger.error("no model to serve: %s; the last-known-good copy cannot be served either: %s", why, error)
            return False
        logger.warning("serving the last-known-good copy of version %s (degraded): %s", model.version, why)
        self._swap(Served(model, str(model.version), "", degraded=why))
        return True

    def _count_failure(self) -> None:
        if self.role == "champion":
            self._metrics.swap_failures.inc()
        else:
            self._metrics.shadow_failures.labels("load").inc()

    def _swap(self, new: Served) -> None:
        """Put `new` in service (one assignment) and update the metrics."""
        old, self.current = self.current, new
        self._failed = None
        if self.role == "champion":
            info, name = self._metrics.model_info, self.config.model.name
            info.labels(name, new.version).set(1)
            self._metrics.quantized.labels(name).set(1 if new.model.quantized else 0)
            self._metrics.degraded.labels(name).set(1 if new.degraded else 0)
            if new.version.isdigit():
                self._metrics.served_version.labels(name).set(int(new.version))
            self._keep(new)
            if old is not None:
                self._metrics.swaps.inc()
                if old.version != new.version:
                    info.remove(name, old.version)
        logger.info("now serving %s %s version %s%s", self.role, self.config.model.name, new.version,
                    " (int8)" if new.model.quantized else "")

    def _keep(self, new: Served) -> None:
        """Keep a champion put in service from the registry as the last-known-good copy; a failure is only logged."""
        fallback = self._source.last_known_good
        if fallback is None or new.degraded:
            return
        try:
            fallback.keep(new.probed)
        except Exception as error:
            logger.warning("cannot keep version %s as the last-known-good copy: %s", new.probed, error)

    def _recent_rows(self) -> pd.DataFrame:
        """The last few logged rows, for the smoke test; empty if the log has none or cannot be read."""
        try:
            last = self._log.last_id()
            return self._log.read(first_id=max(1, last - SMOKE_ROWS + 1)) if last else pd.DataFrame()
        except Exception as error:  # the smoke test falls back to a default row
            logger.warning("cannot read recent rows from the prediction log: %s", error)
            return pd.DataFrame()


class Models:
    """The champion slot, the optional challenger slot, and the background poller that refreshes both."""

    def __init__(self, config: Config, champion: AliasSlot, challenger: AliasSlot | None) -> None:
        self.config = config
        self.champion = champion
        self.challenger = challenger
        self._lock = threading.Lock()  # one refresh at a time: the poller and /admin/reload
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh(self) -> bool:
        """Poll both aliases now (champion first); True if the champion's served model changed."""
        with self._lock:
            changed = self.champion.refresh()
            if self.challenger is not None:
                served = self.champion.current
                self.challenger.refresh(exclude=served.probed if served else None)
            return changed

    def start(self) -> None:
        """Start the background poller."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._poll, name="model-poller", daemon=True)
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


class PredictMetrics:
    """Pure ASGI middleware: latency and status of every scoring request (/predict, OIP infer, /invocations),
    rejected ones included.

    (Starlette's @app.middleware("http") wraps each request in extra tasks and streams; this costs nothing.)
    """

    def __init__(self, app: ASGIApp, metrics: ServingMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or route(scope["path"]) not in SCORING_PATHS:
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.latency.observe(time.perf_counter() - start)
            self.metrics.requests.labels(str(status)).inc()


def _no_model(config: Config) -> str:
    return (f"no {config.model.name} champion is loaded yet; register one (driftloop train) and the server "
            f"will pick it up within serving.reload_interval_s ({config.serving.reload_interval_s} s)")


def _rows_naming(ids: list[int], bad: list[int], error: str) -> list[dict[str, Any]]:
    """422/409 details: each request row whose prediction id is in `bad`, with `error` formatted with the id."""
    wanted = set(bad)
    return [{"row": i, "field": "prediction_id", "error": error.format(pid)} for i, pid in enumerate(ids)
            if pid in wanted]


def shadow_scores(slot: AliasSlot | None, rows: list[dict[str, Any]],
                  metrics: ServingMetrics) -> tuple[str | None, list[float] | None]:
    """(challenger version, its predictions) for rows already answered by the champion; (None, None) if none.

    Never raises: a failing challenger is logged and counted, and the request goes on without it.
    """
    shadow = slot.current if slot is not None else None
    if shadow is None:
        return None, None
    try:
        values = np.asarray(shadow.model.predict_rows(rows), dtype="float64")
        if values.shape != (len(rows),) or not np.isfinite(values).all():
            raise SmokeTestError(f"shape {values.shape}, non-finite values: {int((~np.isfinite(values)).sum())}")
    except Exception as error:
        metrics.shadow_failures.labels("score").inc()
        logger.warning("shadow scoring by challenger version %s failed: %s", shadow.version, error)
        return None, None
    metrics.shadow_rows.labels(shadow.version).inc(len(rows))
    return shadow.version, values.tolist()


def create_app(config: Config, load_champion: ModelSource, champion_version: VersionProbe,
               log: LogBase | None = None, *, challenger: AliasSource | None = None,
               rollback: Rollback | None = None, host: str | None = None,
               last_known_good: LastKnownGood | None = None) -> FastAPI:
    """The model server app; models are loaded at startup and hot-swapped by a background poller.

    `challenger` is followed only with serving.shadow; `rollback` backs POST /admin/rollback (501 without it);
    `host`: the address the server binds (default serving.host), which sets the default serving.allowed_hosts;
    `last_known_good`: the local copy served (degraded) when the champion cannot be loaded at start.
    """
    owns_log = log is None
    log = log or open_log(config, pii=pii_policy(config))  # serving.log_uri: the SQLite file or PostgreSQL
    metrics = serving_metrics()
    log.on_checkpoint_error = metrics.log_checkpoint_errors.inc  # the SQLite log's checkpoint thread counts here
    champion = AliasSlot("champion", config, AliasSource(load_champion, champion_version, last_known_good), log,
                         metrics)
    shadow = AliasSlot("challenger", config, challenger, log, metrics) if config.serving.shadow and challenger \
        else None
    models = Models(config, champion, shadow)
    token = admin_token(config)  # created on first start when no token is configured
    label_token = labels_token(config)  # likewise
    label_principal = token_principal("labels-token", label_token)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        torch.set_num_threads(TORCH_THREADS)  # requests score in parallel threads: never oversubscribe the cores
        models.refresh()
        # MLflow, torch and pandas leave about a million long-lived objects behind; a full collection scanning
        # them pauses every request in flight. Freeze them out of the collector once they are loaded.
        gc.collect()
        gc.freeze()
        models.start()
        try:
            yield
        finally:
            models.stop()
            if owns_log:
                log.close()

    app = FastAPI(title="driftloop model server", lifespan=lifespan)
    # Added first, so it runs inside PredictMetrics: its refusals of /predict are counted by status as well.
    app.add_middleware(RequestGuard, serving=config.serving, bind_host=host or config.serving.host, metrics=metrics)
    app.add_middleware(PredictMetrics, metrics=metrics)
    app.state.champion = champion
    app.state.challenger = shadow
    app.state.models = models
    app.state.metrics = metrics
    app.state.log = log

    def require_admin(header: str | None) -> None:
        if not authorized(header, token):
            metrics.admin_unauthorized.inc()
            raise HTTPException(401, "admin endpoints need 'Authorization: Bearer <token>' (the token: "
                                "$DRIFTLOOP_ADMIN_TOKEN, serving.admin_token_file or state_dir/serving/admin.token)",
                                headers={"WWW-Authenticate": "Bearer"})

    def served_state(changed: bool) -> dict[str, Any]:
        served, challenger_served = champion.current, shadow.current if shadow else None
        return {"model_version": served.version if served else None, "changed": changed,
                "quantized": bool(served and served.model.quantized),
                "challenger_version": challenger_served.version if challenger_served else None}

    def score(served: Served, rows_of: RowsOf) -> tuple[list[float], list[tuple]]:
        """Parse (`rows_of`), validate and score a request's rows (champion, then challenger in shadow mode) and
        prepare its log records; HTTPException on bad input. Runs in the threadpool: none of it holds up the event
        loop."""
        rows = rows_of()
        try:
            batch = parse_rows(rows, config.data, config.serving.max_batch_rows, TimeBounds.now(config.serving))
            if config.serving.unknown_category == "reject":
                check_known_categories(batch.rows, served.model.spec)
        except InvalidRequest as invalid:
            raise HTTPException(422, invalid.errors) from None
        predictions = np.asarray(served.model.predict_rows(batch.rows), dtype="float64")
        if not np.isfinite(predictions).all():
            raise HTTPException(500, f"model version {served.version} returned non-finite predictions")
        values = predictions.tolist()
        shadow_version, shadow_values = shadow_scores(shadow, batch.rows, metrics)  # after the answer exists
        records = log.records(batch.rows, values, served.version, batch.event_times, shadow_version, shadow_values)
        return values, records

    @app.post("/predict", openapi_extra=PREDICT_OPENAPI)
    async def predict(request: Request) -> Response:
        """Score rows with the champion, log them, answer once the log's commit holding them is on disk.
        \f
        Async on purpose: parsing, scoring and preparing the log rows run in the threadpool, and waiting for the
        group commit's fsync holds no thread at all. Scoring on the loop instead was measured with
        benchmarks/serve_bench.py: it wins at concurrency 1 but serialises all scoring on one thread and doubles p99
        at 32. The body is parsed with json.loads, not pydantic: one pass over the rows instead of two.
        """
        body = await request.body()
        answer = await score_rows(lambda: request_rows(body))
        return JSONResponse({"predictions": answer.predictions, "model_version": answer.model_version,
                             "prediction_ids": answer.prediction_ids})

    async def score_rows(rows_of: RowsOf) -> Answer:
        """The one scoring path of every protocol: parse, validate and score in the threadpool, log, count."""
        served = champion.current
        if served is None:
            raise HTTPException(503, _no_model(config))
        values, records = await run_in_threadpool(score, served, rows_of)
        try:
            ids = await asyncio.wrap_future(log.submit_records(records))
        except LogUnavailable as error:  # no id, no answer: a prediction that cannot be labelled is not served
            # 507 when the log's disk is full, else 503; nothing of the request was written
            raise HTTPException(error.status, f"prediction log unavailable: {error}") from None
        metrics.prediction_rows.labels(served.version).inc(len(values))
        return Answer(values, ids, served.version)

    def served_version() -> str | None:
        served = champion.current
        return served.version if served is not None else None

    app.include_router(oip_router(config, score_rows, served_version))
    app.include_router(invocations_router(score_rows, served_version))

    @app.post("/labels")
    async def labels(request: Request, authorization: Annotated[str | None, Header()] = None) -> dict[str, int]:
        """Record the first label of logged predictions, all or nothing; the labels token is required.

        401 without the token (checked before the body is read), 422 for bad items or unknown ids, 409 when a
        prediction is labelled already (the first label stands; corrections: `driftloop label --correct`).
        """
        if not authorized(authorization, label_token):
            metrics.refused.labels("/labels", "unauthorized").inc()
            raise HTTPException(401, "POST /labels needs 'Authorization: Bearer <token>' (the labels token: "
                                "$DRIFTLOOP_LABELS_TOKEN, serving.labels_token_file or state_dir/serving/labels.token)",
                                headers={"WWW-Authenticate": "Bearer"})
        items = request_list(await request.body(), "labels", '{"labels": [{"prediction_id": int, "label": number}]}',
                             "label objects")
        try:
            ids, values = parse_labels(items, config.data.task, config.serving.max_batch_rows)
            written = await run_in_threadpool(log.attach_labels, ids, values, source="http",
                                              principal=label_principal)
        except InvalidRequest as invalid:
            raise HTTPException(422, invalid.errors) from None
        except UnknownPredictionIds as unknown:
            raise HTTPException(422, _rows_naming(ids, unknown.ids, "unknown prediction id {}")) from None
        except AlreadyLabelled as labelled:
            raise HTTPException(409, _rows_naming(ids, labelled.ids, "prediction id {} is labelled already; the "
                                                  "first label stands (corrections: driftloop label --correct)")
                                ) from None
        except LogUnavailable as error:  # nothing was written: the sender may retry
            raise HTTPException(error.status, str(error)) from None
        return {"updated": written}

    @app.post("/admin/reload")
    def reload(authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        """Poll the registry now; answers the served version and whether it changed."""
        require_admin(authorization)
        return served_state(models.refresh())

    @app.post("/admin/rollback")
    def roll_back(body: Annotated[RollbackRequest | None, Body()] = None,
                  authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        """Move the champion alias back (registry rollback), then reload; 409 when the registry refuses."""
        require_admin(authorization)
        if rollback is None:
            raise HTTPException(501, "this server was started without a registry rollback; use `driftloop serve`")
        try:
            result = rollback(to_version=body.to_version if body else None)
        except RegistryError as error:
            raise HTTPException(409, str(error)) from None
        return {"from_version": str(result.from_version), "to_version": str(result.to_version),
                "reason": result.reason, **served_state(models.refresh())}

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        """200 with the served version (and whether it is int8), or 503 while no model is loaded; status "degraded"
        (still 200, with the reason) while the last-known-good copy is served."""
        served = champion.current
        if served is None:
            return JSONResponse({"status": "unavailable", "model_version": None, "quantized": False,
                                 "detail": _no_model(config)}, status_code=503)
        challenger_served = shadow.current if shadow else None
        degraded = {"status": "degraded", "detail": f"serving the last-known-good copy: {served.degraded}"} \
            if served.degraded else {"status": "ok"}
        return JSONResponse({**degraded, "model_version": served.version, "quantized": served.model.quantized,
                             "challenger_version": challenger_served.version if challenger_served else None})

    @app.get("/metrics")
    def prometheus() -> Response:
        """The server's own metrics in Prometheus text format."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
