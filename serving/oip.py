"""The Open Inference Protocol (KServe / Triton "V2" REST protocol) on the model server's own port.

The served model is the champion under the config's model name; its version is the only one served
(`/v2/models/{name}/versions/{v}` answers 404 for any other). Inputs, as `GET /v2/models/{name}` lists them:

- one tensor per feature column, named as the column, shape [N] (or [N, 1]): numerical columns FP64 (FP32 and the
  integer types are accepted), categorical columns BYTES (numbers accepted), and the config's timestamp column as
  an optional BYTES tensor of ISO 8601 times. A missing value is null in JSON data; binary float data cannot
  carry null, so there NaN is a missing value;
- or one BYTES tensor named `rows` whose elements are JSON objects, one row each, as /predict takes them.

Outputs: `prediction` (FP64: P(positive class) for classification, the value for regression) and `prediction_id`
(INT64: the prediction log's ids, which `POST /labels` takes) as a second output, so a client that asks only for
`prediction` is unaffected. Tensors travel as JSON or with the binary tensor data extension (what `tritonclient`
sends by default: the JSON header's length in `Inference-Header-Content-Length`, raw little-endian tensors after
it); outputs are binary when the request asks for it (`binary_data_output`, or an output's `binary_data`).

Malformed requests (not JSON, unknown inputs, shapes that disagree) are 400 and rows that break the data contract
422, both with the protocol's `{"error": "..."}` body; no loaded model is 503.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse
from starlette.responses import Response

from driftloop.config import Config, DataConfig
from driftloop.serving.protocol import ScoreRows, error_body, rows_of_columns
from driftloop.serving.validation import json_type

# The binary tensor data extension's header: the length of the JSON part of a request or response body.
HEADER_LENGTH = "inference-header-content-length"
ROWS_INPUT = "rows"
OUTPUTS = {"prediction": "FP64", "prediction_id": "INT64"}
# Little-endian numpy types of the OIP datatypes driftloop accepts for numbers (BYTES is handled apart).
NUMERIC = {"BOOL": "?", "UINT8": "<u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8", "INT8": "<i1",
           "INT16": "<i2", "INT32": "<i4", "INT64": "<i8", "FP16": "<f2", "FP32": "<f4", "FP64": "<f8"}
FLOATS = frozenset({"FP16", "FP32", "FP64"})
EXTENSIONS = ["binary_tensor_data"]


class ProtocolError(HTTPException):
    """A request the protocol cannot map to rows: 400 with one message."""

    def __init__(self, message: str) -> None:
        super().__init__(400, message)


@dataclass(frozen=True)
class InferRequest:
    """A parsed infer request: the rows to score, the outputs asked for (None: all), binary or JSON outputs."""

    rows: list[Any]
    request_id: str | None
    outputs: list[str]
    binary: dict[str, bool]


def server_version() -> str:
    """The installed driftloop's version, for the server metadata."""
    try:
        return importlib.metadata.version("driftloop")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def model_metadata(config: Config, version: str) -> dict[str, Any]:
    """The model metadata: one input per feature column (and the optional timestamp), the two outputs."""
    data = config.data
    inputs = [{"name": c, "datatype": "FP64" if c in data.numerical else "BYTES", "shape": [-1]}
              for c in data.features]
    if data.timestamp:
        inputs.append({"name": data.timestamp, "datatype": "BYTES", "shape": [-1],
                       "parameters": {"optional": True, "format": "ISO 8601"}})
    return {"name": config.model.name, "versions": [version], "platform": "driftloop_pytorch",
            "inputs": inputs, "outputs": [{"name": n, "datatype": t, "shape": [-1]} for n, t in OUTPUTS.items()],
            "parameters": {"task": data.task, "rows_input": ROWS_INPUT}}


def split_body(body: bytes, header_length: str | None) -> tuple[dict[str, Any], memoryview]:
    """The JSON header of an infer body and the binary tensor data after it (empty without the extension)."""
    size = len(body)
    if header_length is not None:
        try:
            size = int(header_length)
        except ValueError:
            raise ProtocolError(f"Inference-Header-Content-Length {header_length!r} is not a number") from None
        if not 0 < size <= len(body):
            raise ProtocolError(f"Inference-Header-Content-Length {size} does not fit the {len(body)}-byte body")
    try:
        header = json.loads(body[:size])
    except (ValueError, UnicodeDecodeError) as error:
        raise ProtocolError(f"the infer request is not valid JSON: {error}") from None
    except RecursionError:
        raise ProtocolError("the infer request's JSON is nested too deeply") from None
    if not isinstance(header, dict):
        raise ProtocolError(f"the infer request must be a JSON object, got {json_type(header)}")
    return header, memoryview(body)[size:]


def flatten(data: Any) -> list[Any]:
    """A tensor's JSON data in row-major order (the protocol allows nested arrays or a flat one). Nesting is told
    by the first element (a ragged mix fails the shape's element count or validation)."""
    if not isinstance(data, list):
        return [data]
    if not data or not isinstance(data[0], list):
        return data
    flat: list[Any] = []
    for item in data:
        flat.extend(flatten(item))
    return flat


def deserialize_bytes(raw: memoryview, name: str) -> list[str]:
    """A binary BYTES tensor: each element a 4-byte little-endian length, then that many bytes (UTF-8 here)."""
    values: list[str] = []
    offset = 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise ProtocolError(f"input {name}: truncated BYTES element at byte {offset}")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise ProtocolError(f"input {name}: BYTES element of {length} bytes overruns the tensor")
        try:
            values.append(bytes(raw[offset:offset + length]).decode("utf-8"))
        except UnicodeDecodeError:
            raise ProtocolError(f"input {name}: BYTES elements must be UTF-8 text") from None
        offset += length
    return values


def tensor_values(tensor: dict[str, Any], binary: memoryview, offset: int) -> tuple[str, list[Any], int]:
    """(name, flat values, new offset into the binary data) of one input tensor; binary NaN floats become None."""
    name, datatype, shape = tensor.get("name"), tensor.get("datatype"), tensor.get("shape")
    if not isinstance(name, str) or not name:
        raise ProtocolError("every input needs a string 'name'")
    if datatype != "BYTES" and datatype not in NUMERIC:
        raise ProtocolError(f"input {name}: datatype {datatype!r} is not one of BYTES, {', '.join(NUMERIC)}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        raise ProtocolError(f"input {name}: 'shape' must be a list of non-negative integers, got {shape!r}")
    size = (tensor.get("parameters") or {}).get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or size < 0 or offset + size > len(binary):
            raise ProtocolError(f"input {name}: binary_data_size {size!r} does not fit the binary data "
                                f"({len(binary) - offset} bytes left)")
        raw = binary[offset:offset + size]
        offset += size
        if datatype == "BYTES":
            values: list[Any] = deserialize_bytes(raw, name)
        else:
            dtype = np.dtype(NUMERIC[datatype])
            if size % dtype.itemsize:
                raise ProtocolError(f"input {name}: {size} bytes is not a whole number of {datatype} elements")
            array = np.frombuffer(raw, dtype=dtype)
            values = _floats(array) if datatype in FLOATS else array.tolist()
    elif "data" in tensor:
        values = flatten(tensor["data"])
    else:
        raise ProtocolError(f"input {name}: neither 'data' nor parameters.binary_data_size")
    expected = math.prod(shape)
    if len(values) != expected:
        raise ProtocolError(f"input {name}: shape {shape} holds {expected} elements, the data {len(values)}")
    if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
        raise ProtocolError(f"input {name}: shape must be [N] or [N, 1] (one value per row), got {shape}")
    return name, values, offset


def _floats(array: np.ndarray) -> list[float | None]:
    """A binary float tensor as Python floats, NaN as None (a missing value: a tensor cannot carry null)."""
    values = array.astype("float64").astype(object)
    values[np.isnan(array)] = None
    return values.tolist()


def json_rows(values: list[Any]) -> list[Any]:
    """The `rows` input: each BYTES element one JSON object."""
    rows = []
    for i, value in enumerate(values):
        try:
            rows.append(json.loads(value) if isinstance(value, str) else value)
        except ValueError as error:
            raise ProtocolError(f"input {ROWS_INPUT}, element {i}: not a JSON object ({error})") from None
    return rows


def column_rows(columns: dict[str, list[Any]], types: dict[str, str], data: DataConfig) -> list[dict[str, Any]]:
    """One row object per position of the column tensors; 400 for unknown, missing, mistyped or uneven inputs."""
    known = list(data.features) + ([data.timestamp] if data.timestamp else [])
    unknown = sorted(set(columns) - set(known))
    if unknown:
        raise ProtocolError(f"unknown input(s) {unknown}: the inputs are the feature columns {known} (the timestamp "
                            f"optional), or one BYTES input '{ROWS_INPUT}' of JSON row objects")
    missing = [c for c in data.features if c not in columns]
    if missing:
        raise ProtocolError(f"missing input(s) for feature column(s) {missing}")
    for name, datatype in types.items():
        if datatype == "BYTES" and name in data.numerical:
            raise ProtocolError(f"input {name} is a numerical column: send it as FP64 (or FP32, INT64), not BYTES")
        if datatype != "BYTES" and name == data.timestamp:
            raise ProtocolError(f"input {name} is the timestamp: send it as BYTES (ISO 8601 text), not {datatype}")
    rows = rows_of_columns(columns)
    if rows is None:
        raise ProtocolError(f"inputs disagree on the number of rows: { {k: len(v) for k, v in columns.items()} }")
    return rows


def requested_outputs(header: dict[str, Any]) -> tuple[list[str], dict[str, bool]]:
    """The outputs asked for (all when none are named) and, per output, whether it goes back as binary data."""
    default_binary = bool((header.get("parameters") or {}).get("binary_data_output", False))
    asked = header.get("outputs")
    if asked is None:
        return list(OUTPUTS), {name: default_binary for name in OUTPUTS}
    if not isinstance(asked, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in asked):
        raise ProtocolError("'outputs' must be a list of objects with a 'name'")
    unknown = [o["name"] for o in asked if o["name"] not in OUTPUTS]
    if unknown:
        raise ProtocolError(f"unknown output(s) {unknown}; the outputs are {list(OUTPUTS)}")
    binary = {o["name"]: bool((o.get("parameters") or {}).get("binary_data", default_binary)) for o in asked}
    return [o["name"] for o in asked], binary


def parse_infer(body: bytes, header_length: str | None, data: DataConfig) -> InferRequest:
    """An infer request's rows and the outputs it wants; ProtocolError (400) when it cannot be mapped to rows."""
    header, binary = split_body(body, header_length)
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or not inputs or not all(isinstance(t, dict) for t in inputs):
        raise ProtocolError("'inputs' must be a non-empty list of tensors")
    columns: dict[str, list[Any]] = {}
    types: dict[str, str] = {}
    offset = 0
    for tensor in inputs:
        name, values, offset = tensor_values(tensor, binary, offset)
        if name in columns:
            raise ProtocolError(f"input {name} appears twice")
        columns[name], types[name] = values, tensor["datatype"]
    if offset != len(binary):
        raise ProtocolError(f"{len(binary) - offset} bytes of binary data belong to no input")
    if list(columns) == [ROWS_INPUT] and ROWS_INPUT not in data.features:
        if types[ROWS_INPUT] != "BYTES":
            raise ProtocolError(f"input {ROWS_INPUT} must be BYTES (JSON row objects), not {types[ROWS_INPUT]}")
        rows = json_rows(columns[ROWS_INPUT])
    else:
        rows = column_rows(columns, types, data)
    request_id = header.get("id")
    outputs, as_binary = requested_outputs(header)
    return InferRequest(rows, str(request_id) if request_id is not None else None, outputs, as_binary)


def infer_response(config: Config, request: InferRequest, predictions: list[float], ids: list[int],
                   version: str) -> Response:
    """The infer answer: JSON tensors, or the JSON header followed by binary tensors where asked for."""
    values = {"prediction": predictions, "prediction_id": ids}
    outputs: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for name in request.outputs:
        tensor: dict[str, Any] = {"name": name, "datatype": OUTPUTS[name], "shape": [len(predictions)]}
        if request.binary.get(name):
            raw = np.asarray(values[name], dtype=NUMERIC[OUTPUTS[name]]).tobytes()
            tensor["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            tensor["data"] = values[name]
        outputs.append(tensor)
    payload: dict[str, Any] = {"model_name": config.model.name, "model_version": version, "outputs": outputs}
    if request.request_id is not None:
        payload["id"] = request.request_id
    header = json.dumps(payload, separators=(",", ":")).encode()
    if not chunks:
        return Response(header, media_type="application/json")
    return Response(b"".join([header, *chunks]), media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(len(header))})


def oip_router(config: Config, score_rows: ScoreRows, served_version: Any) -> APIRouter:
    """The OIP routes; `served_version()` is the champion's served version, None while none is loaded."""
    router = APIRouter(prefix="/v2", tags=["Open Inference Protocol"])
    name = config.model.name

    def error(path: str, status: int, detail: Any) -> JSONResponse:
        return JSONResponse(error_body(path, status, detail), status_code=status)

    def check(model: str, version: str | None) -> str:
        """The served version, or HTTPException: 404 for another model or version, 503 while none is loaded."""
        if model != name:
            raise HTTPException(404, f"unknown model {model!r}; this server serves {name!r}")
        served = served_version()
        if served is None:
            raise HTTPException(503, f"no {name} champion is loaded yet")
        if version is not None and version != served:
            raise HTTPException(404, f"model {name} version {version} is not served; the served version is {served}")
        return served

    @router.get("/health/live")
    def live() -> dict[str, bool]:
        """The server process answers."""
        return {"live": True}

    @router.get("/health/ready")
    def ready() -> JSONResponse:
        """200 once the champion is loaded, 503 before."""
        loaded = served_version() is not None
        return JSONResponse({"ready": loaded}, status_code=200 if loaded else 503)

    @router.get("")
    def server_metadata() -> dict[str, Any]:
        """The server's name, version and protocol extensions."""
        return {"name": "driftloop", "version": server_version(), "extensions": EXTENSIONS}

    @router.get("/models/{model}")
    @router.get("/models/{model}/versions/{version}")
    def metadata(model: str, request: Request, version: str | None = None) -> JSONResponse:
        """The model's inputs and outputs (see the module docstring)."""
        try:
            served = check(model, version)
        except HTTPException as refused:
            return error(request.url.path, refused.status_code, refused.detail)
        return JSONResponse(model_metadata(config, served))

    @router.get("/models/{model}/ready")
    @router.get("/models/{model}/versions/{version}/ready")
    def model_ready(model: str, request: Request, version: str | None = None) -> JSONResponse:
        """200 when this model (and version) is served, else 404 or 503."""
        try:
            check(model, version)
        except HTTPException as refused:
            return error(request.url.path, refused.status_code, refused.detail)
        return JSONResponse({"name": name, "ready": True})

    @router.post("/models/{model}/infer")
    @router.post("/models/{model}/versions/{version}/infer")
    async def infer(model: str, request: Request, version: str | None = None) -> Response:
        """Score the request's rows with the champion through /predict's path; answer the output tensors."""
        path = request.url.path
        parsed: list[InferRequest] = []

        def rows_of() -> list[Any]:
            parsed.append(parse_infer(body, request.headers.get(HEADER_LENGTH), config.data))
            return parsed[0].rows

        try:
            check(model, version)
            body = await request.body()
            answer = await score_rows(rows_of)
        except HTTPException as refused:
            return error(path, refused.status_code, refused.detail)
        return infer_response(config, parsed[0], answer.predictions, answer.prediction_ids, answer.model_version)

    return router
