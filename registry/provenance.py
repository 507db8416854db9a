"""Provenance of a model version: its training batches, then its parent champion and that one's batches, back to
the first model (`driftloop lineage VERSION`).

MLflow holds the versions and their lineage tags (registry/lineage.py); the batch records (core/batches.py)
say where each batch came from and what validation made of it. A record that is missing (the state dir wiped, a
version trained on another machine) leaves what MLflow knows, and the view says the record is missing.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from driftloop.batches import read_batch
from driftloop.config import Config
from driftloop.errors import DataError, RegistryError
from driftloop.registry.lineage import BATCHES_TAG
from driftloop.registry.store import REPORT_URI_TAG, list_versions, mlflow_client, model_aliases
from driftloop.state import mlflow_tracking_uri

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion
    from rich.tree import Tree


def batch_fingerprints(tags: dict[str, str]) -> list[str]:
    """The batches a version was trained on: its data.batches tag, or data.fingerprint for older versions."""
    try:
        listed = json.loads(tags.get(BATCHES_TAG) or "null")
    except json.JSONDecodeError:
        listed = None  # a hand-edited tag: fall back to what the version says about its data
    if isinstance(listed, list) and listed:
        return [str(f) for f in listed]
    return [tags["data.fingerprint"]] if tags.get("data.fingerprint") else []


def _offer_for(record: dict, model: str, version: str) -> dict:
    """The offer of a batch that trained `version` (a batch may be offered many times), else the latest."""
    for offer in reversed(record.get("offers") or []):
        trained = offer.get("model") or {}
        if trained.get("name") == model and str(trained.get("version")) == version:
            return offer
    return (record.get("offers") or [record])[-1]


def _batch_entry(config: Config, fingerprint: str, tags: dict[str, str], version: str, single: bool) -> dict:
    """One training batch of a version: its record's facts, or what MLflow's tags know when the record is missing."""
    try:
        record = read_batch(config, fingerprint)
    except DataError:
        record = None  # a tag that is not a fingerprint has no record
    if record is None:
        if not single:  # the version's data.* and validation.* tags describe all its rows, not this batch's
            return {"fingerprint": fingerprint, "record": False, "name": None, "source": None, "status": None,
                    "rows": None, "time_range": None, "validation": None}
        span = {"start": tags["data.start"], "end": tags.get("data.end", "")} if tags.get("data.start") else None
        success = {"true": True, "false": False}.get(tags.get("validation.success", ""))
        return {"fingerprint": fingerprint, "record": False, "name": None, "source": None, "status": None,
                "rows": int(tags["data.rows"]) if tags.get("data.rows", "").isdigit() else None, "time_range": span,
                "validation": {"success": success, "report": tags.get("validation.report") or None}}
    offer = _offer_for(record, config.model.name, version)
    return {"fingerprint": fingerprint, "record": True, "name": record.get("name"), "source": offer.get("source"),
            "status": record.get("status"), "rows": record.get("rows"), "time_range": record.get("time_range"),
            "validation": offer.get("validation")}


def _created(millis: int | None) -> str | None:
    return None if millis is None else datetime.fromtimestamp(millis / 1000, UTC).isoformat(timespec="seconds")


def _version_entry(config: Config, mv: ModelVersion, aliases: dict[str, str]) -> dict:
    """A version as the chain shows it: identity, code, config, gate, validation tags, batches, parent."""
    tags = dict(mv.tags)
    version = str(mv.version)
    fingerprints = batch_fingerprints(tags)
    return {
        "version": version,
        "run_id": mv.run_id,
        "created": _created(mv.creation_timestamp),
        "aliases": sorted(a for a, v in aliases.items() if v == version),
        "code_version": tags.get("code.version"),
        "config_hash": tags.get("config.hash"),
        "gate": {"decision": tags.get("gate.decision"), "reason": tags.get("gate.reason")},
        "validation": {"success": tags.get("validation.success"), "report": tags.get("validation.report") or None,
                       "report_uri": tags.get(REPORT_URI_TAG)},
        "batches": [_batch_entry(config, f, tags, version, len(fingerprints) == 1) for f in fingerprints],
        "parent": tags.get("parent.champion") or None,
    }


def version_chain(config: Config, version: str) -> dict:
    """`version`, then the champion it was trained under, and so on back to the first model.

    The `driftloop lineage --json` object: {"model", "version", "chain": [entry, ...]}, newest first; an entry
    for a parent the registry no longer has is {"version", "missing": true} and ends the chain. RegistryError
    naming the valid versions when `version` is unknown.
    """
    versions = {str(mv.version): mv for mv in list_versions(config)}
    if version not in versions:
        known = ", ".join(versions) if versions else "none yet: run `driftloop train`"
        raise RegistryError(f"model {config.model.name} has no version {version}; versions: {known}")
    aliases = model_aliases(config)
    chain: list[dict] = []
    current: str | None = version
    while current is not None and current not in {e["version"] for e in chain}:  # a hand-made cycle ends too
        if current not in versions:
            chain.append({"version": current, "missing": True})
            break
        entry = _version_entry(config, versions[current], aliases)
        chain.append(entry)
        current = entry["parent"]
    return {"model": config.model.name, "version": version, "chain": chain}


def run_link(config: Config, run_id: str) -> str:
    """Where a person opens an MLflow run: the tracking server's page for it, or its runs:/ URI without one."""
    uri = mlflow_tracking_uri(config)
    if uri.startswith(("http://", "https://")):
        experiment = mlflow_client(config).get_run(run_id).info.experiment_id
        return f"{uri.rstrip('/')}/#/experiments/{experiment}/runs/{run_id}"
    return f"runs:/{run_id}"


def report_links(config: Config, version: str, run_id: str) -> list[tuple[str, str]]:
    """(text, url) of a version's MLflow run and of the validation report logged in it, for the Prefect artifact."""
    links = [(f"run {run_id}", run_link(config, run_id))]
    uri = mlflow_client(config).get_model_version(config.model.name, version).tags.get(REPORT_URI_TAG)
    if uri:
        links.append(("validation report in the run", uri))
    return links


def _batch_lines(batch: dict) -> tuple[str, str]:
    """A batch in two short lines (rich markup): what and where from; its rows, time range and validation."""
    from rich.markup import escape

    span = batch.get("time_range")
    figures = [f"{batch['rows']:,} rows" if batch.get("rows") is not None else "",
               f"{span['start'][:19]} – {span['end'][:19]}" if span else ""]
    validation = batch.get("validation") or {}
    if validation:
        verdict = {True: "passed", False: "FAILED"}.get(validation.get("success"), "unknown")
        figures.append(f"validation {verdict}" + (f": {validation['summary']}" if validation.get("summary") else ""))
    if validation.get("report"):
        gx = Path(validation["gx_report"]).name if validation.get("gx_report") else None
        figures.append(f"report {validation['report']}" + (f" (GX Data Docs: {gx})" if gx else ""))
    detail = escape("; ".join(f for f in figures if f)) or "MLflow knows nothing more"
    if not batch["record"]:
        return f"batch {batch['fingerprint']}  [yellow]record missing[/] (state dir wiped?)", detail
    return escape(f"batch {batch['fingerprint']}  {batch.get('source') or '?'}  ({batch.get('status')})"), detail


def chain_tree(view: dict) -> Tree:
    """The chain as a rich tree: one branch per version, its batches under it, newest first."""
    from rich.markup import escape
    from rich.tree import Tree

    tree = Tree(f"[bold]model {escape(view['model'])}[/]: lineage of v{escape(view['version'])}")
    for entry in view["chain"]:
        if entry.get("missing"):
            tree.add(f"[yellow]v{escape(entry['version'])}: not in the registry any more[/]")
            continue
        aliases = f" ({', '.join(entry['aliases'])})" if entry["aliases"] else ""
        gate = entry["gate"]
        node = tree.add(f"[bold]v{entry['version']}[/]{escape(aliases)}  created {entry['created'] or '?'}  "
                        f"run {entry['run_id']}  code {escape(entry['code_version'] or '?')}  "
                        f"config {escape(entry['config_hash'] or '?')}")
        reason = f": {gate['reason']}" if gate["reason"] else ""
        node.add(escape(f"gate {gate['decision'] or 'none'}{reason}"))
        for batch in entry["batches"]:
            head, detail = _batch_lines(batch)
            node.add(head).add(detail)
        if not entry["batches"]:
            node.add("[yellow]no batch recorded on this version[/]")
        node.add(f"trained while v{entry['parent']} was champion" if entry["parent"]
                 else "first model: no champion before it")
    return tree
