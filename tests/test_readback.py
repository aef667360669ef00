"""A build folder is input when read back: each tampering of a manifest is exit 2 naming it, validate never reads
or writes outside the folder, never runs the model file the manifest names unless asked (--against-torch), and
tells changed inputs from changed artifacts. After each, the folder is unchanged and its files match their sha256."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edgekit.cli import main
from test_keep_builds import snapshot, assert_vouched


def _edit(out: Path, change) -> None:
    m = json.loads((out / "manifest.json").read_text())
    change(m)
    (out / "manifest.json").write_text(json.dumps(m))


def _run_refused(argv: list[str], out: Path, capsys, expect: str) -> None:
    before = snapshot(out)
    code = main(argv)
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("error: ") and expect in err[0], err
    assert "internal error" not in err[0]
    assert snapshot(out) == before, "a refused validate changed the folder"


@pytest.fixture()
def out(built_sandbox) -> Path:
    """The copied build, its manifest's input paths pointed at the copied sandbox (the copy's own weights, data)."""
    out = built_sandbox / "out"
    text = (out / "manifest.json").read_text()
    original = str(Path(json.loads(text)["config"]["model"]["source"].rsplit(":", 1)[0]).parent)
    (out / "manifest.json").write_text(text.replace(original, str(built_sandbox)))
    return out


def _empty_files(m):
    m["targets"]["ort-int8"]["files"] = []


def _escape(m):
    m["targets"]["ort-int8"]["files"][0]["path"] = "../../x.onnx"


def _absolute(m):
    m["targets"]["ort-int8"]["files"][0]["path"] = "/etc/hostname"


def _status(m):
    m["targets"]["ort-int8"]["status"] = "great"


def _no_profile(m):
    del m["profiles"]["ort-int8"]


def _reference_gone(m):
    del m["reference"]["file"]


def _not_object(m):
    m["targets"]["ort-int8"]["notes"] = ["x"]


def _profiles_null(m):  # found by tests/fuzz/test_fuzz_manifest.py (AttributeError before)
    m["profiles"] = None


TAMPERINGS = [
    (_profiles_null, "'profiles' is NoneType, expected dict"),
    (_empty_files, "target 'ort-int8' is passed but lists no files"),
    (_escape, "'../../x.onnx' points outside the build folder"),
    (_absolute, "'/etc/hostname' points outside the build folder"),
    (_status, "'great' is not one of"),
    (_no_profile, "no entry in 'profiles'"),
    (_reference_gone, "'reference.file' is missing"),
    (_not_object, "'targets.ort-int8.notes' is not an object"),
]


@pytest.mark.parametrize("change,expect", TAMPERINGS, ids=[c.__name__.strip("_") for c, _ in TAMPERINGS])
def test_a_tampered_manifest_is_refused(out, capsys, change, expect):
    original = json.loads((out / "manifest.json").read_text())
    _edit(out, change)
    _run_refused(["validate", str(out)], out, capsys, expect)
    _run_refused(["report", str(out)], out, capsys, expect)
    _run_refused(["bundle", str(out), "-o", str(out.parent / "bundles")], out, capsys, expect)
    assert not (out.parent / "bundles").exists()  # nothing half-written
    (out / "manifest.json").write_text(json.dumps(original))
    assert_vouched(out)


def test_an_escaping_path_with_a_matching_sha256_is_refused(out, capsys):
    """The file outside has exactly the bytes the manifest vouches for: still refused, it is outside."""
    shutil.copy(out / "ort-int8" / "model.onnx", out.parent / "x.onnx")
    _edit(out, lambda m: m["targets"]["ort-int8"]["files"][0].update(path="../x.onnx"))
    _run_refused(["validate", str(out)], out, capsys, "points outside the build folder")


def test_a_symlink_out_of_the_folder_is_refused(out, capsys):
    art = out / "ort-int8" / "model.onnx"
    shutil.move(art, out.parent / "outside.onnx")
    art.symlink_to(out.parent / "outside.onnx")
    _run_refused(["validate", str(out)], out, capsys, "resolves outside the build folder")


def test_a_manifest_that_is_not_json_or_a_fifo_is_refused(out, capsys):
    import os

    (out / "manifest.json").write_text("{ not json")
    _run_refused(["validate", str(out)], out, capsys, "is not valid JSON")
    (out / "manifest.json").unlink()
    os.mkfifo(out / "manifest.json")
    _run_refused(["validate", str(out)], out, capsys, "not a regular file")


EVIL = """
from pathlib import Path
Path(__file__).with_name("RAN").write_text("validate imported me")
from net import build  # noqa: E402
"""


def test_validate_never_runs_the_model_file_a_manifest_names_unless_asked(out, capsys):
    sandbox = out.parent
    (sandbox / "evil.py").write_text(f"import sys; sys.path.insert(0, {str(sandbox)!r})\n" + EVIL)
    _edit(out, lambda m: m["config"]["model"].update(source=f"{sandbox / 'evil.py'}:build"))

    assert main(["-q", "validate", str(out)]) == 0

    assert not (sandbox / "RAN").exists(), "validate ran the Python file the manifest names"
    m = assert_vouched(out)
    assert "ONNX reference" in m["validation"]["against"] and "torch-fp32" not in m["references"]
    code = main(["validate", str(out), "--against-torch"])  # asked for: it runs, and is not the model built from
    assert (sandbox / "RAN").exists()
    err = capsys.readouterr().err
    assert code == 2 and "the model" in err and "changed since the build" in err, err
    assert_vouched(out)


def test_changed_weights_are_blamed_on_the_weights_not_the_artifact(out, capsys):
    import torch
    from safetensors.torch import save_file

    sandbox = out.parent
    state = torch.load(sandbox / "w.pt", weights_only=True)
    state["fc.bias"] = state["fc.bias"] + 1.0
    save_file(state, str(sandbox / "w.safetensors"))

    _run_refused(["validate", str(out), "--against-torch"], out, capsys, "changed since the build")
    assert main(["-q", "validate", str(out)]) == 0  # the artifacts themselves are intact
    assert_vouched(out)


def test_changed_validation_data_is_an_input_change(out, capsys):
    import numpy as np

    sandbox = out.parent
    v = dict(np.load(sandbox / "val.npz"))
    v["x"] = v["x"] * 2
    np.savez(sandbox / "val.npz", **v)
    _run_refused(["validate", str(out)], out, capsys, "validation data")
    assert_vouched(out)
