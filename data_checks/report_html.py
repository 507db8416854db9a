"""The HTML report of one validation: our own self-contained page, plus GX's Data Docs page beside it.

Our page needs no network (the machines running driftloop often have none) and is what
`ValidationReport.report` points to. GX's page (`<name>.gx.html`) is GX's own Data Docs rendering
of the same result; it loads its styles from public CDNs, so offline it shows unstyled.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

from great_expectations.core import ExpectationSuiteValidationResult
from great_expectations.render.renderer import ValidationResultsPageRenderer
from great_expectations.render.view import DefaultJinjaPageView

GX_PAGE_SUFFIX = ".gx.html"

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; }
h1 { font-size: 1.4rem; } p.summary { font-size: 1.05rem; }
table { border-collapse: collapse; width: 100%; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.3rem 0.5rem; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
tr.fail td.status { background: #f8d7da; font-weight: bold; }
tr.pass td.status { background: #d4edda; }
tr.skipped td.status { background: #fff3cd; }
"""


@dataclass(frozen=True)
class Check:
    """One expectation's outcome, flattened from GX's result for the verdict and the report."""

    expectation: str
    column: str | None
    success: bool
    unexpected: int
    observed: str
    expected: str
    errored: bool
    reason: str
    skipped: bool = False  # GX could not evaluate it because its column is missing or mistyped


def write_report(
    path: Path, *, name: str, summary: str, checks: list[Check], result: ExpectationSuiteValidationResult
) -> Path:
    """Write our page at `path` and GX's Data Docs page beside it; return `path`."""
    gx_page = path.with_name(path.name.removesuffix(".html") + GX_PAGE_SUFFIX)
    gx_note = write_gx_page(gx_page, result)
    path.write_text(render_page(name, summary, checks, gx_page.name, gx_note), encoding="utf-8")
    return path


def write_gx_page(path: Path, result: ExpectationSuiteValidationResult) -> str | None:
    """Render GX's Data Docs validation page; on a renderer failure say why instead of failing.

    The page is a companion view: a bug in GX's renderers must not turn a validation verdict into a
    crash, so any exception is caught and reported in our page.
    """
    try:
        document = ValidationResultsPageRenderer().render(result)
        path.write_text(DefaultJinjaPageView().render(document), encoding="utf-8")
    except Exception as error:  # noqa: BLE001 -- see docstring
        return f"GX Data Docs page could not be rendered: {type(error).__name__}: {error}"
    return None


def render_page(name: str, summary: str, checks: list[Check], gx_page: str, gx_note: str | None) -> str:
    """Our report: the verdict on top, then one table row per expectation, failures first."""
    ordered = sorted(checks, key=lambda c: c.success)
    rows = "\n".join(_row(c) for c in ordered)
    escape = html.escape
    companion = (f'<p>{escape(gx_note)}</p>' if gx_note
                 else f'<p>Great Expectations Data Docs view: <a href="{escape(gx_page)}">{escape(gx_page)}</a></p>')
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>driftloop validation: {escape(name)}</title><style>{STYLE}</style></head>
<body>
<h1>driftloop validation: {escape(name)}</h1>
<p class="summary">{escape(summary)}</p>
{companion}
<table>
<tr><th>status</th><th>expectation</th><th>column</th><th>expected</th><th>observed</th><th>unexpected</th>
<th>reason</th></tr>
{rows}
</table>
</body></html>
"""


def _row(check: Check) -> str:
    """One table row; values are escaped (they come from the data)."""
    status = "pass" if check.success else "skipped" if check.skipped else "fail"
    cells = [status, check.expectation, check.column or "(table)", check.expected, check.observed,
             str(check.unexpected), check.reason]
    tds = "".join(f'<td class="status">{html.escape(v)}</td>' if i == 0 else f"<td>{html.escape(v)}</td>"
                  for i, v in enumerate(cells))
    return f'<tr class="{status}">{tds}</tr>'
