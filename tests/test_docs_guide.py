"""The bring-your-own-data guide (docs/guide/own-data.md) run as written, so that it cannot rot.

The guide marks its steps with HTML comments (invisible on the site and on GitHub) before fenced blocks:

- `<!-- guide-test: file NAME -->`: the block is written to NAME (the config);
- `<!-- guide-test: run -->`: the block runs in bash and must exit 0;
- `<!-- guide-test: output -->`: every line of the block must be in what the previous `run` printed (stdout and
  stderr), with numbers free to differ in their digits and `…` standing for anything (an `exit N` line, printed by
  the guide's `echo "exit $?"` after a command meant to fail, must match exactly);
- `<!-- guide-test: serve -->`: the block starts the model server in the background; the test waits for /healthz.

The guide's port 8080 is replaced by a free port. The stack step (`driftloop stack up`, eight servers, tested by
tests/test_closed_loop.py) carries no marker and is not run here: it would add about half a minute to a test of
about two.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import REPO, free_port, wait_for_server

GUIDE = REPO / "docs" / "guide" / "own-data.md"
GUIDE_PORT = "8080"
MARKED_BLOCK = re.compile(r"<!-- guide-test: (\w+)(?: (\S+))? -->\n```[^\n]*\n(.*?)\n```", re.DOTALL)
NUMBER = re.compile(r"\d[\d,.]*")
EXIT_LINE = re.compile(r"exit \d+")
# Generous: on two cores shared with other jobs a training has taken minutes; a hung step still fails the test.
STEP_TIMEOUT_S = 600
SERVER_START_TIMEOUT_S = 240


@dataclass(frozen=True)
class Step:
    """One marked block of the guide: what to do with it, its argument (a file name) and its text."""

    kind: str
    argument: str | None
    text: str


def guide_steps(markdown: str) -> list[Step]:
    """The guide's marked blocks, in page order."""
    return [Step(kind, argument, text) for kind, argument, text in MARKED_BLOCK.findall(markdown)]


def line_pattern(expected: str) -> re.Pattern[str]:
    """A printed line as the guide shows it: numbers may differ in their digits, `…` stands for anything; an exit
    code line (`exit 1`, as the guide's `echo "exit $?"` prints it) is matched as it is."""
    if EXIT_LINE.fullmatch(expected.strip()):
        return re.compile(rf"^{re.escape(expected.strip())}$", re.MULTILINE)
    parts = []
    for piece in re.split(r"(…)", expected.strip()):
        if piece == "…":
            parts.append(".*")
            continue
        position = 0
        for number in NUMBER.finditer(piece):
            parts.append(re.escape(piece[position:number.start()]) + r"\d[\d,.]*")
            position = number.end()
        parts.append(re.escape(piece[position:]))
    return re.compile("".join(parts))


def assert_printed(expected_block: str, printed: str, command: str) -> None:
    """Every line of an output block is found in what the command printed."""
    for expected in expected_block.splitlines():
        if expected.strip():
            assert line_pattern(expected).search(printed), (
                f"the guide says\n  {expected}\nbut\n  {command}\nprinted\n{printed[-3000:]}")


def test_line_pattern_lets_digits_differ_but_not_words() -> None:
    pattern = line_pattern("DRIFT: 5 of 8 columns drifted (share 0.62) in 577 rows: age")
    assert pattern.search("DRIFT: 4 of 8 columns drifted (share 0.50) in 1,203 rows: age")
    assert not pattern.search("no drift: 0 of 8 columns drifted (share 0.00) in 577 rows: -")
    assert line_pattern("report: …/reports/x-….html").search("report: /tmp/a/reports/x-2026T1.html")
    assert line_pattern("exit 1").search("…\nexit 1\n") and not line_pattern("exit 1").search("exit 0\n")


def test_the_guide_marks_every_step_the_test_needs() -> None:
    kinds = [step.kind for step in guide_steps(GUIDE.read_text())]
    assert kinds.count("serve") == 1 and "file" in kinds
    assert kinds.count("run") >= 5 and kinds.count("output") == kinds.count("run")
    assert set(kinds) <= {"file", "run", "output", "serve"}


@pytest.mark.slow
def test_the_bring_your_own_data_guide_runs_as_written(tmp_path: Path) -> None:
    port = str(free_port())
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PREFECT_HOME": str(tmp_path / "prefect-home")}
    printed, command, server = "", "", None
    try:
        for step in guide_steps(GUIDE.read_text()):
            text = step.text.replace(GUIDE_PORT, port)
            if step.kind == "file":
                (tmp_path / str(step.argument)).write_text(text + "\n")
            elif step.kind == "run":
                command = text
                result = subprocess.run(["bash", "-c", text], cwd=tmp_path, env=env, capture_output=True, text=True,
                                        timeout=STEP_TIMEOUT_S)
                printed = result.stdout + result.stderr
                assert result.returncode == 0, f"{command}\nexited {result.returncode}:\n{printed[-3000:]}"
            elif step.kind == "output":
                assert_printed(text, printed, command)
            elif step.kind == "serve":
                server = subprocess.Popen(["bash", "-c", f"exec {text}"], cwd=tmp_path, env=env,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                wait_for_server(server, f"http://127.0.0.1:{port}", timeout=SERVER_START_TIMEOUT_S)
    finally:
        if server is not None:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)
    # What the guide says the steps leave behind: the owned suite, the scored file, the drift reports.
    assert (tmp_path / "fair-suite.json").is_file()
    assert (tmp_path / "fair-new-scored.csv").read_text().startswith("respondent,prediction,prediction_id")
    assert len(list((tmp_path / ".driftloop" / "reports" / "drift").glob("fair-*.html"))) == 2
