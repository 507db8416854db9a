"""Links between the pages a user opens (issue 19): a registered MLflow model version names, in its description and
its `links.*` tags, its validation pages, the Evidently project holding a snapshot of every window it served, and the
Prefect flow run that trained it. (The Prefect flow run's validation artifact links back to the MLflow run:
registry.provenance.report_links.)"""

from __future__ import annotations

import os
from pathlib import Path

from driftloop.config import Config
from driftloop.env import stack_part_url
from driftloop.monitoring.projects import link_project_id
from driftloop.registry.store import mlflow_client
from driftloop.state import mlflow_tracking_uri

VALIDATION_TAG = "links.validation_report"
DATA_DOCS_TAG = "links.gx_data_docs"
EVIDENTLY_TAG = "links.evidently_snapshots"
PREFECT_TAG = "links.prefect_flow_run"


def evidently_snapshots_url(config: Config) -> str:
    """The model's Evidently project's snapshot list: on the stack's Evidently UI, else where `evidently ui
    --workspace state_dir/evidently` (monitoring.workspace.ui_command) serves it. The project's id is read from
    disk, without importing Evidently (seconds of CPU); before the first window is checked the project does not
    exist yet, and the id is reserved: the monitor creates the project with it (with its panels) when it stores its
    first window, and the page shows from then on. Evidently decides only when several projects have the name."""
    project_id = link_project_id(config)
    if project_id is None:
        from driftloop.monitoring.workspace import open_project

        project_id = str(open_project(config)[1].id)
    base = stack_part_url(Path(config.state_dir), "evidently") or f"http://127.0.0.1:{config.stack.evidently_port}"
    return f"{base.rstrip('/')}/projects/{project_id}/reports"


def prefect_run_url(flow_run_id: str | None) -> str | None:
    """The Prefect UI's page of a flow run, when the flows report to a Prefect server (not a temporary API)."""
    api = os.environ.get("PREFECT_API_URL", "")
    if not flow_run_id or not api.rstrip("/").endswith("/api"):
        return None
    return f"{api.rstrip('/').removesuffix('/api')}/runs/flow-run/{flow_run_id}"


def validation_urls(config: Config, run_id: str, record: dict) -> dict[str, str]:
    """The batch's validation pages: in the MLflow UI (the run's `validation/` artifacts) when a tracking server
    runs, else as files."""
    validation = record.get("validation") or {}
    pages = {VALIDATION_TAG: validation.get("report"), DATA_DOCS_TAG: validation.get("gx_report")}
    uri = mlflow_tracking_uri(config)
    urls = {}
    for tag, page in pages.items():
        if not page:
            continue
        if uri.startswith(("http://", "https://")):
            experiment = mlflow_client(config).get_run(run_id).info.experiment_id
            urls[tag] = (f"{uri.rstrip('/')}/#/experiments/{experiment}/runs/{run_id}/artifacts/validation/"
                         f"{Path(page).name}")
        else:
            urls[tag] = Path(page).resolve().as_uri()
    return urls


def version_description(links: dict[str, str]) -> str:
    """The version's description (Markdown, shown on its MLflow page)."""
    titles = {VALIDATION_TAG: "Validation report", DATA_DOCS_TAG: "Great Expectations Data Docs",
              EVIDENTLY_TAG: "Evidently snapshots (one per monitored window)", PREFECT_TAG: "Prefect flow run"}
    lines = ["Pages of this version (driftloop):", ""]
    lines += [f"- [{titles[tag]}]({url})" for tag, url in links.items()]
    return "\n".join(lines)


def link_version(config: Config, version: str, run_id: str, record: dict, flow_run_id: str | None) -> dict[str, str]:
    """Write the links into the model version (description and `links.*` tags); returns them."""
    links = validation_urls(config, run_id, record)
    links[EVIDENTLY_TAG] = evidently_snapshots_url(config)
    prefect = prefect_run_url(flow_run_id)
    if prefect:
        links[PREFECT_TAG] = prefect
    client = mlflow_client(config)
    for tag, url in links.items():
        client.set_model_version_tag(config.model.name, version, tag, url)
    client.update_model_version(config.model.name, version, description=version_description(links))
    return links
