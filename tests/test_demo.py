"""The bundled example, as `edgekit demo` builds it: the numbers the README promises."""

from __future__ import annotations

import json

import pytest

from edgekit.cli import main


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    code = main(["-q", "demo", "-o", str(out), "--target", "ort-fp32", "--target", "ort-int8", "--target", "ort-int8-dynamic"])
    return code, json.loads((out / "manifest.json").read_text())


def test_demo_passes_every_gate(demo):
    code, m = demo
    assert code == 0
    assert {n: t["status"] for n, t in m["targets"].items()} == dict.fromkeys(("ort-fp32", "ort-int8", "ort-int8-dynamic"), "passed")


def test_digits_fp32_accuracy_and_fidelity(demo):
    _, m = demo
    assert m["validation"]["samples"] == 450 and m["validation"]["labelled"]
    assert m["references"]["torch-fp32"]["accuracy"] >= 97.0
    assert m["targets"]["ort-fp32"]["metrics"]["vs_torch"]["worst"]["cosine"] >= 0.99999


def test_digits_int8_keeps_accuracy_and_shrinks_the_file(demo):
    _, m = demo
    fp32 = m["references"]["torch-fp32"]["accuracy"]
    for name in ("ort-int8", "ort-int8-dynamic"):
        assert m["targets"][name]["metrics"]["accuracy"] >= fp32 - 1.0, name
    assert m["targets"]["ort-int8"]["size"]["ratio_to_fp32"] <= 0.35
