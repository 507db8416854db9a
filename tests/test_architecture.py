"""The import contracts in pyproject.toml hold on the tree, and fail when someone breaks the layering."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import driftloop

REPO = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
STAGES = ("data_checks", "training", "registry", "serving", "monitoring", "flows", "stack", "dashboards")


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


@pytest.mark.slow
def test_the_wheel_installs_one_package_and_no_stage_at_the_top(tmp_path: Path) -> None:
    """`pip install .` writes driftloop (the stages as its subpackages) and nothing else into site-packages."""
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(tmp_path),
                            str(REPO)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("driftloop-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    assert {name.split("/")[0] for name in names} == {"driftloop", wheel.name.split("-py3")[0] + ".dist-info"}
    for stage in STAGES:
        assert f"driftloop/{stage}/__init__.py" in names
    for data in ("driftloop/configs/flights.yaml", "driftloop/monitoring/rules/driftloop.rules.yml",
                 "driftloop/dashboards/json/driftloop.json"):
        assert data in names


@pytest.mark.slow
def test_outside_the_repository_stages_import_only_under_driftloop(tmp_path: Path) -> None:
    probe = ("import importlib.util, json; print(json.dumps({name: importlib.util.find_spec(name) is not None "
             f"for name in {[*STAGES, *(f'driftloop.{stage}' for stage in STAGES)]!r}}}))")
    found = json.loads(subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                                      check=True, timeout=60).stdout)
    assert found == {**dict.fromkeys(STAGES, False), **{f"driftloop.{stage}": True for stage in STAGES}}
