"""The backend contract, for every built-in profile (targets/*.toml, discovered) and so every backend: from the
session's digits build of all of them, each artifact is on disk as the manifest says, loads in a fresh process
through its backend and reproduces the recorded cosine, and the manifest's fields are there and agree.

Adding a backend (one folder + one profile) adds its case here with no edit."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edgekit.backends import names
from edgekit.profiles import builtin_names, load_profile
from edgekit.types import STATUSES

PROFILES = builtin_names()

# Runs in a new interpreter: loads each named target's artifact through a new instance of its backend and streams
# the build's validation data through it, in the validator's batches, next to the ONNX reference.
FRESH_RUNNER = textwrap.dedent("""
    import json, sys
    from pathlib import Path

    import numpy as np
    import onnxruntime as ort

    from edgekit.backends import get_backend
    from edgekit.profiles import load_profile
    from edgekit.types import Artifact, ArtifactFile, Reference, TensorSpec

    out = Path(sys.argv[1])
    m = json.loads((out / "manifest.json").read_text())
    r = m["reference"]
    reference = Reference(out / r["file"]["path"], tuple(TensorSpec(s["name"], tuple(s["shape"]), s["dtype"]) for s in r["inputs"]),
                          tuple(r["outputs"]), r["exporter"], r["opset"], r["simplified"], r["simplify_note"])
    data = np.load(m["config"]["validation"]["data"])
    feed = {s.name: data[s.name] for s in reference.inputs}
    samples, batch = len(next(iter(feed.values()))), m["config"]["validation"]["batch_size"]
    onnx_ref = ort.InferenceSession(str(reference.path), providers=["CPUExecutionProvider"])


    def cosine_rows(a, b):
        a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
        return np.sum(a * b, 1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-300)


    results = {}
    for name in sys.argv[2:]:
        profile = load_profile(name)
        backend = get_backend(profile.backend)
        avail = backend.availability(profile)
        if not avail.ok and not avail.proxy:
            results[name] = {"skip": avail.reason + (f" ({avail.hint})" if avail.hint else "")}
            continue
        t = m["targets"][name]
        artifact = Artifact.from_record(name, tuple(ArtifactFile(**f) for f in t["files"]), t["notes"])
        runner = backend.load(artifact, out, profile, reference)
        sums = dict.fromkeys(reference.outputs, 0.0)
        for i in range(0, samples, batch):
            x = {k: v[i:i + batch] for k, v in feed.items()}
            want = dict(zip(reference.outputs, onnx_ref.run(list(reference.outputs), x)))
            got = runner.run(x)
            for o in reference.outputs:
                sums[o] += float(np.sum(cosine_rows(want[o], got[o])))
        runner.close()
        results[name] = {"proxy": not avail.ok, "vs_onnx_cosine": {o: s / samples for o, s in sums.items()}}
    print(json.dumps(results))
""")


@pytest.fixture(scope="session")
def fresh(digits_build, tmp_path_factory) -> dict:
    """{profile: what a fresh process measured}: one new interpreter for every profile of the session build."""
    script = tmp_path_factory.mktemp("contract") / "fresh_runner.py"
    script.write_text(FRESH_RUNNER)
    proc = subprocess.run([sys.executable, str(script), str(digits_build.out), *PROFILES],
                          capture_output=True, text=True, timeout=600, cwd=script.parent)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _skip_if_unavailable(fresh: dict, name: str) -> None:
    if "skip" in fresh[name]:
        pytest.skip(f"{name}: {fresh[name]['skip']}")


def test_every_backend_has_a_builtin_profile_and_the_demo_builds_them_all(digits_build):
    assert PROFILES, "no built-in profiles found"
    assert {load_profile(p).backend for p in PROFILES} == set(names())
    assert list(digits_build.manifest["targets"]) == PROFILES
    assert digits_build.code == digits_build.manifest["exit_code"] == 0


@pytest.mark.parametrize("name", PROFILES)
def test_artifact_files_match_the_manifest(digits_build, fresh, name):
    _skip_if_unavailable(fresh, name)
    t = digits_build.manifest["targets"][name]
    assert t["files"], f"{name} recorded no artifact files"
    for f in t["files"]:
        path = digits_build.out / f["path"]
        assert path.is_file(), f["path"]
        assert path.stat().st_size == f["bytes"] and _sha(path) == f["sha256"], f["path"]
        assert f["path"].startswith(f"{name}/")


@pytest.mark.parametrize("name", PROFILES)
def test_artifact_loads_in_a_fresh_process_and_gives_the_recorded_cosine(digits_build, fresh, name):
    _skip_if_unavailable(fresh, name)
    recorded = digits_build.manifest["targets"][name]["metrics"]["vs_onnx"]["outputs"]
    measured = fresh[name]["vs_onnx_cosine"]
    assert set(measured) == set(recorded)
    for output, cosine in measured.items():
        assert cosine == pytest.approx(recorded[output]["cosine"], abs=1e-6), output


@pytest.mark.parametrize("name", PROFILES)
def test_manifest_fields_are_present_and_consistent(digits_build, fresh, name):
    _skip_if_unavailable(fresh, name)
    m = digits_build.manifest
    t = m["targets"][name]
    profile = load_profile(name)
    recorded_profile = m["profiles"][name]
    assert recorded_profile["backend"] == profile.backend and recorded_profile["runtime"]["threads"] == profile.runtime.threads

    assert t["status"] in STATUSES
    assert isinstance(t["measured_on"], str) and t["measured_on"]
    assert t["device"] == profile.device

    lat = t["latency"]
    assert {"p50_ms", "p90_ms", "p99_ms", "batch", "threads"} <= set(lat)
    assert 0 < lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"]
    assert lat["batch"] == m["validation"]["latency_batch"] and lat["threads"] == profile.runtime.threads

    fp32_bytes = m["reference"]["file"]["bytes"]
    size = t["size"]
    assert size["bytes"] == sum(f["bytes"] for f in t["files"]) and size["fp32_bytes"] == fp32_bytes
    assert size["ratio_to_fp32"] == pytest.approx(size["bytes"] / fp32_bytes, rel=1e-12)

    assert t["gates"], f"{name} checked no gate"
    bounds = recorded_profile["gates"]
    for g in t["gates"]:
        assert {"gate", "passed", "bound", "value"} <= set(g)
        assert g["bound"] == bounds[g["gate"]]
        if g["value"] is None:
            assert g["passed"] is None
        elif g.get("resolution") and g["passed"] is None:  # the data cannot resolve the bound: not decided, says why
            assert "not decided" in g["message"]
        elif g.get("resolution") and g.get("interval"):  # too few samples, but the interval lies on one side
            low, high = g["interval"]
            assert g["passed"] is (low >= g["bound"] if g["gate"].startswith("min_") else high <= g["bound"])
        else:
            assert g["passed"] is (g["value"] >= g["bound"] if g["gate"].startswith("min_") else g["value"] <= g["bound"])
    failed = [g for g in t["gates"] if g["passed"] is False]
    if fresh[name]["proxy"]:  # a host proxy is measured here but is not the target: never "passed"
        assert t["status"] in ("unavailable", "failed") and t["reason"]
    else:
        assert t["status"] == ("failed" if failed else "passed"), t["reason"]

    primary = t["metrics"].get("vs_torch") or t["metrics"]["vs_onnx"]
    if t["status"] == "passed":
        assert t["reason"] == "" and not failed
        if profile.gates.min_cosine is not None:
            assert primary["worst"]["cosine"] >= profile.gates.min_cosine

