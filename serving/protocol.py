"""What the scoring protocols share: the answer of one scored request, and each protocol's error body.

Every scoring path (/predict, the Open Inference Protocol's infer, MLflow's /invocations) turns its body into the
same row objects and hands them to one scoring function of the app (serving/app.py), so validation, the scoring
thread, the prediction log, the metrics, shadow scoring and int8 behave the same whatever the protocol. Only the
body's shape and the error body differ.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

OIP_PREFIX = "/v2"
# The Open Inference Protocol's infer paths, as the guard and the metrics name them (no client-chosen labels).
OIP_INFER_ROUTE = "/v2/models/{name}/infer"
INVOCATIONS = "/invocations"
# MLflow's error codes (its databricks_pb2 names) for the statuses driftloop answers; any other 4xx is BAD_REQUEST.
MLFLOW_ERROR_CODES = {500: "INTERNAL_ERROR", 503: "TEMPORARILY_UNAVAILABLE"}


@dataclass(frozen=True)
class Answer:
    """One scored request: its predictions, their prediction-log ids (for labels) and the version that scored."""

    predictions: list[float]
    prediction_ids: list[int]
    model_version: str


# The rows of a request, parsed from its body (run in the scoring thread, so parsing holds up no other request).
RowsOf = Callable[[], list[Any]]
# The app's scoring path: validate, score (champion, then challenger in shadow mode), log; HTTPException otherwise.
ScoreRows = Callable[[RowsOf], Awaitable[Answer]]


def is_oip_infer(path: str) -> bool:
    """True for /v2/models/{name}/infer and /v2/models/{name}/versions/{v}/infer."""
    if not path.startswith("/v2/models/") or not path.endswith("/infer"):
        return False
    parts = path.split("/")  # ['', 'v2', 'models', name, 'infer'] or [..., name, 'versions', v, 'infer']
    return (len(parts) == 5 and parts[3] != "") or (len(parts) == 7 and parts[4] == "versions" and "" not in parts[3:])


def route(path: str) -> str:
    """The path as the guard and the metrics name it: the OIP infer paths as one template, others unchanged."""
    return OIP_INFER_ROUTE if is_oip_infer(path) else path


def error_text(detail: Any) -> str:
    """One message from an HTTPException detail: a string, or the field errors of a 422 joined on one line."""
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if not isinstance(item, dict):
                parts.append(str(item))
                continue
            where = ", ".join(f"{key} {item[key]}" for key in ("row", "field") if item.get(key) is not None)
            parts.append(f"{where}: {item.get('error')}" if where else str(item.get("error")))
        return "; ".join(parts)
    return str(detail)


def error_body(path: str, status: int, detail: Any) -> dict[str, Any]:
    """The error body a client of `path` reads: OIP {"error": text}, MLflow {"error_code", "message"}, else
    FastAPI's {"detail": ...}."""
    if path.startswith(OIP_PREFIX + "/") or path == OIP_PREFIX:
        return {"error": error_text(detail)}
    if path == INVOCATIONS:
        code = MLFLOW_ERROR_CODES.get(status, "BAD_REQUEST")
        body: dict[str, Any] = {"error_code": code, "message": error_text(detail)}
        if isinstance(detail, list):
            body["details"] = detail  # the fields at fault, as /predict names them
        return body
    return {"detail": detail}


def rows_of_columns(columns: dict[str, list[Any]]) -> list[dict[str, Any]] | None:
    """One row object per position of equal-length columns; None when their lengths differ (each protocol names
    that in its own error)."""
    if len({len(values) for values in columns.values()}) > 1:
        return None
    names = list(columns)
    return [dict(zip(names, values, strict=True)) for values in zip(*columns.values(), strict=True)]
