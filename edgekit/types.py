"""The spine's dataclasses: one name for each thing that flows from config to report.

    BuildConfig ─load─▶ SourceModel ─compress─▶ SourceModel ─export+simplify─▶ Reference
    Reference + TargetProfile + FeedSource ─backend.build─▶ Artifact ─validate─▶ TargetResult
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Protocol, Sequence

import numpy as np

from edgekit.fsutil import file_sha256

if TYPE_CHECKING:  # torch is heavy; import it only where a torch model is touched
    import torch

Dim = int | str
"""A tensor dimension: a fixed size, or a symbolic name such as ``"batch"``."""

Feed = dict[str, np.ndarray]
"""One batch of model inputs, keyed by input name."""

STATUSES = ("passed", "failed", "unavailable", "error")


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape (ints or symbolic names) and numpy dtype name of one model input or output."""

    name: str
    shape: tuple[Dim, ...]
    dtype: str = "float32"

    @property
    def dynamic_axes(self) -> dict[int, str]:
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}

    def example_shape(self, batch: int | None = None) -> tuple[int, ...]:
        """A concrete shape: symbolic dims become 1, or ``batch`` on axis 0."""
        dims = []
        for i, d in enumerate(self.shape):
            if isinstance(d, str):
                dims.append(batch if (i == 0 and batch) else 1)
            else:
                dims.append(batch if (i == 0 and batch and 0 in self.dynamic_axes) else d)
        return tuple(dims)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


def batch_rows(specs: Sequence[TensorSpec], wanted: int) -> int:
    """How many samples one batch holds: ``wanted`` when every input's axis 0 is dynamic, else 1 (the model takes
    one sample at a time). The one batching rule of calibration and validation."""
    return wanted if all(0 in s.dynamic_axes for s in specs) else 1


@dataclass(frozen=True)
class Batch:
    """One batch from a FeedSource: the inputs and, if the data has them, the labels."""

    feed: Feed
    labels: np.ndarray | None = None

    @property
    def size(self) -> int:
        return int(next(iter(self.feed.values())).shape[0])


class FeedSource(Protocol):
    """A re-iterable, checked stream of batches; memory stays bounded by one batch."""

    specs: tuple[TensorSpec, ...]
    description: str

    def batches(self, batch_size: int) -> Iterator[Batch]: ...

    def fingerprint(self) -> str: ...


@dataclass
class SourceModel:
    """The model as the user gave it: a torch module (or an ONNX file) plus its specs and task."""

    source: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[str, ...]
    task: str | None = None
    module: "torch.nn.Module | None" = None
    onnx_path: Path | None = None
    fingerprint: str = ""
    notes: dict[str, Any] = field(default_factory=dict)  # what loading decided (hf: head, pooling, attention exported)
    weights_note: str = ""  # how the state_dict was found in the weights file (a checkpoint key, a stripped prefix)

    @property
    def is_torch(self) -> bool:
        return self.module is not None


@dataclass
class Reference:
    """The simplified FP32 ONNX every target is built from, and whether simplification was verified."""

    path: Path
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[str, ...]
    exporter: str
    opset: int
    simplified: bool
    simplify_note: str
    data_files: tuple[Path, ...] = ()  # the external data files beside ``path`` (a model over 2 GB, or when asked)

    def to_dict(self, root: Path) -> dict[str, Any]:
        """The manifest's ``reference`` entry; the file path is relative to the output directory ``root``."""
        extra = {"data_files": [vars(ArtifactFile.of(p, root)) for p in self.data_files]} if self.data_files else {}
        return {
            **extra,
            "file": vars(ArtifactFile.of(self.path, root)),
            "exporter": self.exporter,
            "opset": self.opset,
            "simplified": self.simplified,
            "simplify_note": self.simplify_note,
            "inputs": [s.to_dict() for s in self.inputs],
            "outputs": list(self.outputs),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], root: Path) -> "Reference":
        """The reference a manifest recorded, its file under the output directory ``root``."""
        return cls(
            root / d["file"]["path"],
            tuple(TensorSpec(s["name"], tuple(s["shape"]), s["dtype"]) for s in d["inputs"]),
            tuple(d["outputs"]), d["exporter"], d["opset"], d["simplified"], d["simplify_note"],
            tuple(root / f["path"] for f in d.get("data_files", [])),
        )

    @property
    def disk_bytes(self) -> int:
        """The FP32 model's size on disk: the .onnx file and its external data."""
        return sum(p.stat().st_size for p in (self.path, *self.data_files))


def reference_files(d: Mapping[str, Any]) -> list["ArtifactFile"]:
    """The files a manifest's ``reference`` entry vouches for: the .onnx and each external data file."""
    return [ArtifactFile(**d["file"]), *(ArtifactFile(**f) for f in d.get("data_files", []))]


@dataclass(frozen=True)
class Gates:
    """Pass/fail bounds; ``None`` means the gate is not checked. Drops are in accuracy points."""

    min_cosine: float | None = None
    min_sqnr_db: float | None = None
    max_mse: float | None = None
    max_abs_error: float | None = None
    min_top1_agreement: float | None = None
    max_top1_drop: float | None = None
    max_p50_ms: float | None = None
    max_size_mb: float | None = None
    max_size_ratio: float | None = None
    min_speedup: float | None = None  # p50 of ort-fp32 over this target's, same run (decided only where timeable)
    min_int8_fraction: float | None = None  # share of compute layers (Conv, MatMul, Gemm, LSTM...) running in INT8


@dataclass(frozen=True)
class RuntimeSettings:
    """How a target is run for validation and timing."""

    threads: int = 2
    warmup: int = 10
    runs: int = 100


@dataclass(frozen=True)
class TargetProfile:
    """A target as data: backend, precision, recipe, runtime settings, device, gates."""

    name: str
    backend: str
    precision: str
    device: str
    description: str = ""
    host_is_device: bool = True
    recipe: Mapping[str, Any] = field(default_factory=dict)
    runtime: RuntimeSettings = RuntimeSettings()
    gates: Gates = Gates()
    source: str = ""


@dataclass(frozen=True)
class ArtifactFile:
    """One file of an artifact, path relative to the output directory."""

    path: str
    sha256: str
    bytes: int

    @classmethod
    def of(cls, path: Path, root: Path) -> "ArtifactFile":
        return cls(str(path.relative_to(root)), file_sha256(path), path.stat().st_size)


@dataclass(frozen=True)
class LayerCensus:
    """How many of an artifact's compute layers (Conv, ConvTranspose, MatMul/Gemm/Linear with weights, LSTM/GRU,
    attention) run in INT8, counted in the artifact itself; ``fp32`` names the first ones that do not."""

    int8: int
    total: int
    fp32: tuple[str, ...] = ()

    MAX_NAMES = 20

    @property
    def fraction(self) -> float | None:
        return self.int8 / self.total if self.total else None

    def to_dict(self) -> dict[str, Any]:
        return {"int8": self.int8, "total": self.total, "fp32": list(self.fp32[: self.MAX_NAMES])}

    @classmethod
    def from_dict(cls, d: Any) -> "LayerCensus | None":
        if not isinstance(d, Mapping) or not isinstance(d.get("int8"), int) or not isinstance(d.get("total"), int):
            return None
        return cls(d["int8"], d["total"], tuple(str(n) for n in d.get("fp32", ())))


@dataclass
class Artifact:
    """What a backend built: its files, what the build decided on the way (``notes``: free text recorded in the
    manifest, never read as control data), and the typed facts the pipeline acts on."""

    target: str
    files: tuple[ArtifactFile, ...]
    notes: dict[str, Any] = field(default_factory=dict)
    measured_on: str = ""  # where this artifact's numbers come from, when the backend knows better than the profile
    proxy: str = ""  # non-empty: the files are a host proxy of the real target; the text is why (the status reason)
    warnings: tuple[str, ...] = ()  # shown to the user when the build ends (e.g. "nothing was quantized")
    layers: LayerCensus | None = None  # INT8 artifacts: compute layers in INT8 vs total (notes["int8_layers"])

    @classmethod
    def from_record(cls, target: str, files: tuple[ArtifactFile, ...], notes: dict[str, Any]) -> "Artifact":
        """The artifact as a manifest recorded it: typed facts recovered from the notes they are written in."""
        proxy = str(notes.get("host_proxy", ""))
        if proxy and notes.get("engine"):
            proxy = f"{proxy}; {notes['engine']}"
        warning = notes.get("warning")
        return cls(target, files, dict(notes), str(notes.get("measured_on", "")), proxy, (str(warning),) if warning else (),
                   LayerCensus.from_dict(notes.get("int8_layers")))

    @property
    def bytes(self) -> int:
        return sum(f.bytes for f in self.files)


@dataclass(frozen=True)
class LatencyStats:
    """Percentiles of one runner's timed calls, in milliseconds."""

    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    runs: int

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LatencyStats":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class TargetLatency:
    """A target's latency: its stats, how it was run, and its speed-up over the baseline runner."""

    stats: LatencyStats
    batch: int
    threads: int
    warmup: int
    speedup_vs_ort_fp32: float | None
    speedup_baseline: str

    def to_dict(self) -> dict[str, Any]:
        return {**self.stats.to_dict(), "batch": self.batch, "threads": self.threads, "warmup": self.warmup,
                "speedup_vs_ort_fp32": self.speedup_vs_ort_fp32, "speedup_baseline": self.speedup_baseline}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TargetLatency":
        return cls(LatencyStats.from_dict(d), d["batch"], d["threads"], d["warmup"], d["speedup_vs_ort_fp32"], d["speedup_baseline"])


@dataclass(frozen=True)
class Metrics:
    """Error metrics of one runner: summaries against the torch and ONNX references, accuracy and its drop."""

    vs_onnx: dict[str, Any]
    vs_torch: dict[str, Any] | None = None
    accuracy: float | None = None  # percent, when the validation data has labels
    top1_drop: float | None = None  # reference accuracy minus this one, in points
    # in memory only (the gates' intervals record what they decided from them): the paired 2x2 table behind
    # top1_drop (both right, only the reference, only this one, neither), and (same, total) behind top1_agreement
    paired: tuple[int, int, int, int] | None = field(default=None, compare=False)
    agreement_counts: tuple[int, int] | None = field(default=None, compare=False)
    # the primary comparison's per-sample error histogram (Comparison.histogram); not in the manifest (to_dict):
    # metrics.json and report.html carry it
    histogram: dict[str, Any] | None = field(default=None, compare=False, repr=False)

    @property
    def primary(self) -> dict[str, Any]:
        """The comparison gates read: against the torch model when there is one, else against the ONNX reference."""
        return self.vs_torch or self.vs_onnx

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        if self.vs_torch is not None:
            d["vs_torch"] = self.vs_torch
        d["vs_onnx"] = self.vs_onnx
        if self.accuracy is not None:
            d["accuracy"] = self.accuracy
        if self.top1_drop is not None:
            d["top1_drop"] = self.top1_drop
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Metrics":
        return cls(d["vs_onnx"], d.get("vs_torch"), d.get("accuracy"), d.get("top1_drop"))


@dataclass(frozen=True)
class SizeInfo:
    """An artifact's bytes, and their ratio to the FP32 reference ONNX."""

    bytes: int
    ratio_to_fp32: float
    fp32_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SizeInfo":
        return cls(d["bytes"], d["ratio_to_fp32"], d["fp32_bytes"])


@dataclass(frozen=True)
class GateVerdict:
    """One gate: its bound, the measured value, passed True/False (None: not measured, or not decided because the
    data cannot resolve the bound), and a one-line message. ``resolution``: why the data is too coarse for the bound
    (too few samples, a model too fast to time), None when it is fine enough; ``interval``: the value's 95%
    confidence interval where one is computed (accuracy gates on labelled or classification data)."""

    gate: str
    bound: float
    value: float | None
    passed: bool | None
    message: str
    resolution: str | None = None
    interval: tuple[float, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {k: v for k, v in vars(self).items() if k not in ("resolution", "interval")}
        if self.resolution is not None:
            d["resolution"] = self.resolution
        if self.interval is not None:
            d["interval"] = list(self.interval)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "GateVerdict":
        interval = d.get("interval")
        return cls(d["gate"], d["bound"], d["value"], d["passed"], d["message"], d.get("resolution"),
                   (interval[0], interval[1]) if interval else None)


@dataclass(frozen=True)
class RecoveryAttempt:
    """One candidate the build's recovery measured (edgekit/recover/): what changed and what it gave."""

    step: str  # "original" | "calibration" | "recipe" | "prefix" | "roles" | "precision"
    change: str
    cosine: float | None
    accuracy: float | None
    p50_ms: float | None
    speedup: float | None
    seconds: float
    gates_passed: bool
    excluded: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {**vars(self), "excluded": list(self.excluded)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RecoveryAttempt":
        return cls(d["step"], d["change"], d.get("cosine"), d.get("accuracy"), d.get("p50_ms"), d.get("speedup"),
                   d["seconds"], d["gates_passed"], tuple(d.get("excluded", ())))


@dataclass(frozen=True)
class Recovery:
    """What the build's recovery tried for one target; ``chosen`` indexes the attempt written (None: the original)."""

    enabled: bool
    budget_s: float
    seconds: float
    met: bool
    chosen: int | None
    attempts: tuple[RecoveryAttempt, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "budget_s": self.budget_s, "seconds": self.seconds, "met": self.met,
                "chosen": self.chosen, "attempts": [a.to_dict() for a in self.attempts]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Recovery":
        return cls(d["enabled"], d["budget_s"], d["seconds"], d["met"], d.get("chosen"),
                   tuple(RecoveryAttempt.from_dict(a) for a in d.get("attempts", ())))


@dataclass
class TargetResult:
    """Everything measured for one target; ``status`` is one of STATUSES."""

    target: str
    status: str
    reason: str = ""
    artifact: Artifact | None = None
    metrics: Metrics | None = None
    latency: TargetLatency | None = None
    size: SizeInfo | None = None
    gates: list[GateVerdict] = field(default_factory=list)
    build_seconds: float | None = None
    device: str = ""
    measured_on: str = ""
    recovery: Recovery | None = None  # set when the build's recovery ran for this target
