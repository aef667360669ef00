"""report.md and the terminal table: one row per target with accuracy, error, latency and size."""

from __future__ import annotations

import math
from typing import Any

from edgekit.report.data import DEBUG_FILE

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


def primary_comparison(metrics: dict[str, Any]) -> dict[str, Any]:
    """The comparison a target is judged by: against torch when measured, else against the ONNX reference."""
    return metrics.get("vs_torch") or metrics.get("vs_onnx") or {}


def summary_rows(manifest: dict[str, Any]) -> list[list[str]]:
    rows = []
    for name, t in manifest["targets"].items():
        m = t.get("metrics", {})
        ref = primary_comparison(m)
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
            _fmt(lat.get("p50_ms"), ".3f") + "".join(f" ({d})" for d in device_notes(manifest, name)),
            _fmt(lat.get("p90_ms"), ".3f"),
            _fmt(lat.get("speedup_vs_ort_fp32"), ".2f") + ("x" if lat.get("speedup_vs_ort_fp32") else ""),
            _bytes(size.get("bytes")),
            _fmt(size.get("ratio_to_fp32"), ".3f"),
        ])
    return rows


def device_notes(manifest: dict[str, Any], name: str, detail: bool = False) -> list[str]:
    """"measured on <device>: ..." for each device report merged into the manifest for target ``name``."""
    notes = []
    for r in manifest.get("devices", {}).get(name, []):
        lat = r.get("latency", {})
        p50 = f"p50 {_fmt(lat.get('p50_ms'), '.3f')} ms" + ("" if lat.get("meaningful", True) else " (emulated: meaningless)")
        if detail:
            p50 += (f", p90 {_fmt(lat.get('p90_ms'), '.3f')}, p99 {_fmt(lat.get('p99_ms'), '.3f')} ({lat.get('threads')} threads, "
                    f"{lat.get('runs')} runs, {r.get('runtime', '?')}); worst cosine vs FP32 "
                    + _fmt(min((o["cosine"] for o in r.get("vs_reference", {}).values()), default=None), ".6f"))
        verdict = "within tolerance" if r.get("verdict") == "pass" else "OUTSIDE tolerance: " + "; ".join(r.get("failures", []))
        notes.append(f"measured on {r.get('label', '?')}: {p50}, {verdict}")
    return notes


def reference_rows(manifest: dict[str, Any]) -> list[list[str]]:
    """Table rows for the FP32 references (torch, ONNX) the targets are measured against."""
    rows = []
    for name, r in manifest.get("references", {}).items():
        lat = r.get("latency", {})
        rows.append([name, "reference", _fmt(r.get("accuracy"), ".2f"), "—", "—", "—",
                     _fmt(lat.get("p50_ms"), ".3f"), _fmt(lat.get("p90_ms"), ".3f"), "—", _bytes(r.get("bytes")), "—"])
    return rows


def undecided_notes(manifest: dict[str, Any]) -> list[str]:
    """One line per reason some gates could not be decided (too few samples, a model too fast to time), naming the
    targets and gates it applies to; the gates themselves say what would decide them (docs/gates.md)."""
    by_reason: dict[str, list[str]] = {}
    for name, t in manifest["targets"].items():
        for g in t.get("gates", []):
            if g.get("passed") is None and g.get("resolution"):
                by_reason.setdefault(g["resolution"], []).append(f"{name} {g['gate']}")
    return [f"not decided ({', '.join(where)}): {reason}" for reason, where in by_reason.items()]


def text_table(manifest: dict[str, Any]) -> str:
    rows = [list(COLUMNS), *reference_rows(manifest), *summary_rows(manifest)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(out)


def render_markdown(manifest: dict[str, Any], debug: dict[str, dict[str, Any]] | None = None) -> str:
    """report.md of a manifest dict; ``debug`` ({target: debug.json content}, see ``debug_reports``) adds the
    per-layer analysis of `edgekit debug`."""
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
        *(f"Data warning: {w}" for w in val.get("data_warnings", [])),
        f"Reference: `{ref.get('file', {}).get('path', '?')}` ({ref.get('exporter', '?')} exporter, opset {ref.get('opset', '?')}); "
        f"{ref.get('simplify_note', '')}",
        *(f"Model {key}: {note}" for key, note in (ref.get("model_notes") or {}).items()),  # e.g. an hf: folder's
        "",
        ("Error columns compare each artifact with the compressed torch model that was exported (what compression"
         " itself cost against the original is in the Compression section);" if manifest.get("compress") else
         "Error columns compare each artifact with the original torch model (or the FP32 ONNX when the source is ONNX);")
        +
        " cosine and SQNR are the worst over outputs. Latency: batch "
        f"{val.get('latency_batch', '?')}, threads stated per target, speedup against `ort-fp32` in the same run."
        " Size ratio is against the FP32 reference ONNX.",
        "",
        _md_table(list(COLUMNS), reference_rows(manifest) + summary_rows(manifest)),
        "",
    ]
    if any("not the target" in t.get("measured_on", "") for t in manifest["targets"].values()):
        lines += ["\\* latency measured on the build host, not the target device.", ""]
    undecided = undecided_notes(manifest)
    if undecided:
        lines += ["Gates the data cannot decide (they do not fail a target; docs/gates.md):", "",
                  *(f"- {note}" for note in undecided), ""]
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
        lines += [f"- {note}" for note in device_notes(manifest, name, detail=True)]
        for f in t.get("files", []):
            lines.append(f"- file: `{f['path']}` — {f['bytes']} bytes, sha256 `{f['sha256'][:16]}…`")
        for key, note in (t.get("notes") or {}).items():
            if isinstance(note, dict):
                note = ", ".join(f"{k} {v}" for k, v in note.items())
            elif isinstance(note, list):
                note = "; ".join(str(v) for v in note)
            lines.append(f"- {key}: {note}")
        for g in t.get("gates", []):
            mark = {True: "pass", False: "FAIL", None: "not decided" if g.get("resolution") else "not checked"}[g["passed"]]
            ci = g.get("interval")
            shown_ci = f" (95% CI [{ci[0]:.4g}, {ci[1]:.4g}])" if ci and "95% CI" not in g["message"] else ""
            lines.append(f"- gate {mark}: {g['message']}{shown_ci}")
        lines.append("")
        if isinstance(t.get("recovery"), dict) and t["recovery"]:
            lines += recovery_section(t["recovery"])
    if manifest.get("compress"):
        lines += compression_section(manifest["compress"])
    if debug:
        lines += per_layer_section(debug)
    return "\n".join(lines)


# ---------------------------------------------------------------- compression

COMPRESS_COLUMNS = ("stage", "params", "ONNX params", "ONNX size", "ort-fp32 p50 ms", "speedup", "cosine", "top-1 agree", "accuracy %")


def _count(n: int | None) -> str:
    return "—" if n is None else f"{n:,}"


def _change(before: float | None, after: float | None) -> str:
    if not before or after is None:
        return ""
    return f" ({100.0 * (after - before) / before:+.1f}%)"


def _stage_row(label: str, st: dict[str, Any]) -> list[str]:
    speedup = st.get("p50_speedup_vs_uncompressed")
    return [
        label,
        _count(st.get("params")),
        _count(st.get("onnx_params")),
        _bytes(st.get("onnx_bytes")),
        _fmt(st.get("p50_ms"), ".3f"),
        _fmt(speedup, ".2f") + ("x" if speedup else ""),
        _fmt(st.get("cosine"), ".6f"),
        _fmt(st.get("top1_agreement"), ".4f"),
        _fmt(st.get("accuracy"), ".2f"),
    ]


def compression_section(steps: list[dict[str, Any]]) -> list[str]:
    """The [[compress]] steps: one row per stage (uncompressed, then after each step), then each step's details."""
    how = steps[0].get("measured_on", {})
    lines = [
        "## Compression",
        "",
        "The `[[compress]]` steps, applied in order to the torch model before export. Every stage was exported like the "
        f"reference and measured in this run: error (cosine, top-1 agreement) against {how.get('error_reference', '?')} on "
        f"{how.get('data', '?')} ({how.get('samples', '?')} samples); latency on {how.get('latency', '?')}."
        " The target table above measures each artifact against the compressed model (the one exported);"
        " its accuracy column, like this one, is against the labels.",
        "",
        _md_table(list(COMPRESS_COLUMNS), [_stage_row("uncompressed", steps[0].get("before", {}))]
                  + [_stage_row(f"{s['step']}. {s['method']}", s.get("after", {})) for s in steps]),
        "",
    ]
    for s in steps:
        b, a = s.get("before", {}), s.get("after", {})
        lines += [f"### {s['step']}. {s['method']} — {s.get('seconds', 0):.1f} s", ""]
        settings = ", ".join(f"{k} {v}" for k, v in s.get("settings", {}).items() if k != "method")
        lines.append(f"- settings: {settings or 'defaults'}")
        lines.append(f"- params: {_count(b.get('params'))} → {_count(a.get('params'))}{_change(b.get('params'), a.get('params'))}; "
                     f"non-zero {_count(b.get('nonzero_params'))} → {_count(a.get('nonzero_params'))}")
        lines.append(f"- reference ONNX: {_count(b.get('onnx_params'))} → {_count(a.get('onnx_params'))} params"
                     f"{_change(b.get('onnx_params'), a.get('onnx_params'))}, {_count(b.get('onnx_bytes'))} → "
                     f"{_count(a.get('onnx_bytes'))} bytes{_change(b.get('onnx_bytes'), a.get('onnx_bytes'))}")
        if b.get("p50_ms") is not None and a.get("p50_ms") is not None:
            lines.append(f"- ort-fp32 p50: {b['p50_ms']:.3f} → {a['p50_ms']:.3f} ms ({_fmt(s.get('p50_speedup'), '.2f')}x), "
                         f"p90 {b.get('p90_ms', 0):.3f} → {a.get('p90_ms', 0):.3f} ms")
        lines.append(f"- cosine vs uncompressed: {_fmt(b.get('cosine'), '.6f')} → {_fmt(a.get('cosine'), '.6f')}"
                     f" (worst sample {_fmt(b.get('min_cosine'), '.4f')} → {_fmt(a.get('min_cosine'), '.4f')})")
        if "accuracy" in a or "accuracy" in b:
            lines.append(f"- accuracy: {_fmt(b.get('accuracy'), '.2f')} → {_fmt(a.get('accuracy'), '.2f')} %")
        for key, value in s.get("details", {}).items():
            if isinstance(value, dict):
                value = ", ".join(f"{k} {v}" for k, v in value.items())
            elif isinstance(value, list):
                value = ", ".join(str(v) for v in value) or "none"
            lines.append(f"- {key.replace('_', ' ')}: {value}")
        if a.get("error"):
            lines.append(f"- measuring this stage failed: {a['error']}")
        lines.append("")
    return lines


# ---------------------------------------------------------------- per-layer analysis (edgekit debug)

DEBUG_TOP = 10
LAYER_COLUMNS = ("rank", "layer", "op", "local SQNR dB", "accumulated SQNR dB", "weight / act. SQNR dB", "keep-FP32 cosine",
                 "cost ms", "recovered/ms")


def artifact_digest(files: list[dict[str, Any]]) -> str:
    """One digest of an artifact's files (their sha256s in order): debug.json records it to tell a stale analysis."""
    import hashlib

    return hashlib.sha256("".join(f["sha256"] for f in files).encode()).hexdigest()


def debug_reports(debug: dict[str, dict[str, Any]], manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{target: its debug.json} (as report/data.read_report_data read them) for the targets of ``manifest``; an
    analysis of other artifact bytes than the manifest's is marked ``stale``."""
    found = {}
    for name, t in manifest.get("targets", {}).items():
        d = debug.get(name)
        if d is None:
            continue
        d["stale"] = bool(d.get("artifact_sha256")) and d.get("artifact_sha256") != artifact_digest(t.get("files", []))
        found[name] = d
    return found


def per_layer_section(debug: dict[str, dict[str, Any]], top: int = DEBUG_TOP) -> list[str]:
    """The "Per-layer analysis" section of report.md: each analyzed target's first ``top`` layers."""
    lines = ["## Per-layer analysis", "",
             "From `edgekit debug DIR --target NAME` (docs/debug.md): local SQNR = the layer alone on FP32 inputs with "
             "only its own quantization; accumulated = its output inside the INT8 graph vs the FP32 graph; "
             "keep-FP32 cosine = the whole model's output with that layer left in FP32; cost = its p50 minus the "
             "artifact's; layers ranked by cosine recovered per ms of cost.", ""]
    for name, d in debug.items():
        e2e = d.get("end_to_end") or {}
        lines += [f"### {name}" + (" — STALE: the artifact changed since this analysis; run `edgekit debug` again"
                                   if d.get("stale") else ""), "",
                  f"{len(d['layers'])} {str(d.get('precision', '')).upper()} layer(s), {d.get('samples', '?')} sample(s) of {d.get('data', '?')} "
                  f"data; whole model vs FP32: cosine {_fmt(e2e.get('cosine'), '.6f')}, SQNR {_fmt(e2e.get('sqnr_db'), '.1f')} dB",
                  ""]
        rows = []
        for x in d["layers"][:top]:
            if not isinstance(x, dict):
                continue
            k = x.get("keep_fp32") or {}
            label = f"`{x['torch_module']}` ({x.get('onnx_node')})" if x.get("torch_module") else f"`{x.get('onnx_node')}`"
            rows.append([_fmt(x.get("rank"), "d"), label, str(x.get("op_type", "?")), _fmt(x.get("local_sqnr_db"), ".1f"),
                         _fmt(x.get("accumulated_sqnr_db"), ".1f"),
                         f"{_fmt(x.get('weight_only_sqnr_db'), '.1f')} / {_fmt(x.get('activation_only_sqnr_db'), '.1f')}",
                         _fmt(k.get("cosine"), ".6f"), _fmt(k.get("latency_cost_ms"), "+.3f"), _fmt(k.get("recovered_per_ms"), ".4g")])
        if rows:
            lines += [_md_table(list(LAYER_COLUMNS), rows), ""]
        if len(d["layers"]) > top:
            lines += [f"{len(d['layers']) - top} more layer(s) in `{name}/{DEBUG_FILE}`.", ""]
        kept = [x for x in d["layers"] if isinstance(x, dict) and (x.get("keep_fp32") or {}).get("cosine") is not None]
        if kept:
            best = max(kept, key=lambda x: x["keep_fp32"]["cosine"])
            lines += [f"Most recovered, whatever the cost: `{best.get('torch_module') or best.get('onnx_node')}` "
                      f"({best.get('onnx_node')}) in FP32 gives cosine {_fmt(best['keep_fp32']['cosine'], '.6f')} "
                      f"(rank {_fmt(best.get('rank'), 'd')}, cost {_fmt(best['keep_fp32'].get('latency_cost_ms'), '+.3f')} ms).", ""]
        lines += [f"- {note}" for note in d.get("notes", []) if isinstance(note, str)]
        lines.append("")
    return lines


# ---------------------------------------------------------------- recovery


def recovery_section(r: dict[str, Any]) -> list[str]:
    """A target's recovery (manifest results[target]["recovery"]): the outcome, then every attempt."""
    chosen = r.get("chosen")
    outcome = ("met every gate" if r.get("met") else "no candidate met every gate; the best so far was written") + (
        f", attempt {chosen} written" if chosen is not None else ", the original kept")
    lines = [f"#### Recovery: {outcome} ({_fmt(r.get('seconds'), '.0f')} s of a {_fmt(r.get('budget_s'), 'g')} s budget)", ""]
    rows = []
    for i, a in enumerate(r.get("attempts", [])):  # a record read back from a folder may be partial: "—" for a gap
        if not isinstance(a, dict):
            continue
        speed = f"{a['speedup']:.2f}x" if isinstance(a.get("speedup"), (int, float)) else "—"
        passed = {True: "yes", False: "no"}.get(a.get("gates_passed"), "—")
        rows.append([str(i) + (" ✓" if i == chosen else ""), str(a.get("step", "—")), str(a.get("change", "—")),
                     _fmt(a.get("cosine"), ".6f"), _fmt(a.get("accuracy"), ".2f"), _fmt(a.get("p50_ms"), ".3f"), speed,
                     _fmt(a.get("seconds"), ".1f"), passed])
    lines += [_md_table(["#", "step", "change", "cosine", "accuracy %", "p50 ms", "speedup", "seconds", "gates"], rows), ""]
    return lines

