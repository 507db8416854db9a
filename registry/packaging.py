"""The logged model's environment: a wheel of the installed driftloop and the pinned requirements that name it.

driftloop is not on the package index, so each registered version carries a wheel of the driftloop it was
trained with, built from the installed package itself (editable link tree or site-packages alike, standard
library only), and requirements that pin what the pyfunc imports. MLflow restores a model's environment by
running `pip install -r requirements.txt` with the model folder's contents as working directory, so the wheel
is named by a path relative to that folder.
"""

from __future__ import annotations

import base64
import hashlib
import io
import zipfile
from collections.abc import Iterable
from importlib.metadata import distribution, version
from pathlib import Path

DIST = "driftloop"
# What the pyfunc (registry/pyfunc_model.py and training.artifacts) imports, pinned as installed. torch is pinned
# without its local label (+cpu): the index resolves the build for the target machine, never another version.
PINNED = ("torch", "safetensors", "pandas", "numpy", "mlflow", "pydantic", "pyyaml")
# Where pyfunc artifacts land in an MLflow model folder (mlflow.pyfunc puts each artifact file there).
ARTIFACTS_DIR = "artifacts"
# Fixed zip times and modes: the same files always give the same wheel, byte for byte.
ZIP_TIME = (1980, 1, 1, 0, 0, 0)
FILE_MODE = 0o644 << 16
SKIPPED_DIRS = {"__pycache__"}
SKIPPED_SUFFIXES = {".pyc", ".pyo"}


def package_root() -> Path:
    """The folder the installed `driftloop` package imports from (the strict editable link tree or site-packages)."""
    import driftloop

    return Path(driftloop.__path__[0])


def package_files(root: Path) -> list[tuple[str, Path]]:
    """Every file of the installed package as (path inside the wheel, file on disk), sorted; no bytecode."""
    found = []
    for path in root.rglob("*"):
        relative = path.relative_to(root)
        if SKIPPED_DIRS.intersection(relative.parts) or path.suffix in SKIPPED_SUFFIXES or not path.is_file():
            continue
        found.append((f"{DIST}/{relative.as_posix()}", path))
    return sorted(found)


def metadata_text() -> str:
    """Core metadata of the installed distribution: name, version, Python range, extras and Requires-Dist."""
    meta = distribution(DIST).metadata
    lines = ["Metadata-Version: 2.1", f"Name: {meta['Name']}", f"Version: {meta['Version']}"]
    for field in ("Summary", "Requires-Python"):
        if meta.get(field):
            lines.append(f"{field}: {meta[field]}")
    lines += [f"Provides-Extra: {extra}" for extra in meta.get_all("Provides-Extra") or []]
    lines += [f"Requires-Dist: {requirement}" for requirement in meta.get_all("Requires-Dist") or []]
    return "\n".join(lines) + "\n"


def entry_points_text() -> str | None:
    """The installed distribution's entry points (the `driftloop` console script), when it records any."""
    return distribution(DIST).read_text("entry_points.txt")


def record_line(name: str, data: bytes) -> str:
    """One RECORD row (PEP 376/427): path, urlsafe base64 sha256 without padding, size."""
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode("ascii")
    return f"{name},sha256={digest},{len(data)}"


def content_hash(entries: Iterable[tuple[str, bytes]]) -> str:
    """A short sha256 over names and contents: it tells one build of the package from another."""
    digest = hashlib.sha256()
    for name, data in entries:
        digest.update(name.encode("utf-8") + b"\0" + hashlib.sha256(data).digest())
    return digest.hexdigest()[:12]


def wheel_bytes(entries: list[tuple[str, bytes]]) -> bytes:
    """A zip of `entries` (the dist-info's RECORD last), with fixed times and modes so equal inputs give equal bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries:
            info = zipfile.ZipInfo(name, date_time=ZIP_TIME)
            info.external_attr = FILE_MODE
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
    return buffer.getvalue()


def build_wheel(target_dir: Path) -> Path:
    """Write a wheel of the installed driftloop into `target_dir` (kept when one of the same content is there).

    The build tag is the content hash (`driftloop-0.1.0-0<hash>-py3-none-any.whl`): each distinct build has its own
    file name, so its requirement line differs too, and MLflow, which names its cached environments after the
    requirement lines, never reuses an environment built with other driftloop code.
    """
    meta = distribution(DIST).metadata
    name, release = meta["Name"].replace("-", "_"), meta["Version"]
    info = f"{name}-{release}.dist-info"
    entries = [(path, file.read_bytes()) for path, file in package_files(package_root())]
    entries.append((f"{info}/METADATA", metadata_text().encode("utf-8")))
    entry_points = entry_points_text()
    if entry_points:
        entries.append((f"{info}/entry_points.txt", entry_points.encode("utf-8")))
    build = f"0{content_hash(entries)}"
    wheel_meta = f"Wheel-Version: 1.0\nGenerator: driftloop.registry.packaging\nRoot-Is-Purelib: true\n" \
                 f"Build: {build}\nTag: py3-none-any\n"
    entries.append((f"{info}/WHEEL", wheel_meta.encode("utf-8")))
    record = [record_line(path, data) for path, data in entries] + [f"{info}/RECORD,,"]
    entries.append((f"{info}/RECORD", ("\n".join(record) + "\n").encode("utf-8")))
    target = Path(target_dir) / f"{name}-{release}-{build}-py3-none-any.whl"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.with_name(f".{target.name}.partial")
        staging.write_bytes(wheel_bytes(entries))
        staging.replace(target)
    return target


def pinned_requirements() -> list[str]:
    """`name==version` for each package the pyfunc imports, as installed here, local labels (+cpu) dropped."""
    return [f"{package}=={version(package).split('+')[0]}" for package in PINNED]


def model_requirements(wheel: Path) -> list[str]:
    """The logged model's pip requirements: the pins, then the wheel by its path inside the model folder."""
    return [*pinned_requirements(), f"{ARTIFACTS_DIR}/{Path(wheel).name}"]
