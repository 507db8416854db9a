"""mkdocs hook: the reference pages, generated from the code at every build so that they cannot drift from it.

reference/cli.md (argparse), reference/configuration.md and config.schema.json (the pydantic models),
reference/http.md with openapi-server.json and openapi-receiver.json (the apps' OpenAPI), reference/metrics.md
(driftloop.metrics and the alert rules) are added to the site as generated files: nothing is written under docs/,
and a page of the same name there is an error.
"""

from __future__ import annotations

from cli_page import cli_page
from config_page import SCHEMA_FILE, config_page, config_schema
from http_page import http_page, openapi_documents, openapi_files
from metrics_page import metrics_page
from mkdocs.config.defaults import MkDocsConfig
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files


def generate() -> dict[str, str]:
    """Every generated file's content, by its path under docs/."""
    from driftloop import metrics
    from driftloop.cli import build_parser
    from driftloop.config import Config, demo_config_path
    from driftloop.monitoring.alerting import rules_path
    from driftloop.serving import guard
    from driftloop.serving.protocol import route

    documents = openapi_documents(demo_config_path())
    return {
        "reference/cli.md": cli_page(build_parser()),
        "reference/configuration.md": config_page(Config),
        f"reference/{SCHEMA_FILE}": config_schema(Config),
        "reference/http.md": http_page(documents, guard.__doc__ or "", lambda path: route(path) in guard.SCORING_PATHS),
        **{f"reference/{name}": text for name, text in openapi_files(documents).items()},
        "reference/metrics.md": metrics_page(metrics, rules_path(), "monitoring/rules/driftloop.rules.yml"),
    }


def on_files(files: Files, config: MkDocsConfig) -> Files:
    """Add the generated reference files to the site."""
    for path, content in generate().items():
        if files.get_file_from_path(path) is not None:
            raise PluginError(f"docs/{path} exists, but the reference generates it: delete docs/{path}")
        files.append(File.generated(config, path, content=content))
    return files
