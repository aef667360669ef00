"""Unchanged output: the session's digits demo build (tools/record_golden.py's fixed CPU flags) against the manifest
recorded before the refactor, tests/data/golden/digits_manifest.json. Same keys everywhere, same notes, metrics
within 1e-5, same artifact bytes; values that depend on the host, the clock or the checkout are not compared.

Two things depend on the CPU itself, not on edgekit: torch's float kernels (torch vs ONNX Runtime differ by a few
float32 ulps, and by other ulps on another CPU), and the bytes of the torch.ao artifacts (their calibration runs those
kernels). Comparisons with torch are therefore held to this CPU's own float noise floor, and the torch.ao artifacts'
sha256 to the bytes recorded on the same CPU (tests/data/golden/torch_artifacts.json, `tools/record_golden.py
--torch-bytes`); the ONNX artifacts' bytes are the same on every CPU seen and are compared everywhere."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Iterator

import pytest

from edgekit import strictjson

GOLDEN = Path(__file__).parent / "data" / "golden" / "digits_manifest.json"
TORCH_BYTES = GOLDEN.with_name("torch_artifacts.json")  # {cpu signature: {target: files}}, one entry per CPU recorded
PINNED = ("onnx", "onnxruntime", "torch")  # the libraries whose versions decide the artifacts' bytes

# Paths (tuples of keys, "*" for any one key) whose values vary with the host, the clock or the checkout.
VOLATILE = (
    ("versions",), ("host",),
    ("config", "calibration", "data"), ("config", "validation", "data"), ("validation", "description"),
    ("targets", "*", "build_seconds"),
    ("targets", "*", "latency", "*_ms"), ("targets", "*", "latency", "speedup_vs_ort_fp32"),
    ("references", "*", "latency", "*_ms"),
)
# What the sha256 test owns (artifact bytes change with the library versions).
BYTES = ("sha256", "bytes", "ratio_to_fp32")


@pytest.fixture(scope="module")
def golden() -> dict:
    return strictjson.restore(json.loads(GOLDEN.read_text()))  # recorded before strict JSON: Infinity or null + flag


@pytest.fixture(scope="module")
def built(digits_build) -> dict:
    # as edgekit reads its manifest back: an infinite SQNR is written null + "sqnr_db_nonfinite": "+inf" (strict JSON)
    return strictjson.restore(json.loads(json.dumps(digits_build.manifest)))


def _volatile(path: tuple[str, ...]) -> bool:
    def match(pattern: str, key: str) -> bool:
        return pattern == key or (("*" in pattern) and re.fullmatch(pattern.replace("*", ".*"), key) is not None)

    return any(len(v) <= len(path) and all(match(p, k) for p, k in zip(v, path)) for v in VOLATILE)


def _speed_verdict(manifest: dict, path: tuple[str, ...]) -> bool:
    """A min_speedup verdict's value, message and resolution: timing, as volatile as the latency they quote."""
    if len(path) != 5 or path[0] != "targets" or path[2] != "gates" or path[4] not in ("value", "message", "resolution"):
        return False
    return manifest["targets"][path[1]]["gates"][int(path[3])]["gate"] == "min_speedup"


def _walk(a: Any, b: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any, Any]]:
    """Every pair of leaves at the same path; dict key sets and list lengths are checked on the way (a volatile
    list, such as the host's ISA flags, is one leaf: its length is the host's)."""
    if isinstance(a, list) and isinstance(b, list) and _volatile(path):
        yield path, a, b
    elif isinstance(a, dict) and isinstance(b, dict):
        assert set(a) == set(b), f"{'/'.join(path) or 'manifest'}: keys {sorted(set(a) ^ set(b))} added or removed"
        for key in a:
            yield from _walk(a[key], b[key], (*path, key))
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), f"{'/'.join(path)}: {len(a)} entries, the golden has {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            yield from _walk(x, y, (*path, str(i)))
    else:
        assert type(a) is type(b) or {type(a), type(b)} <= {int, float}, f"{'/'.join(path)}: {a!r} vs golden {b!r}"
        yield path, a, b


def _same_number(a: float, b: float) -> bool:
    if math.isinf(a) or math.isinf(b) or math.isnan(a) or math.isnan(b):
        return a == b or (math.isnan(a) and math.isnan(b))
    return math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-12)


def torch_noise_floor(manifest: dict) -> float:
    """The largest difference torch's float kernels make against ONNX Runtime's on the same FP32 model, in this build."""
    return float(manifest["references"]["torch-fp32"]["vs_onnx"]["worst"]["max_abs_error"])


# Above this SQNR two float32 computations of one model differ only by rounding: 135 dB on one CPU, 137 on another.
ROUNDING_SQNR_DB = 100.0


def _same_metric(path: tuple[str, ...], a: float, b: float, floor: float) -> bool:
    """Equal within 1e-5; a comparison that involves torch's float output (vs_torch, torch-fp32's row) may differ by
    the two CPUs' float noise floors (``floor``: the larger of the two builds'), and an SQNR at float rounding level
    is the same rounding whatever its exact dB."""
    if _same_number(a, b):
        return True
    with_torch = "vs_torch" in path or "torch-fp32" in path
    if not with_torch:
        return False
    if path[-1] == "sqnr_db":
        return min(a, b) > ROUNDING_SQNR_DB
    if path[-1] == "max_abs_error":
        return abs(a - b) <= 2 * floor
    if path[-1] == "mse":
        return abs(a - b) <= 2 * floor * floor + 1e-5 * max(abs(a), abs(b))
    return False


def cpu_signature(manifest: dict) -> str:
    """The CPU a manifest was built on, as the key of its torch.ao artifact bytes: model name and ISA flags."""
    host = manifest["host"]
    return f"{host['cpu']} [{' '.join(sorted(host['isa']))}]"


def is_torch_target(manifest: dict, name: str) -> bool:
    return manifest["profiles"][name]["backend"] == "torch_ao"


def _version_drift(built: dict, golden: dict) -> str:
    drift = [f"{k} {built['versions'].get(k)} (golden {golden['versions'].get(k)})"
             for k in PINNED if built["versions"].get(k) != golden["versions"].get(k)]
    return ", ".join(drift)


def test_every_manifest_key_is_unchanged(built, golden):
    for _ in _walk(built, golden):  # the key sets are asserted while walking, volatile parts included
        pass


def test_notes_are_unchanged(built, golden):
    assert list(built["targets"]) == list(golden["targets"])
    for name, t in golden["targets"].items():
        assert built["targets"][name]["notes"] == t["notes"], name


def test_metrics_are_unchanged_within_1e_5(built, golden):
    floor = max(torch_noise_floor(built), torch_noise_floor(golden))
    for name, t in golden["targets"].items():
        for path, a, b in _walk(built["targets"][name]["metrics"], t["metrics"], ("targets", name, "metrics")):
            assert _same_metric(path, a, b, floor), f"{'/'.join(path)}: {a!r}, golden {b!r} (torch noise floor {floor:g})"
    for name, r in golden["references"].items():
        for path, a, b in _walk(built["references"][name], r, ("references", name)):
            if "latency" not in path:
                same = _same_metric(path, a, b, floor) if isinstance(b, float) else a == b
                assert same, f"{'/'.join(path)}: {a!r}, golden {b!r} (torch noise floor {floor:g})"


def test_a_tolerance_for_torch_noise_still_catches_a_real_change():
    """The torch noise allowance is a few ulps, not a licence: an error 10x the floor, or an SQNR that fell out of
    rounding level, is still a change."""
    floor = 7.6e-6
    assert _same_metric(("vs_torch", "max_abs_error"), 7.6e-6, 5.7e-6, floor)
    assert not _same_metric(("vs_torch", "max_abs_error"), 7.6e-5, 5.7e-6, floor)
    assert _same_metric(("vs_torch", "sqnr_db"), 135.2, 137.4, floor)
    assert not _same_metric(("vs_torch", "sqnr_db"), 60.0, 137.4, floor)
    assert not _same_metric(("vs_onnx_only", "max_abs_error"), 7.6e-6, 5.7e-6, floor)


def test_every_other_value_is_unchanged(built, golden):
    """Status, reasons, gates, sizes' inputs, profiles, config, reference: equal (floats within 1e-5); the
    volatile values (versions, host, timings, data paths) and the artifact bytes (next test) aside."""
    floor = max(torch_noise_floor(built), torch_noise_floor(golden))
    for path, a, b in _walk(built, golden):
        if _volatile(path) or path[-1] in BYTES or "metrics" in path or "notes" in path or _speed_verdict(built, path):
            continue
        if isinstance(b, float) or isinstance(a, float):
            assert _same_metric(path, float(a), float(b), floor), f"{'/'.join(path)}: {a!r}, golden {b!r}"
        else:
            assert a == b, f"{'/'.join(path)}: {a!r}, golden {b!r}"


def test_every_onnx_artifact_sha256_is_unchanged(built, golden):
    drift = _version_drift(built, golden)
    if drift:
        pytest.skip(f"installed versions differ from the golden's: {drift}; artifact bytes are not comparable")
    assert built["reference"]["file"] == golden["reference"]["file"]
    for name, t in golden["targets"].items():
        assert built["targets"][name]["size"] == t["size"], name
        if not is_torch_target(golden, name):
            assert built["targets"][name]["files"] == t["files"], name


def test_every_torch_artifact_sha256_is_unchanged_on_this_cpu(built, golden):
    """torch.ao artifacts' bytes depend on the CPU's float kernels (their calibration runs them): compared with the
    bytes recorded on this CPU (the refactor's golden for its own CPU, torch_artifacts.json for the others)."""
    drift = _version_drift(built, golden)
    if drift:
        pytest.skip(f"installed versions differ from the golden's: {drift}; artifact bytes are not comparable")
    cpu = cpu_signature(built)
    recorded = {cpu_signature(golden): {n: t["files"] for n, t in golden["targets"].items() if is_torch_target(golden, n)}}
    recorded.update(json.loads(TORCH_BYTES.read_text()) if TORCH_BYTES.exists() else {})
    if cpu not in recorded:
        pytest.skip(f"no torch.ao artifact bytes recorded on this CPU ({cpu}); recorded on: {', '.join(sorted(recorded))}. "
                    "Record them with `tools/record_golden.py --torch-bytes` on a commit whose artifacts are known good.")
    for name, files in recorded[cpu].items():
        assert built["targets"][name]["files"] == files, f"{name} on {cpu}"
