"""Nothing a user built is lost without asking: a --target rebuild keeps (and re-vouches) the earlier build's other
targets and report.html, or refuses with a message and leaves the folder as it was; validate --data records
beside the build's own record."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from edgekit.cli import main


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_vouched(out: Path) -> dict:
    """Every file the manifest lists (reference included) exists with its sha256 and size; the manifest returned."""
    m = json.loads((out / "manifest.json").read_text())
    files = [m["reference"]["file"], *(f for t in m["targets"].values() for f in t["files"])]
    for f in files:
        assert _sha(out / f["path"]) == f["sha256"] and (out / f["path"]).stat().st_size == f["bytes"], f["path"]
    assert not list(out.parent.glob(f".{out.name}.edgekit-*")), "a staging or old-build folder was left"
    return m


def snapshot(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): _sha(p) for p in sorted(out.rglob("*")) if p.is_file()}


def test_a_target_rebuild_keeps_the_other_targets_and_report_html(built_sandbox, capsys):
    out, cfg = built_sandbox / "out", built_sandbox / "cfg.toml"
    assert main(["-q", "report", str(out), "--html"]) == 0
    int8 = snapshot(out / "ort-int8")
    fp32_before = json.loads((out / "manifest.json").read_text())["targets"]["ort-fp32"]["files"]
    capsys.readouterr()

    assert main(["build", str(cfg), "--target", "ort-fp32", "-o", str(out)]) == 0

    assert "keeping the earlier build's ort-int8" in capsys.readouterr().err
    m = assert_vouched(out)
    assert set(m["targets"]) == {"ort-fp32", "ort-int8"}
    assert m["targets"]["ort-int8"]["status"] == "passed"
    assert snapshot(out / "ort-int8") == int8  # kept byte for byte
    assert "error_histogram" in json.loads((out / "ort-int8" / "metrics.json").read_text())  # report.html's, kept too
    assert m["targets"]["ort-fp32"]["files"] == fp32_before  # rebuilt, same bytes (deterministic export)
    html = (out / "report.html").read_text()
    assert "ort-int8" in html and "ort-fp32" in html
    assert "| ort-int8 |" in (out / "report.md").read_text()


def test_a_target_rebuild_over_a_tampered_other_target_refuses_and_changes_nothing(built_sandbox, capsys):
    out, cfg = built_sandbox / "out", built_sandbox / "cfg.toml"
    art = out / "ort-int8" / "model.onnx"
    art.write_bytes(art.read_bytes()[:-1] + b"\x00")
    before = snapshot(out)

    code = main(["build", str(cfg), "--target", "ort-fp32", "-o", str(out)])

    err = capsys.readouterr().err
    assert code == 2 and "ort-int8/model.onnx was modified" in err and "omit --target" in err, err
    assert snapshot(out) == before
    assert not list(out.parent.glob(".out.edgekit-*"))


def test_a_target_rebuild_from_other_weights_refuses(built_sandbox, capsys):
    import torch

    out, cfg = built_sandbox / "out", built_sandbox / "cfg.toml"
    state = torch.load(built_sandbox / "w.pt", weights_only=True)
    state["fc.bias"] = state["fc.bias"] + 1.0
    from safetensors.torch import save_file

    save_file(state, str(built_sandbox / "w.safetensors"))
    before = snapshot(out)

    code = main(["build", str(cfg), "--target", "ort-fp32", "-o", str(out)])

    err = capsys.readouterr().err
    assert code == 2 and "weights differs" in err and "omit --target" in err, err
    assert snapshot(out) == before
    assert_vouched(out)


def test_validate_on_other_data_writes_beside_the_record(built_sandbox):
    import numpy as np

    out = built_sandbox / "out"
    before = snapshot(out)
    np.savez(built_sandbox / "other.npz", x=np.load(built_sandbox / "val.npz")["x"][:6], y=np.zeros(6, np.int64))

    assert main(["-q", "validate", str(out), "--data", str(built_sandbox / "other.npz")]) == 0

    after = snapshot(out)
    new = {k for k in after if k not in before}
    assert {k: after[k] for k in before} == before  # manifest, metrics, report: untouched
    assert {Path(k).name for k in new} == {"validation.json", "report.md", "report.html"}
    record = json.loads((out / next(k for k in new if k.endswith("validation.json"))).read_text())
    assert record["validation"]["samples"] == 6 and set(record["targets"]) == {"ort-fp32", "ort-int8"}
    assert_vouched(out)
