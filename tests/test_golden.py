"""Unchanged output: the session's digits demo build (tools/record_golden.py's fixed CPU flags) against the manifest
recorded before the refactor, tests/data/golden/digits_manifest.json. Same keys everywhere, same notes, metrics
within 1e-5, same artifact bytes; values that depend on the host, the clock or the checkout are not compared."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Iterator

import pytest

from edgekit import strictjson

GOLDEN = Path(__file__).parent / "data" / "golden" / "digits_manifest.json"
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
    """Every pair of leaves at the same path; dict key sets and list lengths are checked on the way."""
    if isinstance(a, dict) and isinstance(b, dict):
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
    for name, t in golden["targets"].items():
        for path, a, b in _walk(built["targets"][name]["metrics"], t["metrics"], ("targets", name, "metrics")):
            assert _same_number(a, b), f"{'/'.join(path)}: {a!r}, golden {b!r}"
    for name, r in golden["references"].items():
        for path, a, b in _walk(built["references"][name], r, ("references", name)):
            if "latency" not in path:
                assert _same_number(a, b) if isinstance(b, float) else a == b, f"{'/'.join(path)}: {a!r}, golden {b!r}"


def test_every_other_value_is_unchanged(built, golden):
    """Status, reasons, gates, sizes' inputs, profiles, config, reference: equal (floats within 1e-5); the
    volatile values (versions, host, timings, data paths) and the artifact bytes (next test) aside."""
    for path, a, b in _walk(built, golden):
        if _volatile(path) or path[-1] in BYTES or "metrics" in path or "notes" in path or _speed_verdict(built, path):
            continue
        if isinstance(b, float) or isinstance(a, float):
            assert _same_number(float(a), float(b)), f"{'/'.join(path)}: {a!r}, golden {b!r}"
        else:
            assert a == b, f"{'/'.join(path)}: {a!r}, golden {b!r}"


def test_every_artifact_sha256_is_unchanged(built, golden):
    drift = _version_drift(built, golden)
    if drift:
        pytest.skip(f"installed versions differ from the golden's: {drift}; artifact bytes are not comparable")
    assert built["reference"]["file"] == golden["reference"]["file"]
    for name, t in golden["targets"].items():
        assert built["targets"][name]["files"] == t["files"], name
        assert built["targets"][name]["size"] == t["size"], name
