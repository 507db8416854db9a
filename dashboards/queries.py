"""The PromQL behind a dashboard's panels, with Grafana's variables resolved, run against a real Prometheus."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx

# What Grafana substitutes for its built-in interval variables, at a scale that suits a short test run
# (rate windows must span at least two scrapes). Callers override any of them through `values`.
BUILTIN_VALUES: dict[str, str] = {
    "__rate_interval": "1m",
    "__interval": "1m",
    "__interval_ms": "60000",
    "__range": "1h",
    "__range_s": "3600",
    "__range_ms": "3600000",
}

# $name, ${name}, ${name:format} and the deprecated [[name]]; `\w+` takes the whole name, so $__rate_interval
# is never read as $__rate.
VARIABLE = re.compile(r"\$\{(?P<braced>\w+)(?::[^}]*)?\}|\$(?P<plain>\w+)|\[\[(?P<old>\w+)(?::[^\]]*)?\]\]")


class QueryError(RuntimeError):
    """A panel query that Prometheus refused or could not answer; the message names the panel and the query."""


def _panels(panels: list[dict]) -> Iterator[dict]:
    """Every panel of `panels`, rows' nested panels included, in dashboard order."""
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels") or [])


def panel_queries(dashboard: dict) -> list[tuple[str, str]]:
    """(panel title, PromQL expr) for every target of every panel, including panels nested in rows."""
    return [(panel.get("title", ""), target.get("expr", ""))
            for panel in _panels(dashboard.get("panels") or [])
            for target in panel.get("targets") or []]


def resolve_variables(expr: str, values: dict[str, str]) -> str:
    """`expr` with every Grafana variable ($model, ${model}, $__rate_interval, ...) replaced by its value.

    Raises ValueError naming a variable that `values` lacks, rather than sending Prometheus a `$` it cannot parse.
    """
    def value(match: re.Match) -> str:
        name = match.group("braced") or match.group("plain") or match.group("old")
        if name not in values:
            raise ValueError(f"no value for the variable ${name} in {expr!r}: pass it in values")
        return values[name]

    return VARIABLE.sub(value, expr)


def variable_defaults(dashboard: dict) -> dict[str, str]:
    """What Grafana would use for each template variable on first load: its "All" value, else its current value."""
    defaults: dict[str, str] = {}
    for variable in (dashboard.get("templating") or {}).get("list") or []:
        current = (variable.get("current") or {}).get("value")
        if variable.get("includeAll") and variable.get("allValue"):
            defaults[variable["name"]] = variable["allValue"]
        elif isinstance(current, str):
            defaults[variable["name"]] = current
    return defaults


def instant_query(client: httpx.Client, prometheus_url: str, expr: str) -> int:
    """Run `expr` as an instant query; return how many series (or 1 for a scalar or string) it gave."""
    response = client.get(f"{prometheus_url.rstrip('/')}/api/v1/query", params={"query": expr})
    try:
        body = response.json()
    except ValueError:
        raise QueryError(f"HTTP {response.status_code}: {response.text[:200]}") from None
    if response.status_code != 200 or body.get("status") != "success":
        raise QueryError(f"{body.get('errorType', 'error')}: {body.get('error', response.text[:200])}")
    data = body["data"]
    return len(data["result"]) if data["resultType"] in ("vector", "matrix") else 1


def query_all(prometheus_url: str, dashboard: dict, values: dict[str, str] | None = None,
              timeout_s: float = 10) -> dict[str, int]:
    """Run every panel query as an instant query; return {"<title>: <expr>": number of series returned}.

    Variables take `values` first, then the dashboard's defaults ("All" for `model`), then BUILTIN_VALUES.
    Raises QueryError naming the panel and the query on the first one Prometheus rejects.
    """
    resolved = {**BUILTIN_VALUES, **variable_defaults(dashboard), **(values or {})}
    counts: dict[str, int] = {}
    with httpx.Client(timeout=timeout_s) as client:
        for title, expr in panel_queries(dashboard):
            key = f"{title}: {expr}"
            try:
                counts[key] = instant_query(client, prometheus_url, resolve_variables(expr, resolved))
            except (QueryError, ValueError, httpx.HTTPError) as error:
                raise QueryError(f"panel {title!r}, query {expr!r} failed: {error}") from error
    return counts
