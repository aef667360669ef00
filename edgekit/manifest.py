"""The manifest: versions, resolved config, input hashes, per-target results; it owns the exit-code rule."""

from __future__ import annotations

import json
import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.errors import EdgekitError, TamperError
from edgekit.types import Artifact, ArtifactFile, TargetResult

MANIFEST = "manifest.json"
FORMAT = 1


def host_info() -> dict[str, Any]:
    """CPU model, core count and the ISA flags that decide INT8 speed."""
    import os

    info: dict[str, Any] = {"machine": platform.machine(), "system": platform.system(), "cores": os.cpu_count()}
    try:
        text = Path("/proc/cpuinfo").read_text()
        for line in text.splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), [])
        info["isa"] = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm") if f in flags]
    except OSError:
        info["cpu"] = platform.processor()
    return info


def library_versions() -> dict[str, str]:
    from importlib import metadata

    versions = {"python": sys.version.split()[0]}
    for dist in ("edgekit", "torch", "numpy", "onnx", "onnxruntime", "onnxsim", "onnxscript", "safetensors", "torch-pruning", "tensorrt"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    return versions


def result_to_dict(r: TargetResult) -> dict[str, Any]:
    return {
        "status": r.status,
        "reason": r.reason,
        "files": [vars(f) for f in r.artifact.files] if r.artifact else [],
        "notes": r.artifact.notes if r.artifact else {},
        "metrics": r.metrics,
        "latency": r.latency,
        "size": r.size,
        "gates": r.gates,
        "build_seconds": r.build_seconds,
        "device": r.device,
        "measured_on": r.measured_on,
    }


def result_from_dict(name: str, d: dict[str, Any]) -> TargetResult:
    files = tuple(ArtifactFile(**f) for f in d.get("files", []))
    artifact = Artifact.from_record(name, files, d.get("notes", {})) if files else None
    return TargetResult(
        target=name, status=d["status"], reason=d.get("reason", ""), artifact=artifact,
        metrics=d.get("metrics", {}), latency=d.get("latency", {}), size=d.get("size", {}),
        gates=d.get("gates", []), build_seconds=d.get("build_seconds"), device=d.get("device", ""),
        measured_on=d.get("measured_on", ""),
    )


@dataclass
class Manifest:
    """Everything a build vouches for. ``exit_code`` is the rule the CLI returns."""

    config: dict[str, Any]
    inputs: dict[str, Any]
    reference: dict[str, Any]
    validation: dict[str, Any]
    references: dict[str, Any]
    results: dict[str, TargetResult]
    profiles: dict[str, Any]
    strict: bool = False
    versions: dict[str, Any] = field(default_factory=library_versions)
    host: dict[str, Any] = field(default_factory=host_info)
    compress: list[dict[str, Any]] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """0: every target built and passed its gates.
        1: work done, but a gate failed or a target errored (artifacts written, marked failed/error).
        3: a target is unavailable on this host and --strict was given.
        (2, bad input, never reaches a manifest: it stops the build before anything is written.)
        """
        statuses = {r.status for r in self.results.values()}
        if self.strict and "unavailable" in statuses:
            return 3
        if statuses & {"failed", "error"}:
            return 1
        return 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "versions": self.versions,
            "host": self.host,
            "config": self.config,
            "inputs": self.inputs,
            "reference": self.reference,
            "compress": self.compress,
            "validation": self.validation,
            "references": self.references,
            "profiles": self.profiles,
            "strict": self.strict,
            "targets": {name: result_to_dict(r) for name, r in self.results.items()},
            "exit_code": self.exit_code,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Manifest":
        return cls(
            config=d["config"], inputs=d["inputs"], reference=d["reference"], validation=d["validation"],
            references=d.get("references", {}),
            results={n: result_from_dict(n, r) for n, r in d["targets"].items()},
            profiles=d.get("profiles", {}), strict=d.get("strict", False), versions=d["versions"], host=d["host"],
            compress=d.get("compress", []),
        )


def read_manifest(root: Path) -> Manifest:
    path = root / MANIFEST
    if not path.is_file():
        raise EdgekitError(f"{root} has no {MANIFEST}; is it an edgekit output directory (edgekit build ... -o DIR)?")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return Manifest.from_dict(data)
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise TamperError(f"{path} is not a valid edgekit manifest ({type(exc).__name__}: {exc}); rebuild with edgekit build") from None


def verify_files(root: Path, files: list[ArtifactFile]) -> None:
    """Raise TamperError naming the first file whose bytes differ from what the manifest vouches for."""
    for f in files:
        path = root / f.path
        if not path.is_file():
            raise TamperError(f"{path} is listed in the manifest but missing; rebuild with edgekit build")
        actual = ArtifactFile.of(path, root)
        if actual.sha256 != f.sha256 or actual.bytes != f.bytes:
            raise TamperError(
                f"{path} was modified after the build (sha256 {actual.sha256[:12]}… != manifest {f.sha256[:12]}…); "
                "rebuild with edgekit build"
            )
