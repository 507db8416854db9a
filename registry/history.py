"""Champion history: rollback to an earlier champion, and the overview of every version (`driftloop models`).

The history is the registered-model tag `champion.history` (registry/store.py `promote` writes it). Replaying it
gives the champion stack: a promotion pushes a version, a rollback pops back to its target. So a rollback returns
to the champion before the current one, a second rollback goes one further back, and a version rolled back from
is not returned to by a plain rollback (only with `to_version`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from driftloop.config import Config
from driftloop.errors import RegistryError
from driftloop.registry.store import (
    CHALLENGER,
    CHAMPION,
    alias_version,
    baseline_figures,
    champion_history,
    list_versions,
    model_aliases,
    now_iso,
    promote,
    tag_version,
)

if TYPE_CHECKING:
    from rich.table import Table

# Lineage tags shown by `driftloop models` (registry/lineage.py writes them at registration).
LINEAGE_KEYS = ("data.rows", "data.start", "data.end", "data.fingerprint", "validation.success", "config.hash",
                "code.version", "prefect.flow_run_id", "parent.champion")


@dataclass(frozen=True)
class RollbackResult:
    """A champion move back to an earlier version."""

    from_version: str
    to_version: str
    reason: str


def champion_stack(history: list[dict], current: str | None) -> list[str]:
    """Champions in the order they took over, the current one last, with rolled-back ones removed."""
    stack: list[str] = []
    for entry in history:
        version = str(entry["version"])
        if entry.get("event") == "rollback" and version in stack:
            del stack[len(stack) - stack[::-1].index(version):]
        elif not stack or stack[-1] != version:
            stack.append(version)
    if current is not None and (not stack or stack[-1] != current):
        stack.append(current)  # the alias was moved by hand, outside the history
    return stack


def _target(config: Config, history: list[dict], stack: list[str], current: str, to_version: str | None) -> str:
    """Where a rollback goes, or RegistryError saying why it cannot."""
    name = config.model.name
    earlier = sorted({str(e["version"]) for e in history} - {current}, key=int)
    if to_version is None:
        if len(stack) >= 2:
            return stack[-2]
        hint = f"; pass --to one of {', '.join(earlier)}" if earlier else ""
        raise RegistryError(f"model {name}: no champion before version {current} is recorded, "
                            f"nothing to roll back to{hint}")
    if to_version == current:
        raise RegistryError(f"model {name}: version {to_version} is the champion already")
    if to_version not in {str(v.version) for v in list_versions(config)}:
        raise RegistryError(f"model {name} has no version {to_version}; see `driftloop models`")
    if to_version not in earlier:
        raise RegistryError(f"model {name}: version {to_version} was never champion; rollback returns only to "
                            f"an earlier champion ({', '.join(earlier) or 'none recorded'})")
    return to_version


def rollback(config: Config, to_version: str | None = None) -> RollbackResult:
    """Move `champion` back to the previous champion, or to `to_version` (which must have been champion before).

    Records the move in the history and tags both versions (rollback.from/rollback.at on the new champion,
    rollback.to/rollback.at on the old one). The model server follows the alias by itself. Raises RegistryError
    when there is no champion, no earlier one, or `to_version` does not exist or was never champion.
    """
    current = alias_version(config, CHAMPION)
    if current is None:
        raise RegistryError(f"model {config.model.name} has no champion: nothing to roll back")
    history = champion_history(config)
    target = _target(config, history, champion_stack(history, current), current, to_version)
    reason = f"rolled back from version {current}"
    promote(config, target, reason, event="rollback")
    at = now_iso()
    tag_version(config, target, {"rollback.from": current, "rollback.at": at})
    tag_version(config, current, {"rollback.to": target, "rollback.at": at})
    return RollbackResult(current, target, reason)


def _figure(key: str, value: str) -> float | int | str:
    """A gate tag's value: scores, row counts and the margin as numbers, the rest (versions included) as text."""
    if not (key.endswith(("_score", "_rows")) or key == "margin"):
        return value
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def _created(millis: int | None) -> str | None:
    return None if millis is None else datetime.fromtimestamp(millis / 1000, UTC).isoformat(timespec="seconds")


def model_overview(config: Config) -> dict:
    """Every version with aliases, creation time, gate figures and lineage, plus the champion history.

    The `driftloop models --json` object: {"model", "champion", "challenger", "versions": [...], "history": [...]}.
    """
    aliases = model_aliases(config)
    versions = []
    for mv in list_versions(config):
        tags = dict(mv.tags)
        gate = {k[len("gate."):]: _figure(k[len("gate."):], v) for k, v in sorted(tags.items())
                if k.startswith("gate.") and k != "gate.details"}
        version = str(mv.version)
        baseline, figures, network = baseline_figures(tags)
        versions.append({"version": version, "aliases": sorted(a for a, v in aliases.items() if v == version),
                         "created": _created(mv.creation_timestamp), "gate": gate or None,
                         "lineage": {k: tags[k] for k in LINEAGE_KEYS if k in tags},
                         "champion": {k: tags[f"champion.{k}"] for k in ("since", "until") if f"champion.{k}" in tags},
                         "rollback": {k: tags[f"rollback.{k}"] for k in ("from", "to", "at")
                                      if f"rollback.{k}" in tags},
                         "holdout": network or None,
                         "baseline": {"model": baseline, "metrics": figures} if baseline else None})
    return {"model": config.model.name, "champion": aliases.get(CHAMPION), "challenger": aliases.get(CHALLENGER),
            "versions": versions, "history": champion_history(config) if versions else []}


def _gate_cell(gate: dict | None) -> str:
    """A version's gate decision and figures in a few words."""
    if not gate:
        return "-"
    words = [str(gate.get("decision", "?"))]
    if "challenger_score" in gate and "champion_score" in gate:
        words.append(f"{gate.get('metric', '')} {gate['challenger_score']:.4f} vs v{gate.get('champion_version', '?')}"
                     f" {gate['champion_score']:.4f} ({gate.get('window_rows', '?')} rows)")
    if "holdout_challenger_score" in gate and "holdout_champion_score" in gate:
        words.append(f"holdout {gate['holdout_challenger_score']:.4f} vs {gate['holdout_champion_score']:.4f}")
    if "failed_slices" in gate:
        words.append(f"failed slices {gate['failed_slices']}")
    if len(words) == 1 and "reason" in gate:
        words.append(str(gate["reason"]))
    return "; ".join(words)


def _baseline_cell(version: dict, metric: str | None) -> str:
    """The network's holdout figure beside its baseline's ("auc 0.702 vs HistGB 0.717"); "-" without a baseline."""
    baseline, network = version.get("baseline"), version.get("holdout") or {}
    if not baseline:
        return "-"
    figures = baseline["metrics"]
    metric = metric if metric in figures else next(iter(sorted(figures)), None)
    if metric is None:
        return baseline["model"]
    own = f"{network[metric]:.4f}" if metric in network else "?"
    short = baseline["model"].replace("HistGradientBoosting", "HistGB")
    return f"{metric} {own} vs {short} {figures[metric]:.4f}"


def overview_table(overview: dict) -> Table:
    """The overview as a rich table, newest version first."""
    from rich.table import Table

    table = Table(title=f"model {overview['model']}")
    for column in ("version", "aliases", "created", "gate", "holdout vs baseline", "data", "fingerprint", "config",
                   "parent"):
        table.add_column(column, overflow="fold")
    for v in reversed(overview["versions"]):
        metric = (v.get("gate") or {}).get("metric")
        lineage = v["lineage"]
        span = f"{lineage.get('data.start', '')[:10]}..{lineage.get('data.end', '')[:10]}".strip(".")
        data = f"{lineage.get('data.rows', '?')} rows" + (f" {span}" if span else "")
        table.add_row(v["version"], ", ".join(v["aliases"]) or "-", v["created"] or "-", _gate_cell(v["gate"]),
                      _baseline_cell(v, metric if isinstance(metric, str) else None), data,
                      lineage.get("data.fingerprint", "-"), lineage.get("config.hash", "-"),
                      lineage.get("parent.champion") or "-")
    return table


def history_lines(overview: dict) -> list[str]:
    """The champion history, one line per move."""
    lines = []
    for entry in overview["history"]:
        before = f"v{entry['previous']} " if entry.get("previous") else ""
        lines.append(f"{entry.get('at', '?')}  {before}→ v{entry['version']}  {entry.get('event', '')}: "
                     f"{entry.get('reason', '')}")
    return lines
