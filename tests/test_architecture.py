"""The import contracts in pyproject.toml hold on the tree, and fail when someone breaks the layering."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import driftloop

REPO = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_copy(tmp_path: Path, module: str | None = None, line: str = "") -> subprocess.CompletedProcess:
    """`lint-imports` on a copy of the installed package, with `line` appended to `module` (a dotted name) first."""
    root = tmp_path / "site"
    # The installed tree (links in an editable install): copied with the files they point at.
    shutil.copytree(Path(driftloop.__file__).parent, root / "driftloop", symlinks=False,
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    if module is not None:
        target = root.joinpath(*module.split(".")).with_suffix(".py")
        target.write_text(target.read_text() + f"\n{line}\n")
    return subprocess.run([str(LINT_IMPORTS), "--config", str(tmp_path / "pyproject.toml"), "--no-cache"],
                          cwd=tmp_path, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_the_tree_keeps_every_contract(tmp_path: Path) -> None:
    run = lint_copy(tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 broken" in run.stdout


@pytest.mark.slow
@pytest.mark.parametrize(("module", "line", "contract"), [
    ("driftloop.monitoring.drift", "from driftloop.flows import monitoring", "Layers"),
    ("driftloop.monitoring.drift", "import driftloop.training.model", "The monitor knows frames"),
    ("driftloop.config", "from driftloop.registry import store", "Layers"),
    ("driftloop.training.model", "import driftloop.data_checks.suite", "Layers"),
    ("driftloop.registry.gate", "from driftloop.serving import app", "Layers"),
])
def test_an_import_against_the_architecture_breaks_a_contract(tmp_path: Path, module: str, line: str,
                                                               contract: str) -> None:
    run = lint_copy(tmp_path, module, line)
    assert run.returncode == 1, run.stdout + run.stderr
    broken = [text for text in run.stdout.splitlines() if text.endswith("BROKEN")]
    assert any(text.startswith(contract) for text in broken), run.stdout
    assert module in run.stdout
