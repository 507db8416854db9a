"""The HTTP API reference, generated from the OpenAPI documents of the model server and the webhook receiver."""

from __future__ import annotations

import inspect
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from md_table import cell, code, generated_note, prose, table

METHODS = ("get", "post", "put", "patch", "delete")
MAX_DEPTH = 3  # nested schemas deeper than this print as their type alone
# Braces as entities: a literal `{...}` after a code span is read by attr_list as attributes and vanishes.
OPEN_BRACE, CLOSE_BRACE = "&#123;", "&#125;"


def _no_model() -> Any:
    """The model loader of an app built only for its OpenAPI document: never called (no lifespan runs)."""
    raise RuntimeError("the reference builds the app's OpenAPI document only")


def openapi_documents(config_file: Path) -> dict[str, dict[str, Any]]:
    """The model server's and the receiver's OpenAPI documents, from apps built on a throwaway state_dir.

    Building the apps runs no lifespan: no model is loaded and nothing listens; the prediction log and the
    tokens they create live in the temporary folder.
    """
    from driftloop.config import parse_config
    from driftloop.monitoring.receiver import create_receiver_app
    from driftloop.serving.app import create_app

    with tempfile.TemporaryDirectory(prefix="driftloop-docs-") as state:
        raw = yaml.safe_load(config_file.read_text(encoding="utf-8"))
        raw["state_dir"] = state
        raw.get("validation", {}).pop("suite", None)
        config = parse_config(raw, str(config_file))
        server = create_app(config, _no_model, lambda: None)
        try:
            documents = {"server": server.openapi()}
        finally:
            server.state.log.close()
        documents["receiver"] = create_receiver_app(config, lambda *args, **kwargs: None, "docs").openapi()
    return documents


def openapi_files(documents: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Each app's OpenAPI document as a downloadable file: openapi-server.json, openapi-receiver.json."""
    return {f"openapi-{app}.json": json.dumps(document, indent=2) + "\n" for app, document in documents.items()}


def schema_text(schema: dict[str, Any], depth: int = 0) -> str:
    """A JSON Schema in one line: `{rows*: array of object}` (braces as entities), `string | null`, a link to a
    named schema."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#schema-{name.lower()})"
    for combined in ("anyOf", "oneOf"):
        if combined in schema:
            return " | ".join(schema_text(option, depth) for option in schema[combined])
    kind = schema.get("type")
    if kind == "array":
        return "array of " + schema_text(schema.get("items", {}), depth + 1)
    if kind == "object" and schema.get("properties") and depth < MAX_DEPTH:
        required = set(schema.get("required", []))
        fields = [f"{name}{'*' if name in required else ''}: {schema_text(sub, depth + 1)}"
                  for name, sub in schema["properties"].items()]
        return OPEN_BRACE + ", ".join(fields) + CLOSE_BRACE
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return "object of " + schema_text(schema["additionalProperties"], depth + 1)
    if "enum" in schema:
        return "one of " + ", ".join(map(str, schema["enum"]))
    return kind or "any"


def body_text(content: dict[str, Any]) -> str:
    """A request or response body: its media types and schema, one line."""
    return "; ".join(f"{code(media)} {escape_schema(schema_text(value.get('schema', {})))}"
                     for media, value in content.items())


def escape_schema(text: str) -> str:
    """A schema line fit for a table cell (the `*` of required fields escaped, links kept)."""
    return cell(text.replace("*", "\\*"))


def parameters_table(parameters: list[dict[str, Any]]) -> str:
    """Path, query and header parameters."""
    return table(["parameter", "in", "required", "type"],
                 [[code(p["name"]), p["in"], "yes" if p.get("required") else "", escape_schema(
                     schema_text(p.get("schema", {})))] for p in parameters])


def responses_table(responses: dict[str, Any]) -> str:
    """Status codes with their description and body."""
    return table(["status", "meaning", "body"],
                 [[code(status), prose(cell(answer.get("description", ""))), body_text(answer.get("content", {}))]
                  for status, answer in sorted(responses.items())])


def operation_anchor(prefix: str, method: str, path: str) -> str:
    """`post-predict`, `receiver-post-alerts`, `get-v2-models-model-infer`: stable, unique on the page."""
    words = [prefix, method, *path.replace("{", "").replace("}", "").split("/")]
    return "-".join(word for word in words if word)


def operation_section(method: str, path: str, operation: dict[str, Any], note: Callable[[str], str],
                      prefix: str = "") -> str:
    """One operation: its description, parameters, request body and responses."""
    anchor = operation_anchor(prefix, method, path)
    parts = [f"### {code(method.upper() + ' ' + path)} {{#{anchor}}}"]
    if operation.get("tags"):
        parts.append("*" + ", ".join(operation["tags"]) + "*")
    parts.append(prose(inspect.cleandoc(operation.get("description") or operation.get("summary", ""))))
    extra = note(path)
    if extra:
        parts.append(extra)
    if operation.get("parameters"):
        parts.append(parameters_table(operation["parameters"]))
    if "requestBody" in operation:
        required = " (required)" if operation["requestBody"].get("required") else " (optional)"
        parts.append(f"**Request body**{required}: {body_text(operation['requestBody'].get('content', {}))}")
    parts.append(responses_table(operation.get("responses", {})))
    return "\n\n".join(parts)


def schemas_section(document: dict[str, Any], title: str) -> str:
    """The named schemas the operations refer to, each with its fields."""
    parts = []
    for name, schema in document.get("components", {}).get("schemas", {}).items():
        required = set(schema.get("required", []))
        rows = [[code(field), "yes" if field in required else "", escape_schema(schema_text(sub, 1)),
                 prose(cell(sub.get("description", "")))] for field, sub in schema.get("properties", {}).items()]
        parts.append(f"### {code(name)} {{#schema-{name.lower()}}}\n\n" + table(
            ["field", "required", "type", "meaning"], rows))
    return f"## {title} schemas\n\n" + "\n\n".join(parts) if parts else ""


def app_section(document: dict[str, Any], title: str, intro: str, note: Callable[[str], str],
                prefix: str = "") -> str:
    """Every operation of one app, in the order its routes are declared (anchors start with `prefix`)."""
    parts = [f"## {title}", intro]
    for path, methods in document.get("paths", {}).items():
        parts += [operation_section(method, path, methods[method], note, prefix) for method in METHODS
                  if method in methods]
    return "\n\n".join(part for part in parts if part)


def http_page(documents: dict[str, dict[str, Any]], guard_doc: str, scoring: Callable[[str], bool]) -> str:
    """The HTTP API page: the model server's operations (after what its guard refuses), then the receiver's."""
    def server_note(path: str) -> str:
        return ("Counts against `serving.max_concurrent_requests` (503 with `Retry-After` beyond it)."
                if scoring(path) else "")

    server_intro = ("`driftloop serve` (and each replica of the stack) answers these paths. Before any handler, "
                    "a guard checks every request:\n\n" + prose(" ".join(inspect.cleandoc(guard_doc).split()))
                    + "\n\nThe settings named here are in the [configuration](configuration.md#serving); the "
                    "refusal counter is in [metrics](metrics.md).")
    receiver_intro = ("`driftloop receiver` (part `receiver` of the stack, on `stack.receiver_port`) serves the "
                      "monitor's gauges and receives Alertmanager's webhook, with the bearer token of "
                      "[`alerts.token_file`](configuration.md#alerts.token_file).")
    files = ", ".join(f"[`{name}`]({name})" for name in openapi_files(documents))
    parts = [
        "# HTTP API",
        generated_note("the OpenAPI documents of the FastAPI apps (`serving/app.py`, `monitoring/receiver.py`)"),
        f"The OpenAPI documents themselves, for client generators and API tools: {files}. A running server also "
        "serves its own at `/openapi.json`, and Swagger UI at `/docs` (which loads its scripts from a CDN).",
        app_section(documents["server"], "Model server", server_intro, server_note),
        schemas_section(documents["server"], "Model server"),
        app_section(documents["receiver"], "Webhook receiver", receiver_intro, lambda path: "", "receiver"),
        schemas_section(documents["receiver"], "Receiver"),
    ]
    return "\n\n".join(part for part in parts if part) + "\n"
