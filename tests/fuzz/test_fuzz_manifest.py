"""Fuzz a build folder read back: a real manifest (the session's sandbox build) with values replaced, keys
dropped and paths pointed elsewhere. load_build + verify_build either accept it (and then every path they would
read is inside the folder and vouched for) or refuse with an exit-2 EdgekitError; never another exception."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgekit.errors import EdgekitError
from edgekit.readback import load_build, verify_build
from fuzzing import outcome, scaled, toml_values


@pytest.fixture(scope="module")
def folder(good_build, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("fuzz_manifest") / "out"
    shutil.copytree(good_build.out, out)
    return out, json.loads((out / "manifest.json").read_text())


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, (*prefix, i))


values = st.one_of(toml_values, st.none(), st.sampled_from(["../x.onnx", "/etc/passwd", "ort-int8/model.onnx",
                                                            "reference/model.onnx", "passed", "a" * 64, "0" * 64]))


@scaled(60)
@given(data=st.data())
def test_mutated_manifest(folder, data):
    out, original = folder
    doc = copy.deepcopy(original)
    paths = [p for p in _paths(doc) if p]
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths))
        target = doc
        try:
            for key in path[:-1]:
                target = target[key]
            if data.draw(st.booleans()) and isinstance(target, dict):
                target.pop(path[-1], None)
            else:
                target[path[-1]] = data.draw(values)
        except (KeyError, IndexError, TypeError):
            continue
    (out / "manifest.json").write_text(json.dumps(doc))
    manifest = outcome(load_build, out)
    if isinstance(manifest, EdgekitError):
        return
    outcome(verify_build, out, manifest, tuple(manifest.results))
    for r in manifest.results.values():  # what was accepted stays inside the folder
        for f in (r.artifact.files if r.artifact else ()):
            assert (out / f.path).resolve().is_relative_to(out.resolve()), f.path
