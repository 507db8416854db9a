"""The metrics and alerts reference, generated from `driftloop.metrics` and the Prometheus rules file."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml
from md_table import cell, code, generated_note, prose, table
from prometheus_client.metrics import MetricWrapperBase

# The name each type is exposed under, from the name the metric was created with (prometheus_client strips _total).
EXPOSED_SUFFIX = {"counter": "_total"}
SERIES_NOTE = {"histogram": " (series `_bucket`, `_sum`, `_count`)"}
# Where Prometheus finds each factory's metrics (a factory missing here is listed without it).
SCRAPED_FROM = {
    "serving_metrics": "the model server's `/metrics` (each replica)",
    "monitor_metrics": "the textfile `state_dir/metrics/monitor.prom`, served by the receiver's `/metrics`",
    "training_metrics": "the textfile `state_dir/metrics/training.prom` (live while training), served by the "
                        "receiver's `/metrics`",
    "receiver_metrics": "the receiver's `/metrics`",
}


@dataclass(frozen=True)
class Metric:
    """One metric as Prometheus scrapes it."""

    name: str
    type: str
    labels: tuple[str, ...]
    help: str


@dataclass(frozen=True)
class MetricGroup:
    """The metrics one factory of driftloop.metrics creates (the server's, the monitor's, ...)."""

    factory: str
    doc: str
    metrics: list[Metric]


def factories(module: ModuleType) -> dict[str, Callable[..., Any]]:
    """The module's `*_metrics()` functions, in source order."""
    found = [(name, value) for name, value in vars(module).items()
             if name.endswith("_metrics") and inspect.isfunction(value) and value.__module__ == module.__name__]
    return dict(sorted(found, key=lambda item: item[1].__code__.co_firstlineno))


def metric_of(wrapper: MetricWrapperBase) -> Metric:
    """A prometheus_client metric as the page shows it."""
    kind = wrapper._type
    return Metric(wrapper._name + EXPOSED_SUFFIX.get(kind, ""), kind, tuple(wrapper._labelnames),
                  wrapper._documentation)


def metric_groups(module: ModuleType) -> list[MetricGroup]:
    """Every factory's metrics, each created in a fresh registry."""
    groups = []
    for name, factory in factories(module).items():
        bundle = factory()
        metrics = [metric_of(value) for value in (getattr(bundle, f.name) for f in dataclasses.fields(bundle))
                   if isinstance(value, MetricWrapperBase)]
        doc = inspect.cleandoc(type(bundle).__doc__ or "").removesuffix(", bound to one registry.")
        groups.append(MetricGroup(name, doc.rstrip(".") + "." if doc else "", metrics))
    return groups


def metric_names(module: ModuleType) -> list[str]:
    """Every metric name the module defines as a constant (the names alert rules and dashboards use)."""
    return [value for name, value in vars(module).items()
            if name.isupper() and isinstance(value, str) and value.startswith("driftloop_")]


def alert_rules(rules_file: Path) -> list[dict[str, Any]]:
    """Every rule of a Prometheus rules file, with its group's name."""
    document = yaml.safe_load(rules_file.read_text(encoding="utf-8")) or {}
    return [{"group": group["name"], **rule} for group in document.get("groups", []) for rule in group["rules"]]


def metrics_table(group: MetricGroup) -> str:
    """One row per metric: name, type, labels, help."""
    return table(["metric", "type", "labels", "help"],
                 [[code(metric.name), metric.type + SERIES_NOTE.get(metric.type, ""),
                   ", ".join(code(label) for label in metric.labels), prose(cell(metric.help))]
                  for metric in group.metrics])


def alerts_section(rules: list[dict[str, Any]], source: str) -> str:
    """The alert rules: name, severity, for, summary; then each rule's expression and description."""
    alerts = [rule for rule in rules if "alert" in rule]
    parts = [f"## Alert rules {{#alerts}}\n\nFrom `{source}` (Prometheus loads it in `driftloop stack up`; "
             "`promtool test rules` checks it in the tests).",
             table(["alert", "group", "severity", "for", "summary"],
                   [[f"[{code(rule['alert'])}](#{rule['alert']})", code(rule["group"]),
                     code(rule.get("labels", {}).get("severity", "")), code(rule.get("for", "0s")),
                     prose(cell(rule.get("annotations", {}).get("summary", "")))] for rule in alerts])]
    for rule in alerts:
        labels = ", ".join(f"{code(key)}: {code(value)}" for key, value in rule.get("labels", {}).items())
        parts.append(f"### {code(rule['alert'])} {{#{rule['alert']}}}\n\n"
                     f"```promql\n{rule['expr'].strip()}\n```\n\n"
                     f"**For** {code(rule.get('for', '0s'))} · **Labels** {labels or '—'}\n\n"
                     f"{prose(' '.join(rule.get('annotations', {}).get('description', '').split()))}")
    records = [rule for rule in rules if "record" in rule]
    if records:
        parts.append("## Recording rules\n\n" + table(
            ["record", "expr"], [[code(rule["record"]), code(cell(rule["expr"]))] for rule in records]))
    return "\n\n".join(parts)


def metrics_page(module: ModuleType, rules_file: Path, rules_source: str) -> str:
    """The metrics and alerts page: every metric by the component that exports it, then the alert rules."""
    groups = metric_groups(module)
    listed = {metric.name for group in groups for metric in group.metrics}
    parts = [
        "# Metrics and alerts",
        generated_note("`driftloop.metrics` (`core/metrics.py`) and the alert rules file"),
        "Every Prometheus metric of driftloop starts with `driftloop_` and is defined in one module, so that "
        "the alert rules, the dashboards and the tests use the same names.",
    ]
    for group in groups:
        title = group.factory.removesuffix("_metrics").replace("_", " ").capitalize()
        where = f" Scraped from {SCRAPED_FROM[group.factory]}." if group.factory in SCRAPED_FROM else ""
        parts += [f"## {title} {{#{group.factory}}}\n\n{prose(group.doc)}{where} Created by "
                  f"{code('driftloop.metrics.' + group.factory + '()')}.", metrics_table(group)]
    unbound = [name for name in metric_names(module) if name not in listed]
    if unbound:
        parts.append("## Other names\n\nDefined in `driftloop.metrics` but created elsewhere: "
                     + ", ".join(code(name) for name in unbound) + ".")
    parts.append(alerts_section(alert_rules(rules_file), rules_source))
    return "\n\n".join(parts) + "\n"
