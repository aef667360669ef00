"""Bring a device's device-report.json back into a build: checked as untrusted input, matched to the artifact the
build vouches for, then recorded in manifest.json ``devices`` and shown beside the host's numbers in the report."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from edgekit.console import Progress, Silent
from edgekit.errors import DataError, TamperError, UsageError
from edgekit.manifest import Manifest, verify_files, write_outputs
from edgekit.readback import load_build

MAX_TEXT = 300  # longest string kept from a device report (they end up in report.md)
NUMBER, TEXT, FLAG, COUNT = "a number", "a string", "true or false", "an integer"


def _kind_ok(value: Any, kind: str, nullable: bool) -> bool:
    if value is None:
        return nullable
    if kind == NUMBER:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if kind == COUNT:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0
    if kind == FLAG:
        return isinstance(value, bool)
    return isinstance(value, str) and len(value) <= MAX_TEXT


def _get(obj: Any, path: str, kind: str | type, where: Path, nullable: bool = False) -> Any:
    """``obj[path]`` (dotted), checked to be ``kind``; DataError naming the key and the expected type otherwise."""
    value = obj
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            raise DataError(f"{where}: key '{path}' is missing; is it a device-report.json written by verify.py?")
        value = value[key]
    return _check(value, path, kind, where, nullable)


def _check(value: Any, path: str, kind: str | type, where: Path, nullable: bool = False) -> Any:
    ok = isinstance(value, kind) if isinstance(kind, type) else _kind_ok(value, kind, nullable)
    if not ok:
        want = kind.__name__ if isinstance(kind, type) else kind
        raise DataError(f"{where}: key '{path}' must be {want}, got {json.dumps(value)[:60]}; re-run verify.py on the device")
    return value


def read_device_report(path: Path) -> dict[str, Any]:
    """The report's fields edgekit keeps, each checked for structure and type (exit 2 naming the key)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--device-report {path} does not exist")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"), parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is not strict JSON ({exc}); pass the device-report.json verify.py wrote") from None
    if not isinstance(raw, dict) or raw.get("kind") != "edgekit-device-report":
        raise DataError(f"{path}: key 'kind' must be \"edgekit-device-report\"; pass the device-report.json verify.py wrote")
    verdict = _get(raw, "verdict", TEXT, path)
    if verdict not in ("pass", "fail"):
        raise DataError(f"{path}: key 'verdict' must be \"pass\" or \"fail\", got {verdict!r}")
    outputs = _get(raw, "vs_reference.outputs", dict, path)
    errors = {}
    for name, m in outputs.items():
        where = f"vs_reference.outputs.{name}"
        _check(m, where, dict, path)
        errors[_one_line(name)[:MAX_TEXT]] = {k: _check(m.get(k), f"{where}.{k}", NUMBER, path) for k in ("cosine", "min_cosine", "max_abs_error")}
    files = _get(raw, "bundle.artifact_files", dict, path)
    for name, sha in files.items():
        _check(sha, f"bundle.artifact_files.{name}", TEXT, path)
    failures = _get(raw, "failures", list, path)
    if not all(_kind_ok(f, TEXT, False) for f in failures):
        raise DataError(f"{path}: key 'failures' must be a list of strings")
    features = _get(raw, "device.features", list, path)
    if not all(_kind_ok(f, TEXT, False) for f in features):
        raise DataError(f"{path}: key 'device.features' must be a list of strings")
    device = {k: _one_line(_get(raw, f"device.{k}", TEXT, path)) for k in ("cpu", "machine", "system")}
    board = raw["device"].get("board", "")
    device.update(board=_one_line(board) if _kind_ok(board, TEXT, False) else "", features=features,
                  emulated=_get(raw, "device.emulated", FLAG, path))
    latency = {k: _get(raw, f"latency.{k}", NUMBER, path, nullable=True) for k in ("p50_ms", "p90_ms", "p99_ms")}
    latency.update({k: _get(raw, f"latency.{k}", COUNT, path) for k in ("threads", "runs")})
    latency["meaningful"] = _get(raw, "latency.meaningful", FLAG, path)
    return {
        "target": _get(raw, "target", TEXT, path), "verdict": verdict, "failures": [_one_line(f) for f in failures],
        "device": device, "label": device_label(device), "artifact_files": dict(files), "vs_reference": errors,
        "top1_agreement": _get(raw, "vs_reference.top1_agreement", NUMBER, path, nullable=True)
        if "top1_agreement" in raw["vs_reference"] else None,
        "runtime": _one_line(_get(raw, "runtime.description", TEXT, path)),
        "preflight": [_one_line(n) for n in _get(raw, "preflight", list, path) if _kind_ok(n, TEXT, False)],
        "latency": latency, "file": path.name,
    }


def _one_line(text: str) -> str:
    return " ".join(text.split())


def device_label(device: dict[str, Any]) -> str:
    """How the report names a device: its board when it says, else CPU and architecture."""
    name = device["board"] or f"{device['cpu']} ({device['machine']})"
    return name + (", emulated" if device["emulated"] else "")


def merge_device_report(root: Path, report_path: Path, progress: Progress | None = None) -> tuple[Manifest, dict[str, Any]]:
    """Record a device report in ``root``'s manifest and reports; the artifact it measured must be this build's."""
    progress = progress or Silent()
    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"{root} is not a directory; pass the output directory of edgekit build")
    manifest = load_build(root)  # structure and paths checked: a build folder is input
    entry = read_device_report(report_path)
    target = entry["target"]
    if target not in manifest.results or manifest.results[target].artifact is None:
        raise DataError(f"{report_path}: target '{target}' has no artifact in {root}; it has: {', '.join(manifest.results)}")
    files = manifest.results[target].artifact.files
    verify_files(root, list(files))
    ours = {Path(f.path).name: f.sha256 for f in files}
    for name, sha in entry["artifact_files"].items():
        if ours.get(name) != sha:
            raise TamperError(f"{report_path} measured {name} with sha256 {sha[:12]}..., not this build's {target} artifact "
                              f"({str(ours.get(name, 'no such file'))[:12]}...); bundle this build again and re-verify")
    if not entry["artifact_files"]:
        raise DataError(f"{report_path}: key 'bundle.artifact_files' is empty; re-run verify.py on the device")
    reports = [r for r in manifest.devices.get(target, []) if r.get("label") != entry["label"]]
    manifest.devices[target] = [*reports, entry]
    write_outputs(root, manifest)
    progress.step(f"{target}: device report from {entry['label']} merged ({entry['verdict']})")
    return manifest, entry
