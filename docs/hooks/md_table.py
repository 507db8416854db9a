"""Markdown helpers the generated reference pages share: table cells, inline code, JSON values."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

CODE_SPAN = re.compile(r"(`[^`]*`)")


def prose(text: str) -> str:
    """Plain text (a description, a help string) as Markdown: code spans kept; outside them `<`, `*` and braces
    escaped so that `<run key>`, `*/15` or `{"rows": ...}` print as written (attr_list reads `{...}` after a code
    span as attributes)."""
    parts = CODE_SPAN.split(text)
    for index in range(0, len(parts), 2):
        parts[index] = parts[index].replace("<", "&lt;").replace("*", "\\*").replace("{", "&#123;") \
            .replace("}", "&#125;")
    return "".join(parts)


def cell(text: object) -> str:
    """`text` fit for one table cell: on one line, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def code(text: object) -> str:
    """`text` as inline code that survives backticks inside it."""
    text = str(text)
    fence = "``" if "`" in text else "`"
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def table(header: Iterable[str], rows: Iterable[Iterable[object]]) -> str:
    """A Markdown table; every cell already formatted (use cell() for free text)."""
    head = list(header)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def json_value(value: Any) -> str:
    """A value as JSON (the way YAML reads it too: null, true, "7D", [1, 2])."""
    return json.dumps(value, ensure_ascii=False)


def generated_note(source: str) -> str:
    """The line that opens every generated page: where it comes from and that it is not edited by hand."""
    return (f"!!! note \"Generated\"\n    This page is generated from {source} at every `mkdocs build` "
            "(`docs/hooks/reference.py`); edit the code, not the page.\n")
