"""report.md and the terminal table: one row per target with accuracy, error, latency and size."""

from __future__ import annotations

import math
from typing import Any

COLUMNS = ("target", "status", "accuracy %", "top-1 agree", "cosine", "SQNR dB", "p50 ms", "p90 ms", "speedup", "size", "size ratio")


def _fmt(value: Any, spec: str) -> str:
    if value is None:
        return "—"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return format(value, spec)


def _bytes(n: int | None) -> str:
    if n is None:
        return "—"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _primary(metrics: dict[str, Any]) -> dict[str, Any]:
    return metrics.get("vs_torch") or metrics.get("vs_onnx") or {}


def summary_rows(manifest: dict[str, Any]) -> list[list[str]]:
    rows = []
    for name, t in manifest["targets"].items():
        m = t.get("metrics", {})
        ref = _primary(m)
        worst = ref.get("worst", {})
        lat = t.get("latency", {})
        size = t.get("size", {})
        status = t["status"]
        if t.get("measured_on") and "not the target" in t.get("measured_on", ""):
            status += " *"
        rows.append([
            name,
            status,
            _fmt(m.get("accuracy"), ".2f"),
            _fmt(ref.get("top1_agreement"), ".4f"),
            _fmt(worst.get("cosine"), ".6f"),
            _fmt(worst.get("sqnr_db"), ".1f"),
            _fmt(lat.get("p50_ms"), ".3f"),
            _fmt(lat.get("p90_ms"), ".3f"),
            _fmt(lat.get("speedup_vs_ort_fp32"), ".2f") + ("x" if lat.get("speedup_vs_ort_fp32") else ""),
            _bytes(size.get("bytes")),
            _fmt(size.get("ratio_to_fp32"), ".3f"),
        ])
    return rows


def _reference_rows(manifest: dict[str, Any]) -> list[list[str]]:
    rows = []
    for name, r in manifest.get("references", {}).items():
        lat = r.get("latency", {})
        rows.append([name, "reference", _fmt(r.get("accuracy"), ".2f"), "—", "—", "—",
                     _fmt(lat.get("p50_ms"), ".3f"), _fmt(lat.get("p90_ms"), ".3f"), "—", _bytes(r.get("bytes")), "—"])
    return rows


def text_table(manifest: dict[str, Any]) -> str:
    rows = [list(COLUMNS), *_reference_rows(manifest), *summary_rows(manifest)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(out)


def render_markdown(manifest: dict[str, Any]) -> str:
    host = manifest.get("host", {})
    val = manifest.get("validation", {})
    ref = manifest.get("reference", {})
    lines = [
        "# edgekit report",
        "",
        f"Model: `{manifest['config'].get('model', {}).get('source', '?')}` — exit code {manifest['exit_code']}",
        "",
        f"Host: {host.get('cpu', '?')}, {host.get('cores', '?')} cores, ISA {', '.join(host.get('isa', [])) or '?'}",
        f"Validation: {val.get('description', '?')} — {val.get('samples', '?')} samples"
        + (", with labels" if val.get("labelled") else ""),
        f"Reference: `{ref.get('file', {}).get('path', '?')}` ({ref.get('exporter', '?')} exporter, opset {ref.get('opset', '?')}); "
        f"{ref.get('simplify_note', '')}",
        "",
        "Error columns compare each artifact with the original torch model (or the FP32 ONNX when the source is ONNX);"
        " cosine and SQNR are the worst over outputs. Latency: batch "
        f"{val.get('latency_batch', '?')}, threads stated per target, speedup against `ort-fp32` in the same run."
        " Size ratio is against the FP32 reference ONNX.",
        "",
        _md_table(list(COLUMNS), _reference_rows(manifest) + summary_rows(manifest)),
        "",
    ]
    if any("not the target" in t.get("measured_on", "") for t in manifest["targets"].values()):
        lines += ["\\* latency measured on the build host, not the target device.", ""]
    lines += ["## Targets", ""]
    for name, t in manifest["targets"].items():
        lines.append(f"### {name} — {t['status']}")
        lines.append("")
        if t.get("reason"):
            lines += [f"Reason: {t['reason']}", ""]
        if t.get("device"):
            lines.append(f"- device: {t['device']}")
        if t.get("measured_on"):
            lines.append(f"- measured on: {t['measured_on']}")
        lat = t.get("latency", {})
        if lat.get("p50_ms") is not None:
            lines.append(
                f"- latency: p50 {lat['p50_ms']:.3f} ms, p90 {lat['p90_ms']:.3f}, p99 {lat['p99_ms']:.3f}, "
                f"mean {lat['mean_ms']:.3f} ± {lat['std_ms']:.3f} ms over {lat['runs']} runs "
                f"(batch {lat.get('batch')}, {lat.get('threads')} threads, {lat.get('warmup')} warm-up)"
            )
        for f in t.get("files", []):
            lines.append(f"- file: `{f['path']}` — {f['bytes']} bytes, sha256 `{f['sha256'][:16]}…`")
        for key, note in (t.get("notes") or {}).items():
            if isinstance(note, dict):
                note = ", ".join(f"{k} {v}" for k, v in note.items())
            elif isinstance(note, list):
                note = "; ".join(str(v) for v in note)
            lines.append(f"- {key}: {note}")
        for g in t.get("gates", []):
            mark = {True: "pass", False: "FAIL", None: "not checked"}[g["passed"]]
            lines.append(f"- gate {mark}: {g['message']}")
        lines.append("")
    if manifest.get("compress"):
        lines += ["## Compression", ""]
        for step in manifest["compress"]:
            lines.append(f"- {step.get('method')}: " + ", ".join(f"{k} {v}" for k, v in step.items() if k != "method"))
        lines.append("")
    return "\n".join(lines)
