"""The manifest: versions, resolved config, input hashes, per-target results; read, verified and written here."""

from __future__ import annotations

import hashlib
import json
import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit import strictjson
from edgekit.errors import EdgekitError, TamperError
from edgekit.fsutil import atomic_write_json, atomic_write_text
from edgekit.fsutil import file_sha256
from edgekit.profiles import parse_profile, profile_to_dict
from edgekit.report import ReportData, read_report_data, render_html, render_markdown
from edgekit.report.data import HISTOGRAM_KEY
from edgekit.report.markdown import debug_reports
from edgekit.types import (Artifact, ArtifactFile, FeedSource, GateVerdict, Metrics, Recovery, SizeInfo, TargetLatency,
                           TargetProfile, TargetResult)
from edgekit.validate.verdict import exit_code

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


BACKEND_RUNTIMES = ("onnxruntime", "torch", "tensorrt")  # versions the backends report (Backend.versions())


def library_versions() -> dict[str, str]:
    """Python, edgekit's libraries (package metadata) and each backend's runtime (asked of the backend)."""
    from importlib import metadata

    from edgekit import backends

    versions = {"python": sys.version.split()[0]}
    for dist in ("edgekit", "numpy", "onnx", "onnxsim", "onnxscript", "safetensors", "torch-pruning"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    answered = backends.versions()
    versions.update({name: answered.get(name, "not installed") for name in BACKEND_RUNTIMES})
    return versions


def result_to_dict(r: TargetResult) -> dict[str, Any]:
    return {
        "status": r.status,
        "reason": r.reason,
        "files": [vars(f) for f in r.artifact.files] if r.artifact else [],
        "notes": r.artifact.notes if r.artifact else {},
        "metrics": r.metrics.to_dict() if r.metrics else {},
        "latency": r.latency.to_dict() if r.latency else {},
        "size": r.size.to_dict() if r.size else {},
        "gates": [g.to_dict() for g in r.gates],
        "build_seconds": r.build_seconds,
        "device": r.device,
        "measured_on": r.measured_on,
        **({"recovery": r.recovery.to_dict()} if r.recovery is not None else {}),
    }


def result_from_dict(name: str, d: dict[str, Any]) -> TargetResult:
    files = tuple(ArtifactFile(**f) for f in d.get("files", []))
    artifact = Artifact.from_record(name, files, d.get("notes", {})) if files else None
    metrics, latency, size = d.get("metrics") or {}, d.get("latency") or {}, d.get("size") or {}
    return TargetResult(
        target=name, status=d["status"], reason=d.get("reason", ""), artifact=artifact,
        metrics=Metrics.from_dict(metrics) if metrics else None,
        latency=TargetLatency.from_dict(latency) if latency else None,
        size=SizeInfo.from_dict(size) if size else None,
        gates=[GateVerdict.from_dict(g) for g in d.get("gates", [])], build_seconds=d.get("build_seconds"),
        device=d.get("device", ""), measured_on=d.get("measured_on", ""),
        recovery=Recovery.from_dict(d["recovery"]) if d.get("recovery") else None,
    )


def profile_from_dict(name: str, d: dict[str, Any]) -> TargetProfile:
    """A target's profile as the manifest recorded it (``profile_to_dict``), checked like a profile file."""
    raw = {k: d[k] for k in ("description", "backend", "precision", "device", "host_is_device", "recipe", "runtime", "gates")}
    return parse_profile(name, raw, d.get("source", "manifest"))


def input_hashes(
    model_fingerprint: str, weights: Path | None, feeds: dict[str, FeedSource | None], profiles: dict[str, TargetProfile]
) -> dict[str, Any]:
    """The manifest's ``inputs``: the model, its weights file, every data section opened, every resolved profile."""
    hashes: dict[str, Any] = {"model": model_fingerprint}
    if weights is not None:
        hashes["weights"] = file_sha256(weights)
    for section, feed in feeds.items():
        if feed is not None:
            hashes[section] = feed.fingerprint()
    hashes["profiles"] = {
        n: hashlib.sha256(json.dumps(profile_to_dict(pr), sort_keys=True).encode()).hexdigest() for n, pr in profiles.items()
    }
    return hashes


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
    devices: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # target -> device reports merged in

    @property
    def exit_code(self) -> int:
        """The CLI's exit code for these results (``edgekit.validate.verdict.exit_code`` states the rule)."""
        return exit_code((r.status for r in self.results.values()), self.strict)

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
            **({"devices": self.devices} if self.devices else {}),
            "exit_code": self.exit_code,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Manifest":
        return cls(
            config=d["config"], inputs=d["inputs"], reference=d["reference"], validation=d["validation"],
            references=d.get("references", {}),
            results={n: result_from_dict(n, r) for n, r in d["targets"].items()},
            profiles=d.get("profiles", {}), strict=d.get("strict", False), versions=d["versions"], host=d["host"],
            compress=d.get("compress", []), devices=d.get("devices", {}),
        )


def read_manifest(root: Path) -> Manifest:
    path = root / MANIFEST
    if not path.is_file():
        raise EdgekitError(f"{root} has no {MANIFEST}; is it an edgekit output directory (edgekit build ... -o DIR)?")
    try:
        data = strictjson.restore(json.loads(path.read_text(encoding="utf-8")))
        return Manifest.from_dict(data)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError, UnicodeDecodeError, RecursionError) as exc:
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


def _metrics_record(path: Path, name: str, result: TargetResult) -> dict[str, Any]:
    """A target's metrics.json: its manifest record plus its per-sample error histogram (``error_histogram``, for
    report.html). A record not measured in this run (a kept target, a merged device report) keeps the histogram its
    earlier file had, when that file holds the very same metrics."""
    record: dict[str, Any] = {"target": name, **result_to_dict(result)}
    histogram = result.metrics.histogram if result.metrics is not None else None
    if histogram is None and path.is_file():
        try:
            earlier = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, UnicodeDecodeError, RecursionError):
            earlier = None
        if isinstance(earlier, dict) and earlier.get("metrics") == json.loads(strictjson.dumps(record["metrics"], default=str)):
            histogram = earlier.get(HISTOGRAM_KEY)
    if histogram is not None:
        record[HISTOGRAM_KEY] = histogram
    return record


def write_reports(root: Path, data: dict[str, Any], extra: ReportData) -> None:
    """report.md and report.html of the manifest-shaped ``data`` into ``root``."""
    plain = json.loads(json.dumps(data, default=str))
    atomic_write_text(root / "report.md", render_markdown(plain, debug_reports(extra.debug, plain)))
    atomic_write_text(root / "report.html", render_html(plain, extra))


def write_outputs(root: Path, manifest: Manifest) -> None:
    """Write the manifest, each target's metrics.json and the reports (report.md, report.html) into ``root``."""
    data = manifest.to_dict()
    for name, result in manifest.results.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        path = root / name / "metrics.json"
        atomic_write_json(path, _metrics_record(path, name, result))
    atomic_write_json(root / MANIFEST, data)
    write_reports(root, data, read_report_data(root, manifest.results))


VALIDATIONS = "validations"


def validation_record_dir(root: Path, data: Path, fingerprint: str) -> Path:
    """Where a re-validation on other data is recorded: ``root/validations/<data name>-<fingerprint[:8]>``."""
    import re

    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(data).stem)[:64] or "data"
    return root / VALIDATIONS / (f"{stem}-{fingerprint[:8]}" if fingerprint else stem)


def write_validation_record(record: Path, manifest: Manifest, data: str) -> None:
    """A re-validation's results (``validation.json``: the measured targets, the data and its references) and its
    reports (report.md, report.html), in ``record``; the build's manifest.json is not touched."""
    d = manifest.to_dict()
    d["validated_on"] = data
    atomic_write_json(record / "validation.json", d)
    histograms = {n: r.metrics.histogram for n, r in manifest.results.items() if r.metrics is not None and r.metrics.histogram}
    write_reports(record, d, ReportData(histograms=histograms))
