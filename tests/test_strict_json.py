"""Every JSON file a build writes is strict JSON (no NaN/Infinity): the demo build's files parsed with a reader
that refuses the constants; an identical output's SQNR is null plus a "+inf" flag, read back as the float."""

from __future__ import annotations

import json
import math

import pytest

from edgekit import strictjson
from edgekit.cli import main
from edgekit.manifest import read_manifest


def _refuse(name: str):
    raise AssertionError(f"non-strict JSON constant {name}")


def test_every_json_file_of_the_demo_build_is_strict(digits_build):
    files = sorted(digits_build.out.rglob("*.json"))
    assert len(files) >= 1 + len(digits_build.manifest["targets"])  # the manifest and each target's metrics.json
    flagged = 0
    for path in files:
        text = path.read_text()
        json.loads(text, parse_constant=_refuse)
        flagged += text.count('"sqnr_db_nonfinite": "+inf"')
    assert flagged >= 1, "the demo's ort-fp32 output is identical to the ONNX reference: one infinite SQNR at least"


def test_an_infinite_sqnr_is_null_with_a_flag_and_reads_back_as_inf(digits_build):
    worst = digits_build.manifest["targets"]["ort-fp32"]["metrics"]["vs_onnx"]["worst"]
    assert worst["sqnr_db"] is None and worst["sqnr_db_nonfinite"] == "+inf"
    again = read_manifest(digits_build.out).results["ort-fp32"].metrics.vs_onnx["worst"]
    assert again["sqnr_db"] == math.inf and "sqnr_db_nonfinite" not in again


def test_report_renders_an_infinite_sqnr_as_inf(digits_build, tmp_path):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(digits_build.out, out)
    assert main(["-q", "report", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    worst = manifest["targets"]["ort-fp32"]["metrics"]["vs_torch"]["worst"]
    worst["sqnr_db"], worst["sqnr_db_nonfinite"] = None, "+inf"  # the table's column: an identical output vs torch
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert main(["-q", "report", str(out), "--html"]) == 0
    row = next(ln for ln in (out / "report.md").read_text().splitlines() if ln.startswith("| ort-fp32 |"))
    assert "| inf |" in row, row
    assert "None" not in (out / "report.html").read_text()


@pytest.mark.parametrize("value,flag", [(math.inf, "+inf"), (-math.inf, "-inf"), (math.nan, "nan")])
def test_encode_and_restore_round_trip(value, flag):
    obj = {"a": {"sqnr_db": value, "mse": 0.0}, "rows": [1.0, value]}
    text = strictjson.dumps(obj)
    back = json.loads(text, parse_constant=_refuse)
    assert back["a"] == {"sqnr_db": None, "sqnr_db_nonfinite": flag, "mse": 0.0}
    assert back["rows"] == [1.0, None]
    restored = strictjson.restore(back)["a"]["sqnr_db"]
    assert restored == value or (math.isnan(value) and math.isnan(restored))


def test_strict_loads_refuses_infinity():
    with pytest.raises(ValueError, match="Infinity"):
        strictjson.loads_strict('{"x": Infinity}')
