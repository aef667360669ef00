"""A build folder read back is input: the manifest's structure and every path in it are checked before use.

``load_build`` returns the Manifest only when every file entry is a relative path that stays inside the folder
(no ``..``, no absolute path, no symlink out), each target's status is known, a built target lists its files and
its profile, and the reference entry is whole. ``verify_build`` re-checks the sha256 of what will be used.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path, PurePosixPath
from typing import Any

from edgekit import strictjson
from edgekit.errors import EdgekitError, TamperError
from edgekit.fsutil import check_regular_file
from edgekit.manifest import MANIFEST, Manifest, verify_files
from edgekit.types import STATUSES, ArtifactFile, reference_files

MAX_MANIFEST_BYTES = 64 << 20  # a manifest is a few hundred KB; anything this large is not one
_SHA = re.compile(r"[0-9a-f]{64}")
REBUILD = "rebuild with edgekit build"


def _bad(path: Path, what: str) -> TamperError:
    return TamperError(f"{path}: {what}; the manifest was edited or damaged: {REBUILD}")


def _file_entry(root: Path, entry: Any, where: str, manifest: Path) -> ArtifactFile:
    if not isinstance(entry, dict) or set(entry) != {"path", "sha256", "bytes"}:
        raise _bad(manifest, f"{where} must be {{path, sha256, bytes}}, got {str(entry)[:80]!r}")
    path, sha, size = entry["path"], entry["sha256"], entry["bytes"]
    if not isinstance(path, str) or not path or "\x00" in path:
        raise _bad(manifest, f"{where}.path must be a non-empty string")
    if not isinstance(sha, str) or not _SHA.fullmatch(sha):
        raise _bad(manifest, f"{where}.sha256 {str(sha)[:20]!r} is not a sha256 hex digest")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise _bad(manifest, f"{where}.bytes {size!r} is not a byte count")
    inside_path(root, path, f"{where}.path", manifest)
    return ArtifactFile(path, sha, size)


def inside_path(root: Path, rel: str, where: str, manifest: Path) -> Path:
    """``root / rel`` after checking that ``rel`` is relative, has no ``..`` and resolves inside ``root``."""
    pure = PurePosixPath(rel)
    if pure.is_absolute() or os.path.isabs(rel) or ".." in pure.parts or rel.startswith("~"):
        raise _bad(manifest, f"{where} {rel!r} points outside the build folder")
    full = root / rel
    real_root = root.resolve()
    if not full.resolve().is_relative_to(real_root):
        raise _bad(manifest, f"{where} {rel!r} resolves outside the build folder (a symlink?)")
    return full


def _need(d: Any, key: str, kind: type | tuple[type, ...], where: str, manifest: Path) -> Any:
    if not isinstance(d, dict) or key not in d:
        raise _bad(manifest, f"'{where}{key}' is missing")
    value = d[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise _bad(manifest, f"'{where}{key}' is {type(value).__name__}, expected {getattr(kind, '__name__', kind)}")
    return value


def check_structure(root: Path, data: Any, manifest: Path) -> None:
    """Raise TamperError naming the first part of a manifest document that edgekit could not use safely."""
    if not isinstance(data, dict):
        raise _bad(manifest, "the manifest is not a JSON object")
    for key in ("config", "inputs", "reference", "validation", "versions", "host", "targets"):
        _need(data, key, dict, "", manifest)
    ref = data["reference"]
    _file_entry(root, _need(ref, "file", dict, "reference.", manifest), "reference.file", manifest)
    data_files = ref.get("data_files", [])
    if not isinstance(data_files, list):
        raise _bad(manifest, "'reference.data_files' is not a list")
    for i, entry in enumerate(data_files):
        _file_entry(root, entry, f"reference.data_files[{i}]", manifest)
    for key, kind in (("exporter", str), ("opset", int), ("simplified", bool), ("simplify_note", str),
                      ("inputs", list), ("outputs", list)):
        _need(ref, key, kind, "reference.", manifest)
    for i, spec in enumerate(ref["inputs"]):
        if not (isinstance(spec, dict) and isinstance(spec.get("name"), str) and isinstance(spec.get("shape"), list)
                and isinstance(spec.get("dtype"), str)):
            raise _bad(manifest, f"reference.inputs[{i}] must be {{name, shape, dtype}}")
    if not ref["outputs"] or not all(isinstance(o, str) for o in ref["outputs"]):
        raise _bad(manifest, "reference.outputs must be a non-empty list of names")
    for key, kind in (("profiles", dict), ("references", dict), ("compress", list), ("strict", bool)):
        if key in data and not isinstance(data[key], kind):
            raise _bad(manifest, f"'{key}' is {type(data[key]).__name__}, expected {kind.__name__}")
    profiles = data.get("profiles", {})
    seen: dict[str, str] = {}
    for name, t in data["targets"].items():
        where = f"targets.{name}."
        status = _need(t, "status", str, where, manifest)
        if status not in STATUSES:
            raise _bad(manifest, f"'{where}status' {status!r} is not one of {', '.join(STATUSES)}")
        files = t.get("files", [])
        if not isinstance(files, list):
            raise _bad(manifest, f"'{where}files' is not a list")
        for i, entry in enumerate(files):
            f = _file_entry(root, entry, f"{where}files[{i}]", manifest)
            if f.path in seen:
                raise _bad(manifest, f"{f.path} is listed twice ({seen[f.path]} and {name})")
            seen[f.path] = name
        if status in ("passed", "failed") and not files:
            raise _bad(manifest, f"target '{name}' is {status} but lists no files")
        if files and not isinstance(profiles.get(name), dict):
            raise _bad(manifest, f"target '{name}' has files but no entry in 'profiles'")
        for key in ("notes", "metrics", "latency", "size", "recovery"):
            if key in t and not isinstance(t[key], dict):
                raise _bad(manifest, f"'{where}{key}' is not an object")
        if "gates" in t and not isinstance(t["gates"], list):
            raise _bad(manifest, f"'{where}gates' is not a list")


def load_build(root: Path) -> Manifest:
    """The Manifest of the build folder ``root``, after every check of ``check_structure``."""
    root = Path(root)
    if not root.is_dir():
        raise EdgekitError(f"{root} is not a directory; pass the output directory of edgekit build")
    path = root / MANIFEST
    if not path.exists() and not path.is_symlink():
        raise EdgekitError(f"{root} has no {MANIFEST}; is it an edgekit output directory (edgekit build ... -o DIR)?")
    check_regular_file(path, "the build's manifest", max_bytes=MAX_MANIFEST_BYTES, error=TamperError)
    try:
        data = strictjson.restore(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise TamperError(f"{path} is not valid JSON ({type(exc).__name__}: {str(exc)[:120]}); {REBUILD}") from None
    check_structure(root, data, path)
    try:
        return Manifest.from_dict(data)
    except (LookupError, TypeError, ValueError, AttributeError) as exc:  # a key missing, a list too short, ...
        raise TamperError(f"{path} is not a valid edgekit manifest ({type(exc).__name__}: {exc}); {REBUILD}") from None


def verify_build(root: Path, manifest: Manifest, targets: tuple[str, ...]) -> None:
    """Re-check the sha256 of the reference and of every file of ``targets`` (TamperError names the first that differs)."""
    verify_files(root, reference_files(manifest.reference))
    for name in targets:
        r = manifest.results[name]
        if r.artifact is not None:
            verify_files(root, list(r.artifact.files))


def changed_inputs(manifest: Manifest, model: str | None = None, weights: Path | None = None,
                   validation: str | None = None) -> None:
    """Raise when an input the build recorded (model fingerprint, weights sha256, validation data fingerprint) is
    no longer what the manifest says: an input changed, not an artifact, and the message says which."""
    from edgekit.errors import DataError, ModelError, WeightsError
    from edgekit.fsutil import file_sha256

    recorded = manifest.inputs
    if weights is not None and recorded.get("weights") is not None:
        check_regular_file(weights, "weights file", error=WeightsError)
        if file_sha256(weights) != recorded["weights"]:
            raise WeightsError(f"weights file {weights} changed since the build (sha256 differs from the manifest's "
                               "inputs.weights); the artifacts are unchanged but were built from the old weights: "
                               "rebuild with edgekit build")
    if model is not None and recorded.get("model") not in (None, model):
        raise ModelError(f"the model {manifest.config.get('model', {}).get('source')} changed since the build (its "
                         "fingerprint differs from the manifest's inputs.model); the artifacts are unchanged but were "
                         "built from the old model: rebuild with edgekit build")
    if validation is not None and recorded.get("validation") not in (None, validation):
        data = manifest.config.get("validation", {}).get("data")
        raise DataError(f"validation data {data} changed since the build (its fingerprint differs from the manifest's "
                        "inputs.validation); the artifacts are unchanged: validate on it with --data (recorded beside "
                        "the build's record) or rebuild")
