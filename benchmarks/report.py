"""Render a benchmark results JSON (benchmarks/run.py) as BENCHMARKS.md: one table per model (and batch size),
the issue's bars checked against the measured ratios, and where edgekit wins or loses and why."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

REFERENCE = "onnx-fp32"
KIND_ORDER = {"reference": 0, "edgekit": 1, "baseline": 2, "diagnostic": 3}
HISTORY = Path(__file__).resolve().parent / "results" / "history.jsonl"

DESCRIPTIONS = {
    "torch-fp32": "torch FP32 eager (the model as trained)",
    REFERENCE: "ONNX Runtime FP32, plain export (edgekit's reference ONNX, ORT_ENABLE_ALL)",
    "ort-quantize_dynamic": "ONNX Runtime `quantize_dynamic(src, dst)`, default arguments",
    "ort-quantize_static": "ONNX Runtime `quantize_static(src, dst, reader)`, default arguments (QDQ, s8/s8, per-tensor, MinMax)",
    "sentence-transformers avx512_vnni": "sentence-transformers `export_dynamic_quantized_onnx_model(model, \"avx512_vnni\")` (Optimum preset) + mean pooling",
}


def _kind(name: str) -> str:
    if name.startswith("edgekit "):
        return "edgekit"
    if name.startswith("diagnostic"):
        return "diagnostic"
    if name in ("torch-fp32", REFERENCE):
        return "reference"
    return "baseline"


def rows(model: str, result: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Table rows per batch size: latency, speedup, size, error, build time and peak memory of each path."""
    built = result["build"]
    plain = result["plain_export_bytes"]
    export = built["phases"].get("export", {})
    out: dict[str, list[dict[str, Any]]] = {}
    for batch, b in result["batches"].items():
        table = []
        names = list(b["error"])
        for name in names:
            err = b["error"].get(name, {})
            lat = b["latency"]["summary"].get(name, {})
            row: dict[str, Any] = {"path": name, "kind": _kind(name), "description": DESCRIPTIONS.get(name, "")}
            row.update({k: lat.get(k) for k in ("p50_ms", "p90_ms", "speedup", "speedup_range", "p50_ms_range")})
            row.update({k: err.get(k) for k in ("cosine_mean", "cosine_min", "mse", "accuracy", "top1_agreement")})
            row["error"] = err.get("error") or b["latency"]["errors"].get(name)
            if name == REFERENCE:
                row.update(bytes=plain, build_s=export.get("seconds"), peak_rss_mb=export.get("peak_rss_mb"),
                           build_note="torch export + simplify")
            elif name.startswith("edgekit "):
                t = built["targets"][name.split(" ", 1)[1]]
                row.update(bytes=t["bytes"], build_s=t["build_s"], peak_rss_mb=t["peak_rss_mb"], notes=t.get("notes"),
                           precision=t.get("precision"),
                           description=DESCRIPTIONS.get(name, f"edgekit target `{name.split(' ', 1)[1]}`"))
            elif name in result.get("baselines", {}):
                bl = result["baselines"][name]
                row.update(bytes=bl.get("bytes"), build_s=bl.get("build_s"), peak_rss_mb=bl.get("peak_rss_mb"))
            elif name.startswith("sentence-transformers") and result.get("st"):
                st = result["st"]
                row.update(bytes=st.get("bytes"), build_s=(st.get("export_s") or 0) + (st.get("quantize_s") or 0),
                           peak_rss_mb=st.get("peak_rss_mb"), build_note="Optimum export + quantization")
            elif name == "torch-fp32":
                row.update(bytes=result.get("weights_bytes"))
            row["bytes_ratio"] = row["bytes"] / plain if row.get("bytes") else None
            table.append(row)
        table.sort(key=lambda r: (KIND_ORDER[r["kind"]], r["path"] != "torch-fp32", r["path"]))
        out[batch] = table
    return out


# ------------------------------------------------------------------------------------------------ bars


def _row(result: dict[str, Any], batch: str, path: str) -> dict[str, Any] | None:
    return next((r for r in result.get("rows", {}).get(batch, []) if r["path"] == path), None)


def _ok(x: float | None, bound: float, higher: bool = True) -> bool:
    return x is not None and (x >= bound if higher else x <= bound)


def bars(model: str, result: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's bars, each with the measured figure and met / not met."""
    if "rows" not in result:
        return []
    checks: list[dict[str, Any]] = []

    def add(bar: str, figure: str, met: bool) -> None:
        checks.append({"bar": bar, "measured": figure, "met": met})

    if model == "minilm":
        st = _row(result, "1", "sentence-transformers avx512_vnni")
        cands = [r for r in result["rows"]["1"] if r["kind"] == "edgekit" and r.get("precision") == "int8" and r.get("speedup")]
        best = max((r for r in cands if (r.get("cosine_mean") or 0) >= 0.993), key=lambda r: r["speedup"], default=None)
        best = best or max(cands, key=lambda r: r["speedup"], default=None)
        if best is None:
            add("an edgekit INT8 target runs", "none ran", False)
            return checks
        add(f"batch 1: {best['path']} >= 1.70x faster than ORT FP32", _x(best), _ok(best["speedup"], 1.7))
        add(f"batch 1: {best['path']} mean cosine >= 0.993", f"{best['cosine_mean']:.4f}", _ok(best["cosine_mean"], 0.993))
        if st and st.get("p50_ms"):
            ratio = st["p50_ms"] / best["p50_ms"]
            add(f"batch 1: {best['path']} not slower than sentence-transformers avx512_vnni",
                f"{ratio:.2f}x (sentence-transformers p50 / edgekit p50)", ratio >= 1.0)
        else:
            add("batch 1: not slower than sentence-transformers avx512_vnni", "sentence-transformers path did not run", False)
    elif model in ("resnet18_like", "mobilenetv2_like"):
        r = _row(result, "1", "edgekit ort-int8")
        if r is None or r.get("speedup") is None:
            add("ort-int8 runs", "did not run", False)
            return checks
        add("ort-int8 >= 1.6x faster than ORT FP32" if model == "resnet18_like" else "ort-int8 >= 1.3x faster than ORT FP32",
            _x(r), _ok(r["speedup"], 1.6 if model == "resnet18_like" else 1.3))
        if model == "resnet18_like":
            d = _row(result, "1", "ort-quantize_static")
            if d and d.get("p50_ms"):
                ratio = d["p50_ms"] / r["p50_ms"]
                add("ort-int8 >= 1.5x faster than ORT default quantize_static", f"{ratio:.2f}x", ratio >= 1.5)
        need = 0.998 if model == "resnet18_like" else 0.97
        add(f"ort-int8 mean cosine vs torch FP32 >= {need}", f"{r['cosine_mean']:.4f}", _ok(r["cosine_mean"], need))
    elif model == "digits":
        ref = _row(result, "1", "torch-fp32")
        for r in result["rows"]["1"]:
            if r["kind"] == "edgekit" and r.get("precision") == "int8" and r.get("accuracy") is not None:
                drop = ref["accuracy"] - r["accuracy"]
                add(f"{r['path']} accuracy within 0.5 point of FP32 ({ref['accuracy']:.2f} %)",
                    f"{r['accuracy']:.2f} % ({-drop:+.2f})", abs(drop) <= 0.5)
    return checks


def _x(r: dict[str, Any]) -> str:
    lo, hi = r.get("speedup_range") or (None, None)
    spread = f" (repeats {lo:.2f}-{hi:.2f})" if lo is not None else ""
    return f"{r['speedup']:.2f}x{spread}"


# ------------------------------------------------------------------------------------------- rendering


def _f(x: Any, fmt: str, dash: str = "—") -> str:
    return dash if x is None else format(x, fmt)


def _bytes(n: int | None) -> str:
    if not n:
        return "—"
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} KB"


def table(rows_: list[dict[str, Any]], labelled: bool) -> list[str]:
    head = ["path", "p50 ms", "p90 ms", "speedup vs ORT FP32 (repeat range)", "bytes", "ratio",
            "cosine vs torch (min)", "MSE vs torch"]
    if labelled:
        head.append("accuracy %")
    head += ["build s", "build peak RSS MB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows_:
        if r.get("error") and r.get("p50_ms") is None:
            lines.append(f"| {r['path']} | error: {str(r['error'])[:120]} |" + " |" * (len(head) - 2))
            continue
        sp = r.get("speedup")
        rng = r.get("speedup_range")
        speed = "—" if sp is None else f"{sp:.2f}x" + (f" ({rng[0]:.2f}-{rng[1]:.2f})" if rng else "")
        cos = "—" if r.get("cosine_mean") is None else f"{r['cosine_mean']:.5f} ({r['cosine_min']:.4f})"
        cells = [f"**{r['path']}**" if r["kind"] == "edgekit" else r["path"], _f(r.get("p50_ms"), ".2f"), _f(r.get("p90_ms"), ".2f"),
                 speed, _bytes(r.get("bytes")), _f(r.get("bytes_ratio"), ".3f"), cos, _f(r.get("mse"), ".2e")]
        if labelled:
            cells.append(_f(r.get("accuracy"), ".2f"))
        cells += [_f(r.get("build_s"), ".1f"), _f(r.get("peak_rss_mb"), ".0f")]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _spin_note(doc: dict[str, Any]) -> str:
    sc = (doc["models"].get("mobilenetv2_like") or {}).get("spin_check")
    if not sc:
        return ""
    parts = []
    for mode in ("on", "off"):
        d = sc[mode]
        parts.append(f"spinning {mode}: " + "; ".join(
            f"{k} {d['alone'][k]:.1f} ms alone, {d['interleaved'][k]:.1f} ms interleaved" for k in d["alone"]))
    return " (measured in this run on the MobileNetV2-shaped model, p50: " + " | ".join(parts) + ")"


def history_entry(doc: dict[str, Any], json_path: Path | str) -> dict[str, Any]:
    """One run's bars, small enough to keep every run: BENCHMARKS.md shows how they move from run to run."""
    meta = doc["meta"]
    return {"date": meta["date"], "commit": meta.get("commit"), "cpu": meta["cpu"]["model"], "isa": meta["cpu"]["isa"],
            "results": str(json_path), "bars": {m: bars(m, r) for m, r in doc["models"].items()}}


def append_history(path: Path, doc: dict[str, Any], json_path: Path | str) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(history_entry(doc, json_path)) + "\n")


def load_history(path: Path = HISTORY) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def history_section(history: list[dict[str, Any]], cpu_model: str) -> list[str]:
    """Every recorded full run on this CPU model: date, commit and each bar's measured figure (not met in bold).
    The host is a shared VM; a ratio that sits near its bar can land on either side of it from one run to the next."""
    runs = [h for h in history if h.get("cpu") == cpu_model]
    if len(runs) < 2:
        return []
    keys = _bar_keys(runs)
    lines = ["## The bars in every recorded run on this host", "",
             f"`make bench` appends each full run's bars to `benchmarks/results/history.jsonl`; these are the {len(runs)} "
             f"runs recorded on this CPU model ({cpu_model}). The raw JSON of a run is the results file named in its line "
             "(a later run on the same day overwrites it; git keeps the committed one). Ratios move between runs with the "
             "shared host's state, which the interleaving cancels within a run but not across runs.", "",
             "| run | commit | " + " | ".join(f"{m}: {c['bar']}" for m, c in keys) + " |",
             "|---|---|" + "---|" * len(keys)]
    for h in runs:
        cells = []
        for model, key in keys:
            c = next((c for c in h["bars"].get(model, []) if c["bar"] == key["bar"]), None)
            figure = "—" if c is None else re.sub(r" \((?!repeats)[^)]*\)", "", c["measured"])  # drop explanations
            cells.append(figure if c is None or c["met"] else f"**{figure}**")
        lines.append(f"| {h['date']} | {h.get('commit') or '?'} | " + " | ".join(cells) + " |")
    return lines + ["", "Bold: bar not met in that run.", ""]


def _bar_keys(runs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """The speed bars (those stated as "faster"/"slower"), in the order the latest run lists them."""
    latest = runs[-1]["bars"]
    return [(m, c) for m, cs in latest.items() for c in cs if "faster" in c["bar"] or "slower" in c["bar"]]


CALIBRATION_RUNS = (  # benchmarks/calib_memory.py's result files, and the bar of issue 16 each is held to
    ("calib_memory_minilm.json", "MiniLM static ort-int8 from a text file + its tokenizer", 1.2, 2048.0),
    ("calib_memory.json", "ResNet-18-shaped CNN ort-int8 from a folder of JPEGs, minmax", 1.1, None),
    ("calib_memory_entropy.json", "ResNet-18-shaped CNN ort-int8 from a folder of JPEGs, entropy", 1.1, None),
)


def calibration_section(folder: Path = Path(__file__).resolve().parent / "results") -> list[str]:
    """Peak memory of calibrated builds (benchmarks/calib_memory.py, run on its own, not by `make bench`)."""
    found = [(name, what, ratio_bar, peak_bar, json.loads((folder / name).read_text()))
             for name, what, ratio_bar, peak_bar in CALIBRATION_RUNS if (folder / name).is_file()]
    if not found:
        return []
    out = ["## Calibration memory (issue 16)", "",
           "Peak resident memory of a whole `edgekit build` (no validation, no calibration statistics cache; each build "
           "in a child process, ru_maxrss) as the number of calibration samples grows tenfold. Run by "
           "`benchmarks/calib_memory.py`, not by `make bench`; raw numbers in `benchmarks/results/<file>`.", "",
           "| build | samples | peak RSS MB | ort-int8 step s | ratio last/first | bar | file, command, host |",
           "|---|---|---|---|---|---|---|"]
    for name, what, ratio_bar, peak_bar, doc in found:
        runs, ratio = doc["runs"], doc["peak_ratio_last_vs_first"]
        peak = max(r["build_peak_rss_mb"] for r in runs)
        met = ratio <= ratio_bar and (peak_bar is None or peak <= peak_bar)
        bar = f"ratio <= {ratio_bar}" + (f", peak <= {peak_bar / 1024:.1f} GB" if peak_bar else "") + (": met" if met else ": **not met**")
        host = doc["host"]
        where = (f"`{name}`, `{doc['command']}`, {host['model']} [{' '.join(host.get('isa', []))}], "
                 f"load {', '.join(f'{x:.1f}' for x in host.get('load_average_at_end', []))} at end")
        counts = " / ".join(str(r.get("samples", r.get("images"))) for r in runs)
        peaks = " / ".join(f"{r['build_peak_rss_mb']:.0f}" for r in runs)
        seconds = " / ".join(f"{r['ort_int8_build_s']:.0f}" for r in runs)
        out.append(f"| {what} | {counts} | {peaks} | {seconds} | {ratio:.3f} | {bar} | {where} |")
    out += ["", "The ort-int8 step time includes ONNX Runtime's pre-processing, edgekit's statistics pass over every "
            "sample and the quantizer (the calibration wall time); on this shared host it moves with the load, memory "
            "does not. Before the statistics pass ran a batch whose tensors exceed 256 MiB in slices of samples "
            "(edgekit/backends/onnx/graph.py TensorReader), MiniLM peaked at 4105 / 4108 MB with 200 / 2000 sentences "
            "on this host (AMD EPYC, 2026-12-06): flat in the sample count, but every intermediate tensor of a whole "
            "32 x 128-token batch was an output of one run.", ""]
    return out


def anchors_section() -> list[str]:
    """benchmarks/anchors.py's section (`make bench-anchors`), when it has been run."""
    path = Path(__file__).resolve().parent / "results" / "anchors.json"
    if not path.is_file():
        return []
    from anchors import markdown

    return markdown(json.loads(path.read_text())) + [""]


def render(doc: dict[str, Any], json_path: Path | str) -> str:
    from analysis import ANALYSIS, METHOD, ST_NOTE  # the prose that goes with the numbers

    meta = doc["meta"]
    cpu = meta["cpu"]
    lines = [
        "# edgekit benchmarks",
        "",
        "<!-- Generated by `make bench` (benchmarks/run.py from benchmarks/report.py + benchmarks/analysis.py); do not edit by hand. -->",
        "",
        f"Every figure below comes from one run of `{meta['command']}` (`make bench` runs `benchmarks/run.py`) "
        f"on {meta['date']}" + (f" from commit {meta['commit']}" if meta.get("commit") else "") + f"; raw numbers in `{json_path}`." + (" **Quick smoke run: not for publishing.**" if meta.get("quick") else ""),
        "",
        f"- Host: {cpu['model']} ({cpu['machine']}, {cpu['cores']} logical cores); ISA flags relevant to INT8: "
        f"{', '.join(cpu['isa']) or 'none'}; AVX2: {'yes' if 'avx2' in cpu['isa'] else 'no'}, "
        f"AVX512-VNNI: {'yes' if 'avx512_vnni' in cpu['isa'] else 'no'}, AVX-VNNI: {'yes' if 'avx_vnni' in cpu['isa'] else 'no'}, "
        f"AMX-INT8: {'yes' if 'amx_int8' in cpu['isa'] else 'no'}.",
        f"- Threads: {meta['threads']} intra-op threads for every path (ONNX Runtime sessions and torch), stated here and fixed. "
        "Idle worker threads sleep instead of spin-waiting (ONNX Runtime `session.intra_op.allow_spinning = 0`, "
        "torch `OMP_WAIT_POLICY=PASSIVE`) for every path alike: with paths taking turns in one process, spinning "
        "workers of the previous path steal the cores of the next" + _spin_note(doc) + ".",
        f"- Timing: {meta['warmup']} warm-up calls per path, then {meta['rounds']} rounds; in each round every path makes one "
        f"untimed call then {meta['per_round']} timed calls, path order rotating each round (all paths of a model interleaved "
        f"in one process): {meta['timed_calls_per_repeat']} timed calls per path per repeat; the whole timing block is "
        f"repeated {meta['repeats']} times. Tables show the median over repeats of each repeat's p50 / p90, and the speedup "
        "as median (min-max over repeats) of p50(ORT FP32, plain export) / p50(path) measured in the same repeat.",
        f"- Before each timing repeat the script waits (up to {meta.get('max_wait_s', 0):.0f} s) for other processes to "
        "use under 0.5 CPU; it times anyway when the wait runs out.\n"
        f"- Host load: load average {', '.join(f'{x:.2f}' for x in meta['loadavg_start'])} at start, "
        f"{', '.join(f'{x:.2f}' for x in meta['loadavg_end'])} at end; the CPUs busy with other processes during each "
        "model's timing are listed under its table (this host is shared: absolute milliseconds move with that load, "
        "the interleaved ratios much less).",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items() if v) + f"; Python {meta['python']}.",
        f"- Whole run: {meta['seconds'] / 60:.1f} minutes.",
        "",
        *METHOD,
        "",
    ]
    summary = ["## Bars from issue 5", "", "| model | bar | measured | verdict |", "|---|---|---|---|"]
    body: list[str] = []
    for model, result in doc["models"].items():
        body += [f"## {result['title']}", ""]
        if "failed" in result:
            body += [f"The run of this model failed: `{result['failed']}`", ""]
            summary.append(f"| {model} | (run failed) | {result['failed'][:80]} | not met |")
            continue
        body += [f"Model: {result['about']}.", ""]
        for batch, rws in result["rows"].items():
            lat = result["batches"][batch]["latency"]
            if len(result["rows"]) > 1:
                body += [f"### batch {batch}", ""]
            body += table(rws, any(r.get("accuracy") is not None for r in rws))
            load = ", ".join(_f(x, ".2f") for x in lat["other_cpu_load"])
            body += ["", f"Batch {batch}; error over {next(iter(result['batches'][batch]['error'].values())).get('samples', '?')} "
                     f"held-out samples; other processes kept {load} CPUs busy during the {len(lat['other_cpu_load'])} timing repeat(s).", ""]
        if result.get("skipped"):
            body += ["Not run on this host / not timed:", ""]
            body += [f"- `{k}`: {v}" for k, v in result["skipped"].items()]
            body.append("")
        checks = bars(model, result)
        for c in checks:
            summary.append(f"| {model} | {c['bar']} | {c['measured']} | {'met' if c['met'] else '**not met**'} |")
        body += ANALYSIS.get(model, lambda r, c: [])(result, checks)
        body.append("")
    runs = history_section(load_history(), cpu["model"])
    from debug_bench import debug_section  # benchmarks/debug_bench.py's result, when it has been run
    from int4_report import int4_section  # benchmarks/int4_bench.py's result, when it has been run
    from recover_report import backends_section, recover_section  # recover_bench.py's, recover_backends_bench.py's results

    lines += (summary + [""] + runs + body + int4_section() + recover_section() + backends_section() + anchors_section() + calibration_section()
              + debug_section() + ST_NOTE(doc))
    return "\n".join(lines) + "\n"


def console_summary(doc: dict[str, Any]) -> str:
    out = []
    for model, result in doc["models"].items():
        for c in bars(model, result):
            out.append(f"{model:18s} {'MET    ' if c['met'] else 'NOT MET'} {c['bar']}: {c['measured']}")
    return "\n".join(out)
