"""What `edgekit debug` found: typed records, their debug.json form (docs/debug.md) and the terminal table."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgekit.report.data import DEBUG_FILE  # noqa: F401 - where a target's analysis is written

SCHEMA = 1


@dataclass
class KeepFp32:
    """The whole model with one layer (or block) kept in FP32: its output cosine vs the FP32 reference and its cost."""

    cosine: float | None
    p50_ms: float | None = None
    latency_cost_ms: float | None = None  # this model's time minus the INT8 artifact's: median over rounds of calls
    recovered_per_ms: float | None = None  # recovered / max(cost, the timing's resolution: rank.cost_floor)
    recovered: float | None = None  # cosine - the artifact's cosine
    latency_noise_ms: float | None = None  # the standard error of latency_cost_ms
    recovered_se: float | None = None  # the standard error of recovered, from the per-sample differences
    recovered_per_ms_se: float | None = None  # the standard error of recovered_per_ms (both errors propagated)


@dataclass
class LayerReport:
    onnx_node: str
    torch_module: str | None
    op_type: str
    local_sqnr_db: float | None = None
    accumulated_sqnr_db: float | None = None
    weight_only_sqnr_db: float | None = None
    activation_only_sqnr_db: float | None = None
    keep_fp32: KeepFp32 | None = None
    rank: int | None = None

    @property
    def label(self) -> str:
        return f"{self.torch_module} ({self.onnx_node})" if self.torch_module else self.onnx_node


def most_recovered(layers: list[LayerReport]) -> LayerReport | None:
    """The layer whose FP32 gives the highest whole-model cosine, whatever it costs."""
    measured = [x for x in layers if x.keep_fp32 is not None and x.keep_fp32.cosine is not None]
    return max(measured, key=lambda x: x.keep_fp32.cosine) if measured else None  # type: ignore[union-attr]


@dataclass
class BlockReport:
    name: str
    layers: list[str]
    keep_fp32: KeepFp32 | None = None


@dataclass
class DebugReport:
    target: str
    backend: str
    precision: str
    data: str
    samples: int
    end_to_end: dict[str, float | None]
    layers: list[LayerReport] = field(default_factory=list)
    blocks: list[BlockReport] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    artifact_sha256: str = ""
    path: Path | None = None  # where debug.json was written

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"schema": SCHEMA, "target": self.target, "backend": self.backend, "precision": self.precision,
                             "data": self.data, "samples": self.samples, "end_to_end": dict(self.end_to_end),
                             "layers": [asdict(x) for x in self.layers]}
        if self.blocks:
            d["blocks"] = [asdict(b) for b in self.blocks]
        if self.notes:
            d["notes"] = list(self.notes)
        if self.artifact_sha256:
            d["artifact_sha256"] = self.artifact_sha256
        return d


def _num(value: float | None, spec: str) -> str:
    if value is None:
        return "—"
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return format(value, spec)


TABLE_COLUMNS = ("rank", "torch module", "onnx node", "op", "local dB", "accum dB", "weight/act dB", "keep-FP32 cos",
                 "cost ms", "recovered/ms")


def table_rows(layers: list[LayerReport], top: int) -> list[list[str]]:
    """The first ``top`` layers (already in rank order) as table cells."""
    rows = []
    for x in layers[:top]:
        k = x.keep_fp32
        rows.append([_num(x.rank, "d"), x.torch_module or "—", x.onnx_node, x.op_type, _num(x.local_sqnr_db, ".1f"),
                     _num(x.accumulated_sqnr_db, ".1f"),
                     f"{_num(x.weight_only_sqnr_db, '.1f')} / {_num(x.activation_only_sqnr_db, '.1f')}",
                     _num(k.cosine if k else None, ".6f"), _num(k.latency_cost_ms if k else None, "+.3f"),
                     _num(k.recovered_per_ms if k else None, ".4g")])
    return rows


def text_table(report: DebugReport, top: int) -> str:
    rows = table_rows(report.layers, top)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(TABLE_COLUMNS)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(TABLE_COLUMNS, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    e2e = report.end_to_end
    head = (f"{report.target}: {len(report.layers)} {report.precision.upper()} layer(s); whole model vs FP32 on {report.samples} "
            f"sample(s) of {report.data} data: cosine {_num(e2e.get('cosine'), '.6f')}, SQNR {_num(e2e.get('sqnr_db'), '.1f')} dB")
    more = f"\n({len(report.layers) - top} more in debug.json)" if len(report.layers) > top else ""
    best = most_recovered(report.layers)
    if best is not None and best.keep_fp32 is not None:
        k = best.keep_fp32
        more += (f"\nmost recovered, whatever the cost: {best.label} in FP32 gives cosine {_num(k.cosine, '.6f')} "
                 f"(rank {_num(best.rank, 'd')}, cost {_num(k.latency_cost_ms, '+.3f')} ms)")
    return "\n".join([head, "", *lines]) + more
