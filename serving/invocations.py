"""MLflow's scoring protocol on the model server: `POST /invocations` as `mlflow models serve` answers it.

The body is a JSON object with exactly one of MLflow's input keys (MLflow 3's `pyfunc.scoring_server`):

- `dataframe_split`: `{"columns": [...], "data": [[...], ...]}` (an `index` is ignored);
- `dataframe_records`: `[{column: value, ...}, ...]`;
- `inputs` / `instances`: a list of row objects, or an object of columns `{column: [values]}`.

`params` is accepted and ignored (the model takes none). The answer is MLflow's `{"predictions": [...]}`, with
driftloop's `model_version` and `prediction_ids` beside it (MLflow's own server adds metadata keys the same way),
so labels can follow. Errors use MLflow's body `{"error_code": "BAD_REQUEST", "message": "..."}`: 400 for a body
MLflow would refuse, 422 (with `details` naming each row and field) for rows that break the data contract. Only
`application/json` is taken (MLflow also takes CSV and Parquet bodies): 415 otherwise. `GET /ping` and
`GET /health` answer as MLflow's do (200 once a model is loaded).
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse
from starlette.responses import Response

from driftloop.serving.protocol import INVOCATIONS, ScoreRows, error_body, rows_of_columns
from driftloop.serving.validation import json_type

DF_SPLIT, DF_RECORDS, INSTANCES, INPUTS = "dataframe_split", "dataframe_records", "instances", "inputs"
FORMATS = (DF_SPLIT, DF_RECORDS, INSTANCES, INPUTS)


def bad_request(message: str) -> HTTPException:
    """A body MLflow's server would refuse: 400."""
    return HTTPException(400, message)


def split_rows(split: Any) -> list[Any]:
    """`dataframe_split` {"columns", "data"} as row objects."""
    if not isinstance(split, dict) or not isinstance(split.get("columns"), list) \
            or not isinstance(split.get("data"), list):
        raise bad_request(f"{DF_SPLIT} must be an object with 'columns' (a list of names) and 'data' (a list of rows)")
    columns = split["columns"]
    if not all(isinstance(c, str) for c in columns) or len(set(columns)) != len(columns):
        raise bad_request(f"{DF_SPLIT}.columns must be distinct column names")
    rows = []
    for i, values in enumerate(split["data"]):
        if not isinstance(values, list) or len(values) != len(columns):
            raise bad_request(f"{DF_SPLIT}.data[{i}] must be a list of {len(columns)} values (one per column), got "
                              f"{json_type(values) if not isinstance(values, list) else f'{len(values)} values'}")
        rows.append(dict(zip(columns, values, strict=True)))
    return rows


def columns_rows(columns: dict[str, Any], key: str) -> list[Any]:
    """`inputs` / `instances` as an object of columns {name: [values]}: row objects."""
    if not all(isinstance(v, list) for v in columns.values()):
        raise bad_request(f"{key} as an object must map each column to a list of values")
    rows = rows_of_columns(columns)
    if rows is None:
        raise bad_request(f"{key}: the columns have different lengths: { {k: len(v) for k, v in columns.items()} }")
    return rows


def invocation_rows(body: bytes) -> list[Any]:
    """The rows of an /invocations body in any of MLflow's JSON formats; 400 naming what is wrong otherwise."""
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise bad_request(f"the body is not valid JSON: {error}") from None
    except RecursionError:
        raise bad_request("the body's JSON is nested too deeply") from None
    keys = [k for k in FORMATS if isinstance(payload, dict) and k in payload]
    if len(keys) != 1:
        found = list(payload) if isinstance(payload, dict) else json_type(payload)
        raise bad_request(f"The input must be a JSON dictionary with exactly one of the input fields "
                          f"{list(FORMATS)}. Received: {found}")
    key = keys[0]
    value = payload[key]
    if key == DF_SPLIT:
        return split_rows(value)
    if isinstance(value, dict) and key in (INPUTS, INSTANCES):
        return columns_rows(value, key)
    if not isinstance(value, list):
        raise bad_request(f"{key} must be a list of row objects, got {json_type(value)}")
    return value  # row objects; validation names any item that is not one


def invocations_router(score_rows: ScoreRows, served_version: Any) -> APIRouter:
    """POST /invocations, GET /ping and GET /health; `served_version()` is None while no model is loaded."""
    router = APIRouter(tags=["MLflow scoring protocol"])

    @router.post(INVOCATIONS)
    async def invocations(request: Request) -> Response:
        """Score the rows with the champion through /predict's path; answer {"predictions": [...]}."""
        try:
            body = await request.body()
            answer = await score_rows(lambda: invocation_rows(body))
        except HTTPException as refused:
            return JSONResponse(error_body(INVOCATIONS, refused.status_code, refused.detail),
                                status_code=refused.status_code)
        return JSONResponse({"predictions": answer.predictions, "model_version": answer.model_version,
                             "prediction_ids": answer.prediction_ids})

    @router.get("/ping")
    @router.get("/health")
    def ping() -> Response:
        """200 once a model is loaded (MLflow's health check answers a newline), 503 before."""
        loaded = served_version() is not None
        return Response("\n", status_code=200 if loaded else 503, media_type="application/json")

    return router
