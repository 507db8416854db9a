"""`driftloop quarantine list`: the quarantined batches, oldest first, with their reasons and whether approved."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from driftloop.config import Config
from driftloop.data_checks.approvals import find_approval
from driftloop.data_checks.quarantine import list_quarantine

if TYPE_CHECKING:
    from rich.table import Table

# Reasons shown per batch in the table; `--json` and the batch's report.json hold them all.
REASONS_SHOWN = 2


def _fingerprint(entry: dict) -> str:
    """The batch's fingerprint: the entry's own, else the end of its folder name (<time>-<name>-<fingerprint>)."""
    return str(entry.get("fingerprint") or Path(entry["path"]).name.rsplit("-", 1)[-1])


def is_approved(config: Config, entry: dict) -> bool:
    """Whether a person approved the quarantined batch (`driftloop approve`): the entry's own flag, else the
    approval of its fingerprint (data_checks/approvals.py)."""
    if "approved" in entry:
        return bool(entry["approved"])
    return find_approval(config, _fingerprint(entry)) is not None


def quarantine_entries(config: Config) -> list[dict]:
    """Quarantined batches, oldest first: list_quarantine's entries with `approved` (the `--json` list)."""
    return [{**entry, "approved": is_approved(config, entry)} for entry in list_quarantine(config)]


def quarantine_table(entries: list[dict]) -> Table:
    """The entries as a rich table: name, time, rows, the first reasons, approved."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="quarantined batches (oldest first)")
    for column in ("name", "time", "rows", "reasons", "approved"):
        table.add_column(column, overflow="fold")
    for entry in entries:
        reasons = entry.get("reasons") or []
        shown = "\n".join(reasons[:REASONS_SHOWN])
        if len(reasons) > REASONS_SHOWN:
            shown += f"\n… {len(reasons) - REASONS_SHOWN} more: {entry['path']}"
        rows = entry.get("rows")
        # Reasons quote the data's values: escaped, so that a bracket is never taken for rich markup.
        table.add_row(escape(str(entry.get("name"))), str(entry.get("time") or "?")[:19],
                      f"{rows:,}" if rows else "?", escape(shown) or "-", "yes" if entry["approved"] else "no")
    return table
