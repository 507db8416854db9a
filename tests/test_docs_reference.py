"""The docs site's generated reference (docs/hooks/): it covers every config key, command, metric and route.

The pages are generated in-process here, as the mkdocs hook does; `make lint` and `make test` build the whole site
with `mkdocs build --strict`, so a broken link or anchor fails there.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from pydantic import BaseModel

from driftloop import metrics
from driftloop.cli import build_parser
from driftloop.config import Config, demo_config_path
from driftloop.monitoring.alerting import rules_path

HOOKS = Path(__file__).resolve().parents[1] / "docs" / "hooks"
# The hook's modules import each other by name, as mkdocs loads them (from their folder, on sys.path meanwhile).
sys.path.insert(0, str(HOOKS))
try:
    import cli_page
    import http_page
    import metrics_page
    import reference
finally:
    sys.path.remove(str(HOOKS))


def leaf_fields(model: type[BaseModel], prefix: str = "") -> dict[str, Any]:
    """Every leaf key of `model` by dotted path, walking nested models (an independent walk, not the hook's)."""
    found: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            found.update(leaf_fields(annotation, prefix + name + "."))
        else:
            found[prefix + name] = field
    return found


def page_keys(page: str) -> list[str]:
    """The keys the configuration page documents: headings `### `a.b` {#a.b}`."""
    return re.findall(r"^### `([^`]+)` \{#\1\}$", page, flags=re.MULTILINE)


@pytest.fixture(scope="module")
def generated() -> dict[str, str]:
    """Every generated file, as `mkdocs build` gets them (built once: the HTTP page imports the server)."""
    return reference.generate()


@pytest.fixture(scope="module")
def config_reference(generated: dict[str, str]) -> str:
    return generated["reference/configuration.md"]


def test_every_config_key_has_a_description() -> None:
    missing = [key for key, field in leaf_fields(Config).items() if not (field.description or "").strip()]
    assert missing == [], f"give these keys Field(description=...) in core/config.py: {missing}"


def test_configuration_page_lists_every_key_once(config_reference: str) -> None:
    keys = page_keys(config_reference)
    assert len(keys) == len(set(keys))
    assert set(keys) == set(leaf_fields(Config))
    assert {"data.target", "training.stages", "serving.max_body_bytes", "governance.max_feature_auc"} <= set(keys)


def test_configuration_entries_carry_type_default_bounds_and_description(config_reference: str) -> None:
    entry = config_reference.split("### `serving.port` {#serving.port}", 1)[1].split("\n### ", 1)[0]
    assert "**Type** `int`" in entry and "**Default** `8080`" in entry and "**Bounds** ≥ 0, ≤ 65535" in entry
    assert Config.model_fields["serving"].annotation.model_fields["port"].description.split()[0] in entry
    target = config_reference.split("{#data.target}", 1)[1].split("\n### ", 1)[0]
    assert "**Default** `required`" in target
    task = config_reference.split("{#data.task}", 1)[1].split("\n### ", 1)[0]
    assert '`one of "classification", "regression"`' in task
    # `<run key>` in a description must print as written, not vanish as an HTML tag.
    checkpoint = config_reference.split("{#training.checkpoint_every}", 1)[1].split("\n### ", 1)[0]
    assert "&lt;run key>" in checkpoint


def test_json_schema_accepts_the_demo_config_and_refuses_unknown_keys(generated: dict[str, str]) -> None:
    schema = json.loads(generated["reference/config.schema.json"])
    demo = yaml.safe_load(demo_config_path().read_text())
    jsonschema.validate(demo, schema)
    with pytest.raises(jsonschema.ValidationError, match="trainin"):
        jsonschema.validate({**demo, "trainin": {}}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**demo, "serving": {"port": 70000}}, schema)
    stages = schema["$defs"]["TrainingConfig"]["properties"]["stages"]
    assert stages["description"] == Config.model_fields["training"].annotation.model_fields["stages"].description


def test_cli_page_lists_every_command_and_argument(generated: dict[str, str]) -> None:
    parser = build_parser()
    page = generated["reference/cli.md"]
    commands = cli_page.subcommands(parser)
    assert len(commands) >= 20
    for name, sub in commands.items():
        assert f"## `driftloop {name}` {{#{name}}}" in page
        section = page.split(f"{{#{name}}}", 1)[1].split("\n## ", 1)[0]
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert f"`{cli_page.argument_name(action)}`" in section, (name, action.dest)
    train = page.split("{#train}", 1)[1].split("\n## ", 1)[0]
    assert "| `--schedule SCHEDULE` |  | — |" in train  # optional, no default of its own: the config's applies
    assert "`local`, `single_process`, `torchrun`" in train


def test_metrics_page_lists_every_metric_and_alert(generated: dict[str, str]) -> None:
    page = generated["reference/metrics.md"]
    names = metrics_page.metric_names(metrics)
    assert len(names) >= 40
    for name in names:
        assert f"`{name}`" in page, name
    assert "| `driftloop_predict_requests_total` | counter | `status` |" in page
    assert "| `driftloop_column_drift_score` | gauge | `model`, `column`, `method` |" in page
    alerts = [rule["alert"] for rule in metrics_page.alert_rules(rules_path()) if "alert" in rule]
    assert "DriftloopRetrainRecommended" in alerts
    for alert in alerts:
        assert f"### `{alert}` {{#{alert}}}" in page


def test_http_page_lists_every_route_of_the_server_and_receiver(generated: dict[str, str]) -> None:
    documents = http_page.openapi_documents(demo_config_path())
    page = generated["reference/http.md"]
    for app, prefix in (("server", ""), ("receiver", "receiver")):
        for path, methods in documents[app]["paths"].items():
            for method in methods:
                anchor = http_page.operation_anchor(prefix, method, path)
                assert f"### `{method.upper()} {path}` {{#{anchor}}}" in page
    assert "{#post-predict}" in page and "{#receiver-post-alerts}" in page
    predict = page.split("{#post-predict}", 1)[1].split("\n### ", 1)[0]
    assert "prediction_ids" in predict and "`503`" in predict
    assert "Async on purpose" not in predict  # the handler's notes for developers stay out (FastAPI's \f)
    assert json.loads(generated["reference/openapi-server.json"])["paths"].keys() == documents["server"]["paths"].keys()
    assert "/alerts" in json.loads(generated["reference/openapi-receiver.json"])["paths"]
