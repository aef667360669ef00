"""report.html's per-target INT8 analysis plots: per-layer sensitivity (DIR/<target>/debug.json, from
``edgekit debug``) and the recovery attempts of a build (manifest ``targets.<name>.recovery``) as a Pareto plot.
Each returns an inline ``<svg>``, or "" when there is nothing to draw."""

from __future__ import annotations

from typing import Any

from edgekit.report.figure import finite, log_ticks, new_figure, short, status_color, style, to_svg

TOP_LAYERS = 15
_LOCAL, _ACCUMULATED = "#1e88e5", "#fb8c00"


def layer_label(layer: dict[str, Any]) -> str:
    """"torch module (onnx node)", or the ONNX node alone when no torch module maps to it."""
    node = str(layer.get("onnx_node") or "?")
    module = layer.get("torch_module")
    return f"{module} ({node})" if module else node


def sensitivity_plot(target: str, debug: dict[str, Any], top: int = TOP_LAYERS) -> str:
    """The ``top`` layers debug.json ranks first: local and accumulated SQNR (dB) side by side, rank 1 on top."""
    layers = [layer for layer in debug.get("layers", []) if isinstance(layer, dict)
              and (finite(layer.get("local_sqnr_db")) or finite(layer.get("accumulated_sqnr_db")))][:top]
    if not layers:
        return ""
    title = f"{target}: per-layer sensitivity (top {len(layers)} of {len(debug.get('layers', []))} quantized layers)"
    e2e = debug.get("end_to_end") or {}
    with style():
        fig = new_figure(8.5, 1.4 + 0.32 * len(layers))
        ax = fig.add_subplot()
        ys = list(range(len(layers)))[::-1]  # the first-ranked layer on top
        h = 0.38
        local = [layer.get("local_sqnr_db") for layer in layers]
        acc = [layer.get("accumulated_sqnr_db") for layer in layers]
        ax.barh([y + h / 2 for y, v in zip(ys, local) if finite(v)], [v for v in local if finite(v)], height=h,
                color=_LOCAL, label="local: the layer alone on FP32 inputs")
        ax.barh([y - h / 2 for y, v in zip(ys, acc) if finite(v)], [v for v in acc if finite(v)], height=h,
                color=_ACCUMULATED, label="accumulated: its output inside the quantized graph")
        ax.set_yticks(ys, [short(layer_label(layer), 52) for layer in layers])
        ax.set_xlabel("SQNR against FP32, dB (shorter bar = more error)")
        ax.grid(axis="y", visible=False)
        cosine = e2e.get("cosine")
        note = f"end to end: cosine {cosine:.4f}" if finite(cosine) else ""
        ax.set_title(title + (f"\nranked by error recovered per ms; {note}" if note else "\nranked by error recovered per ms"),
                     loc="left", fontweight="bold")
        fig.legend(loc="outside lower center", ncols=2, frameon=False)
        return to_svg(fig, f"sensitivity-{target}", title)


# --------------------------------------------------------------------------------------------- recovery


def recovery_axis(attempts: list[dict[str, Any]]) -> str:
    """"accuracy" when every timed attempt has one, else "cosine"."""
    timed = [a for a in attempts if finite(a.get("p50_ms"))]
    return "accuracy" if timed and all(finite(a.get("accuracy")) for a in timed) else "cosine"


def written_attempt(recovery: dict[str, Any], attempts: list[dict[str, Any]]) -> int | None:
    """The index of the attempt whose artifact was written: ``chosen``, or the original's when it is null."""
    chosen = recovery.get("chosen")
    if isinstance(chosen, int) and not isinstance(chosen, bool) and 0 <= chosen < len(attempts):
        return chosen
    return next((i for i, a in enumerate(attempts) if a.get("step") == "original"), None)


def _pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both latency (lower) and quality (higher), by latency."""
    front: list[tuple[float, float]] = []
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or y > front[-1][1]:
            front.append((x, y))
    return front


def _bounds(manifest: dict[str, Any], target: str, axis: str) -> tuple[float | None, float | None]:
    """The gate bounds to draw: the quality bound (y) and the latency bound (x, from max_p50_ms or min_speedup)."""
    t = manifest.get("targets", {}).get(target, {})
    gates = manifest.get("profiles", {}).get(target, {}).get("gates", {})
    y_bound = None
    if axis == "cosine" and finite(gates.get("min_cosine")):
        y_bound = gates["min_cosine"]
    elif axis == "accuracy" and finite(gates.get("max_top1_drop")):
        refs = manifest.get("references", {})
        accuracies = (refs.get(name, {}).get("accuracy") for name in ("torch-fp32", "onnx-fp32"))
        ref = next((a for a in accuracies if finite(a)), None)
        y_bound = ref - gates["max_top1_drop"] if ref is not None else None
    x_bound = gates.get("max_p50_ms") if finite(gates.get("max_p50_ms")) else None
    lat = t.get("latency", {})
    speedup = gates.get("min_speedup")
    if finite(speedup) and speedup > 0 and finite(lat.get("p50_ms")) and finite(lat.get("speedup_vs_ort_fp32")):
        baseline = lat["p50_ms"] * lat["speedup_vs_ort_fp32"]  # ort-fp32's p50 in the same run
        slowest = baseline / speedup
        x_bound = min(x_bound, slowest) if x_bound is not None else slowest
    return y_bound, x_bound


def recovery_plot(manifest: dict[str, Any], target: str) -> str:
    """Every recovery attempt of ``target`` at (p50, accuracy or cosine): numbered as in the attempts table, the
    written one starred, the Pareto front dashed, the gate bounds drawn."""
    recovery = manifest.get("targets", {}).get(target, {}).get("recovery")
    recovery = recovery if isinstance(recovery, dict) else {}
    attempts = [a for a in recovery.get("attempts", []) if isinstance(a, dict)]
    axis = recovery_axis(attempts)
    numbered = [(i, a) for i, a in enumerate(attempts) if finite(a.get("p50_ms")) and finite(a.get(axis))]
    if not numbered:
        return ""
    chosen = written_attempt(recovery, attempts)
    title = f"{target}: recovery attempts, {axis} against p50 latency"
    y_bound, x_bound = _bounds(manifest, target, axis)
    from matplotlib.lines import Line2D

    with style():
        fig = new_figure(9.5, 4.4)
        ax = fig.add_subplot()
        front = _pareto([(a["p50_ms"], a[axis]) for _, a in numbered])
        ax.plot([x for x, _ in front], [y for _, y in front], linestyle="--", color="#9e9e9e", linewidth=1, zorder=1)
        for i, a in numbered:
            color = status_color("passed" if a.get("gates_passed") else "failed")
            if i == chosen:
                ax.scatter([a["p50_ms"]], [a[axis]], s=260, marker="*", color=color, edgecolors="#212121", linewidths=1.2, zorder=4)
            else:
                ax.scatter([a["p50_ms"]], [a[axis]], s=40, marker="o", color=color, alpha=0.85, zorder=3)
            ax.annotate(f"{i}" + (" original" if a.get("step") == "original" else ""), (a["p50_ms"], a[axis]),
                        xytext=(6, 4), textcoords="offset points", fontsize=8)
        if y_bound is not None:
            ax.axhline(y_bound, color="#c62828", linestyle=":", linewidth=1.2)
        if x_bound is not None:
            ax.axvline(x_bound, color="#c62828", linestyle="-.", linewidth=1.0)
        ax.set_xscale("log")
        xs = [a["p50_ms"] for _, a in numbered] + ([x_bound] if x_bound is not None else [])
        ax.set_xlim(min(xs) / 1.15, max(xs) * 1.15)
        from matplotlib.ticker import ScalarFormatter

        log_ticks(ax.xaxis, *ax.get_xlim())
        ax.yaxis.set_major_formatter(ScalarFormatter(useOffset=False))
        ax.set_xlabel("p50 latency, ms (log scale; left is faster)")
        ax.set_ylabel("accuracy %" if axis == "accuracy" else "cosine vs FP32")
        ax.set_title(title, loc="left", fontweight="bold")
        handles = [Line2D([], [], linestyle="", marker="*", markersize=12, color="#616161", markeredgecolor="#212121",
                          label="written artifact" if recovery.get("chosen") is not None else "written artifact (the original)"),
                   Line2D([], [], linestyle="", marker="o", color=status_color("passed"), label="meets every gate"),
                   Line2D([], [], linestyle="", marker="o", color=status_color("failed"), label="misses a gate"),
                   Line2D([], [], linestyle="--", color="#9e9e9e", label="Pareto front")]
        if y_bound is not None:
            label = "min_cosine gate" if axis == "cosine" else "reference accuracy - max_top1_drop"
            handles.append(Line2D([], [], linestyle=":", color="#c62828", label=label))
        if x_bound is not None:
            handles.append(Line2D([], [], linestyle="-.", color="#c62828", label="slowest the gates allow"))
        fig.legend(handles=handles, loc="outside right upper", frameon=False)
        return to_svg(fig, f"recovery-{target}", title)
