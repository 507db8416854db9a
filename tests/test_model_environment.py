"""The logged model's environment: a wheel of the installed driftloop inside the model, pinned requirements, and a
registered version that loads and predicts in a fresh virtual environment built only from those requirements."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
import uuid
import zipfile
from importlib.metadata import distribution, version
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from driftloop.config import Config
from driftloop.env import TELEMETRY_OFF
from driftloop.registry.packaging import build_wheel, model_requirements, package_root
from driftloop.registry.store import mlflow_client, register
from driftloop.training.artifacts import predict
from driftloop.training.trainer import TrainResult
from tests.helpers import lineage_for

# pip resolving and unpacking torch, MLflow, Prefect, GX and Evidently: about 2 minutes from a local package cache.
INSTALL_TIMEOUT_S = 1200
# Loads the model with MLflow's own loader in the fresh environment and scores the rows given.
LOAD_AND_PREDICT = """
import json, sys
import mlflow.pyfunc, pandas as pd
import driftloop
model = mlflow.pyfunc.load_model(sys.argv[1])
rows = pd.read_parquet(sys.argv[2])
print(json.dumps({"driftloop": driftloop.__file__, "predictions": [float(x) for x in model.predict(rows)]}))
"""


def _requirement_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def test_wheel_holds_the_installed_package_with_a_valid_record(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path)
    assert build_wheel(tmp_path) == wheel  # same content, same name: cached, not rebuilt
    name, release, build, *_ = wheel.name.split("-")
    assert (name, release) == ("driftloop", distribution("driftloop").version) and build[0].isdigit()
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        info = f"driftloop-{release}.dist-info"
        assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
        assert not [n for n in names if not n.startswith(("driftloop/", f"{info}/"))]
        installed = {p.relative_to(package_root()).as_posix() for p in package_root().rglob("*.py")
                     if "__pycache__" not in p.parts}
        assert {n.removeprefix("driftloop/") for n in names if n.endswith(".py")} == installed
        record = [row.split(",") for row in archive.read(f"{info}/RECORD").decode().splitlines()]
        assert sorted(row[0] for row in record) == sorted(names)
        for path, digest, size in record:
            if path == f"{info}/RECORD":
                assert digest == size == ""
                continue
            data = archive.read(path)
            expected = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            assert digest == f"sha256={expected}" and int(size) == len(data)
        metadata = archive.read(f"{info}/METADATA").decode()
        requires = [line.removeprefix("Requires-Dist: ") for line in metadata.splitlines()
                    if line.startswith("Requires-Dist: ")]
        assert requires == distribution("driftloop").metadata.get_all("Requires-Dist")
        assert f"Build: {build}" in archive.read(f"{info}/WHEEL").decode()
        assert "driftloop = driftloop.cli:run" in archive.read(f"{info}/entry_points.txt").decode()


def test_requirements_pin_what_the_pyfunc_imports(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path)
    requirements = model_requirements(wheel)
    assert f"torch=={version('torch').split('+')[0]}" in requirements
    assert f"mlflow=={version('mlflow')}" in requirements and f"pandas=={version('pandas')}" in requirements
    assert requirements[-1] == f"artifacts/{wheel.name}"
    assert "driftloop" not in requirements and not [r for r in requirements if "+" in r]


@pytest.mark.slow
def test_registered_model_loads_in_a_fresh_virtualenv(config: Config, trained: TrainResult,
                                                      flights_jan: pd.DataFrame, tmp_path: Path,
                                                      record_property: pytest.RecordProperty,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow

    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    registered = register(config, trained, lineage_for(config, flights_jan), flights_jan)
    mlflow_client(config)
    model_dir = Path(mlflow.artifacts.download_artifacts(f"models:/{config.model.name}/{registered.version}",
                                                         dst_path=str(tmp_path / "download")))
    lines = _requirement_lines((model_dir / "requirements.txt").read_text())
    assert "driftloop" not in lines and not [line for line in lines if line.startswith("driftloop")]
    wheel_lines = [line for line in lines if line.endswith(".whl")]
    assert len(wheel_lines) == 1 and (model_dir / wheel_lines[0]).is_file()
    assert f"torch=={version('torch').split('+')[0]}" in lines

    rows = flights_jan[config.data.features].tail(20).astype({c: "float64" for c in config.data.numerical})
    rows = rows.reset_index(drop=True)
    rows.to_parquet(tmp_path / "rows.parquet", index=False)
    here = mlflow.pyfunc.load_model(str(model_dir)).predict(rows)
    np.testing.assert_allclose(here, predict(trained.model(), trained.spec, rows), atol=1e-6)

    # The fresh environment: no system site packages, nothing of this process's paths.
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"}}
    env.update(TELEMETRY_OFF)
    venv = tmp_path / "venv"
    python = venv / "bin" / "python"
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=env, timeout=120)
    # As MLflow restores a model's environment (mlflow.utils.virtualenv._create_virtualenv): the build dependencies,
    # then the dependencies, each from a requirements file written in a folder of links to the model folder's items,
    # pip's working directory, so that the wheel's relative path resolves there.
    python_env = yaml.safe_load((model_dir / "python_env.yaml").read_text())
    assert python_env["dependencies"] == ["-r requirements.txt"]
    assert python_env["python"] == platform.python_version()  # MLflow would fetch this Python: it is this one
    for deps in filter(None, [python_env.get("build_dependencies"), python_env["dependencies"]]):
        work = tmp_path / f"install-{uuid.uuid4().hex[:8]}"
        work.mkdir()
        for item in model_dir.iterdir():
            (work / item.name).symlink_to(item)
        requirements_file = f"requirements.{uuid.uuid4().hex}.txt"
        (work / requirements_file).write_text("\n".join(deps))
        done = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "-r", requirements_file], cwd=work,
                              env=env, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    install_s = time.perf_counter() - started
    record_property("fresh_venv_install_seconds", round(install_s, 1))
    print(f"fresh venv: created and installed in {install_s:.1f} s")

    freeze = subprocess.run([str(python), "-m", "pip", "freeze"], env=env, capture_output=True, text=True,
                            timeout=120, check=True).stdout
    assert f"torch=={version('torch')}" in freeze.splitlines()  # the same build (here the CPU one), not another
    script = tmp_path / "load_and_predict.py"
    script.write_text(LOAD_AND_PREDICT)
    done = subprocess.run([str(python), str(script), str(model_dir), str(tmp_path / "rows.parquet")], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(answer["driftloop"]).is_relative_to(venv)  # the wheel's driftloop, not this checkout's
    assert (venv / "bin" / "driftloop").is_file()  # the wheel's entry points came along
    np.testing.assert_allclose(answer["predictions"], here, rtol=0, atol=1e-6)
