"""Sanity checks on well-formed data (warnings on the terminal, in the manifest and the report), and an image-folder
build end to end: ort-int8 calibrated from PNGs matches the build calibrated from the same pixels as an .npz."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from conftest import GOOD_CONFIG
from data_files import image_folder
from edgekit.cli import main
from edgekit.config import DataConfig
from edgekit.data import feed_warnings, open_feed
from edgekit.types import TensorSpec

SPEC = (TensorSpec("x", ("batch", 1, 8, 8)),)
ROOT = Path(__file__).resolve().parents[1]


def _feed(path: Path, x: np.ndarray, role: str = "calibration", **cfg):
    np.savez(path, x=x)
    return open_feed(DataConfig(str(path), **cfg), SPEC, role)


def test_the_demo_data_earns_no_warning():
    digits = (TensorSpec("image", ("batch", 1, 8, 8)),)
    cal = open_feed(DataConfig(str(ROOT / "calibration/digits/calib.npz"), samples=256), digits, "calibration")
    val = open_feed(DataConfig(str(ROOT / "calibration/digits/val.npz"), labels="labels"), digits, "validation")
    assert feed_warnings(cal, val) == []


def test_too_few_samples_constant_zero_and_raw_pixel_inputs_are_warned(tmp_path):
    rng = np.random.default_rng(0)
    few = _feed(tmp_path / "few.npz", rng.standard_normal((5, 1, 8, 8)).astype(np.float32), method="entropy", samples=64)
    assert any("holds 5 sample(s); method 'entropy' needs at least 32" in w for w in few.warnings)
    assert any("fewer than [calibration] samples = 64" in w for w in few.warnings)
    const = _feed(tmp_path / "c.npz", np.zeros((10, 1, 8, 8), np.float32))
    assert any("input 'x' is constant (every value 0) over all 10 samples" in w for w in const.warnings)
    x = rng.standard_normal((10, 1, 8, 8)).astype(np.float32)
    x[[2, 7]] = 0
    assert any("all zeros in 2 of 10 samples" in w for w in _feed(tmp_path / "z.npz", x).warnings)
    pixels = rng.integers(0, 256, (10, 1, 8, 8)).astype(np.float32)
    raw = _feed(tmp_path / "p.npz", pixels)
    assert any("holds integer values in [0, 255], like raw 0-255 pixels, for a float32 input" in w for w in raw.warnings)
    assert _feed(tmp_path / "ok.npz", rng.standard_normal((10, 1, 8, 8)).astype(np.float32)).warnings == []


def test_calibration_and_validation_preprocessed_differently_is_warned(tmp_path):
    rng = np.random.default_rng(0)
    cal = _feed(tmp_path / "c.npz", rng.integers(0, 256, (16, 1, 8, 8)).astype(np.float32))
    val = _feed(tmp_path / "v.npz", rng.random((16, 1, 8, 8)).astype(np.float32), "validation")
    (mismatch,) = [w for w in feed_warnings(cal, val) if "preprocessed differently" in w]
    assert mismatch.startswith("input 'x' ranges over [0, 255] in [calibration] data but [")
    same = _feed(tmp_path / "v2.npz", rng.random((16, 1, 8, 8)).astype(np.float32) * 200, "validation")
    assert not [w for w in feed_warnings(cal, same) if "preprocessed differently" in w]


# Both builds export with torchscript (the faster exporter here): the test is about the data, not the export.
FAST = GOOD_CONFIG + '\n[export]\nexporter = "torchscript"\n'


@pytest.mark.slow
def test_image_folder_calibrates_ort_int8_like_the_same_pixels_as_npz_and_warnings_are_recorded(sandbox, capsys, monkeypatch):
    pytest.importorskip("PIL", reason="the image reader needs Pillow (the test extra installs it)")
    image_folder(sandbox / "cal_imgs", classes=4, per_class=6, seed=1)
    image_folder(sandbox / "val_imgs", classes=4, per_class=4, seed=2)
    config = FAST.replace('data = "calib.npz"', 'data = "cal_imgs"\nmethod = "minmax"')
    (sandbox / "img.toml").write_text(config.replace('data = "val.npz"\nlabels = "y"', 'data = "val_imgs"\nlabels = "folders"'))
    monkeypatch.chdir(sandbox)
    code = main(["-q", "build", "img.toml", "-o", "out_img"])
    err = capsys.readouterr().err
    assert code in (0, 1) and "warning" not in err, err
    m = json.loads((sandbox / "out_img" / "manifest.json").read_text())
    assert m["validation"]["samples"] == 16 and m["validation"]["labelled"] is True
    assert "val_imgs" in m["validation"]["description"] and "data_warnings" not in m["validation"]
    int8 = m["targets"]["ort-int8"]
    assert int8["status"] in ("passed", "failed"), int8.get("reason")
    assert 0.98 < int8["metrics"]["vs_torch"]["worst"]["cosine"] <= 1.0
    assert 0.0 <= int8["metrics"]["accuracy"] <= 100.0 and int8["metrics"]["vs_torch"]["outputs"]["logits"]["samples"] == 16

    # the same pixels, read by the image reader and saved as an .npz, calibrate a byte-identical artifact; this
    # build's validation data is raw 0-255 pixels: warned on the terminal, in the manifest and in the report
    (batch,) = open_feed(DataConfig(str(sandbox / "cal_imgs")), SPEC, "calibration").batches(100)
    assert batch.size == 24 and 0.0 <= batch.feed["x"].min() and batch.feed["x"].max() <= 1.0
    np.savez(sandbox / "same.npz", x=batch.feed["x"])
    np.savez(sandbox / "pixels.npz", x=np.round(batch.feed["x"][:8] * 255), y=np.zeros(8, np.int64))
    (sandbox / "npz.toml").write_text(config.replace('data = "cal_imgs"', 'data = "same.npz"').replace("val.npz", "pixels.npz"))
    assert main(["build", "npz.toml", "-o", "out_npz", "--no-validate"]) in (0, 1)
    err = capsys.readouterr().err
    assert "warning: [validation] data" in err and "like raw 0-255 pixels" in err
    assert re.search(r"warning: input 'x' ranges over \[0\.\d+, 0\.\d+\] in \[calibration\] data but \[\d+, \d+\] in "
                     r"\[validation\] data: the two sets are preprocessed differently", err), err
    again = json.loads((sandbox / "out_npz" / "manifest.json").read_text())
    assert len(again["validation"]["data_warnings"]) == 2 and "like raw 0-255 pixels" in again["validation"]["data_warnings"][0]
    assert "Data warning: input 'x' ranges over [0." in (sandbox / "out_npz" / "report.md").read_text()
    files = {f["path"]: f["sha256"] for f in int8["files"]}
    assert files and files == {f["path"]: f["sha256"] for f in again["targets"]["ort-int8"]["files"]}
