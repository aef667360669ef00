"""The wheel carries targets/ and calibration/: install it into a fresh venv and run edgekit from elsewhere."""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp / "dist"), str(ROOT)],
        check=True, capture_output=True, timeout=600,
    )
    (wheel,) = (tmp / "dist").glob("edgekit-*.whl")
    venv = tmp / "venv"
    # no pip inside the venv (ensurepip is most of venv's time): this environment's pip installs into it (--python)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    # Dependencies (torch and friends, several hundred MB) are borrowed from this environment by path, not
    # reinstalled: the point is that edgekit itself, with its data, comes from the wheel.
    purelib = Path(subprocess.check_output([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True).strip())
    (purelib / "deps.pth").write_text("\n".join(site.getsitepackages() + [sysconfig.get_paths()["purelib"]]) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--quiet", str(wheel)],
                   check=True, timeout=300)
    return venv


def _run(venv: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    return subprocess.run([str(venv / "bin" / "edgekit"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def test_wheel_lists_targets_from_its_own_data(wheel_venv, tmp_path):
    proc = _run(wheel_venv, "targets", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for name in ("ort-fp32", "ort-int8", "ort-int8-dynamic"):
        assert name in proc.stdout
    where = subprocess.check_output([str(wheel_venv / "bin" / "python"), "-c", "import edgekit, edgekit.resources as r; print(edgekit.__file__); print(r.targets_dir())"], cwd=tmp_path, text=True).split()
    assert str(wheel_venv) in where[0], "edgekit was not imported from the wheel"
    assert where[1].startswith(str(wheel_venv)) and where[1].endswith("_data/targets")


def test_wheel_runs_the_demo_from_another_directory(wheel_venv, tmp_path):
    proc = _run(wheel_venv, "demo", "-o", "demo-out", "--target", "ort-fp32", "--target", "ort-int8", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    manifest = json.loads((tmp_path / "demo-out" / "manifest.json").read_text())
    assert manifest["targets"]["ort-int8"]["status"] == "passed"
    assert "_data/calibration/digits/val.npz" in manifest["config"]["validation"]["data"]
    assert "ort-int8" in proc.stdout and "report:" in proc.stdout
