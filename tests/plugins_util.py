"""Helpers for the plugin tests: installing test plugins with pip, making speech.

The tiny plugin distributions under `tests/plugins/` are installed with the
real pip into a directory of their own (`--target`), never into the shared
environment, and commands that should see them run with that directory on
PYTHONPATH: entry points are found there as in site-packages. pip gets a
ready wheel, built here from the distribution's `pyproject.toml`, so that
no build backend has to be fetched and the tests stay off the network.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

HERE = Path(__file__).parent
TEST_PLUGINS = HERE / "plugins"


def build_wheel(source: Path, out_dir: Path) -> Path:
    """A pure-Python wheel of the single-module distribution at `source`."""
    project = tomllib.loads((source / "pyproject.toml").read_text())["project"]
    name, version = project["name"], project["version"]
    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    files: dict[str, bytes] = {}
    for module in sorted(source.glob("*.py")):
        files[module.name] = module.read_bytes()
    entry_points = "".join(
        f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in points.items()) + "\n"
        for group, points in project.get("entry-points", {}).items()
    )
    files[f"{info}/METADATA"] = (
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
        f"Summary: {project.get('description', '')}\n"
    ).encode()
    files[f"{info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: recflow-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    files[f"{info}/entry_points.txt"] = entry_points.encode()
    record = [f"{path},sha256={_digest(data)},{len(data)}" for path, data in files.items()]
    files[f"{info}/RECORD"] = ("\n".join([*record, f"{info}/RECORD,,"]) + "\n").encode()
    wheel = out_dir / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
    return wheel


def pip_install(names: Sequence[str], target: Path) -> Path:
    """pip-install the test plugins `names` (dirs of tests/plugins) into `target`."""
    wheels_dir = target.parent / (target.name + "-wheels")
    wheels_dir.mkdir(parents=True, exist_ok=True)
    wheels = [str(build_wheel(TEST_PLUGINS / name, wheels_dir)) for name in names]
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index"]
        + ["--target", str(target), *wheels],
        check=True,
        capture_output=True,
    )
    return target


def recflow(
    *args: str, path: Sequence[Path] = (), env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the `recflow` command line with `path` prepended to PYTHONPATH."""
    pythonpath = os.pathsep.join([*(str(p) for p in path), os.environ.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-c", "from recflow.cli import main; main()", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": pythonpath.strip(os.pathsep), **(env or {})},
        timeout=120,
    )


def plugins_json(path: Sequence[Path] = ()) -> dict[str, dict]:
    """`recflow plugins --json`, keyed by plugin name."""
    done = recflow("plugins", "--json", path=path)
    assert done.returncode == 0, done.stderr
    return {entry["name"]: entry for entry in json.loads(done.stdout)}


def speech(text: str, path: Path) -> Path:
    """`text` spoken by espeak-ng, as a provider would send it: 8 kHz mono 16-bit WAV.

    The klatt2 voice at 130 words a minute is the one pocketsphinx
    understands best once the audio is cut down to telephone bandwidth.
    """
    wide = path.with_suffix(".wide.wav")
    subprocess.run(
        ["espeak-ng", "-v", "en-us+klatt2", "-s", "130", "-w", str(wide), text], check=True
    )
    subprocess.run(
        ["sox", "-G", str(wide), "-r", "8000", "-c", "1", "-b", "16", str(path)], check=True
    )
    wide.unlink()
    return path


def _digest(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
