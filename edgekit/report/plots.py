"""report.html's build-wide plots: every target as accuracy (or cosine) against latency, and each target's
distribution of per-sample error. Each returns an inline ``<svg>``, or "" when there is nothing to draw."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from edgekit.report.figure import finite, log_ticks, new_figure, place_labels, short, status_color, style, to_svg
from edgekit.report.markdown import primary_comparison


@dataclass(frozen=True)
class Point:
    """One marker of the targets plot."""

    label: str
    p50_ms: float
    y: float
    status: str
    kind: str  # "target", "host" (measured on the build host, not the target device), "device", "reference"


_MARKERS = {"target": ("o", True), "host": ("o", False), "device": ("D", True), "reference": ("s", True)}
_KIND_NAMES = {"target": "measured on a device of the target's kind", "host": "host proxy / build host, not the target device",
               "device": "measured on the device (device report)", "reference": "FP32 reference"}


def accuracy_axis(manifest: dict[str, Any]) -> bool:
    """True when the targets are compared by accuracy (labels exist and accuracies were measured), else by cosine."""
    return bool(manifest.get("validation", {}).get("labelled")) and any(
        finite(t.get("metrics", {}).get("accuracy")) for t in manifest.get("targets", {}).values())


def _y(record: dict[str, Any], by_accuracy: bool) -> Any:
    metrics = record.get("metrics", record)  # targets hold metrics under "metrics"; references inline
    if by_accuracy:
        return metrics.get("accuracy")
    return primary_comparison(metrics).get("worst", {}).get("cosine")


def target_points(manifest: dict[str, Any], by_accuracy: bool) -> list[Point]:
    """References, targets and device measurements that have both a p50 and an accuracy (or cosine)."""
    points = []
    for name, ref in manifest.get("references", {}).items():
        p50, y = ref.get("latency", {}).get("p50_ms"), _y(ref, by_accuracy)
        if name == "torch-fp32" and not by_accuracy and y is None:
            y = 1.0  # the torch model against itself
        if finite(p50) and finite(y):
            points.append(Point(name, p50, y, "reference", "reference"))
    for name, t in manifest.get("targets", {}).items():
        y = _y(t, by_accuracy)
        p50 = t.get("latency", {}).get("p50_ms")
        if not finite(y):
            continue
        if finite(p50):
            kind = "host" if "not the target" in (t.get("measured_on") or "") else "target"
            points.append(Point(name, p50, y, t.get("status", "?"), kind))
        for report in manifest.get("devices", {}).get(name, []):
            lat = report.get("latency", {})
            if finite(lat.get("p50_ms")) and lat.get("meaningful", True):
                points.append(Point(f"{name} @ {report.get('label', 'device')}", lat["p50_ms"], y, t.get("status", "?"), "device"))
    return points


def targets_plot(manifest: dict[str, Any]) -> str:
    """Accuracy % (or worst cosine) against p50 latency on a log axis: one marker per target and reference."""
    by_accuracy = accuracy_axis(manifest)
    points = target_points(manifest, by_accuracy)
    if not points:
        return ""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import ScalarFormatter

    what = "accuracy" if by_accuracy else "cosine"
    title = f"Targets: {what} against p50 latency"
    with style():
        fig = new_figure(9.5, 4.8)
        ax = fig.add_subplot()
        for p in points:
            marker, filled = _MARKERS[p.kind]
            color = status_color(p.status)
            ax.scatter([p.p50_ms], [p.y], s=56, marker=marker, facecolors=color if filled else "white", edgecolors=color,
                       linewidths=1.6, zorder=3)
        ax.set_xscale("log")
        _pad_log_x(ax, [p.p50_ms for p in points])
        _pad_y(ax, [p.y for p in points], 1.0 if by_accuracy else 1e-4)
        log_ticks(ax.xaxis, *ax.get_xlim())
        ax.yaxis.set_major_formatter(ScalarFormatter(useOffset=False))
        ax.set_xlabel("p50 latency, ms (log scale; left is faster)")
        ax.set_ylabel("accuracy %, against the labels" if by_accuracy else "worst cosine vs FP32 (higher is better)")
        ax.set_title(title, loc="left", fontweight="bold")
        statuses = list(dict.fromkeys(p.status for p in points if p.kind != "reference"))
        kinds = list(dict.fromkeys(p.kind for p in points))
        handles = [Line2D([], [], linestyle="", marker="o", color=status_color(s), label=s) for s in statuses]
        handles += [Line2D([], [], linestyle="", marker=_MARKERS[k][0], markerfacecolor="#616161" if _MARKERS[k][1] else "white",
                           markeredgecolor="#616161", label=_KIND_NAMES[k]) for k in kinds]
        fig.legend(handles=handles, loc="outside right upper", frameon=False)
        place_labels(ax, [(short(p.label, 34), p.p50_ms, p.y) for p in points])
        return to_svg(fig, "targets", title)


def _pad_y(ax: Any, values: list[float], least: float) -> None:
    """Room above and below the markers for their labels; the axis spans at least ``least`` (1 point of accuracy,
    1e-4 of cosine), so equal values are not spread over a scale of rounding noise."""
    low, high = min(values), max(values)
    pad = max(0.25 * (high - low), (least - (high - low)) / 2)
    ax.set_ylim(low - pad, high + pad)


def _pad_log_x(ax: Any, values: list[float]) -> None:
    """Room on both sides of the markers (and their labels) on a log axis."""
    low, high = min(values), max(values)
    span = max(math.log10(high / low), 0.3)
    ax.set_xlim(low / 10 ** (0.12 * span), high * 10 ** (0.35 * span))


# ------------------------------------------------------------------------------------------- histograms


def _worst_output(outputs: dict[str, list[int]]) -> str:
    """The output whose samples sit furthest right (most error) on average, by bin index."""
    def mean_bin(counts: list[int]) -> float:
        total = sum(counts)
        return sum(i * c for i, c in enumerate(counts)) / total if total else -1.0

    return max(outputs, key=lambda name: mean_bin(outputs[name]))


def histograms_plot(manifest: dict[str, Any], histograms: dict[str, dict[str, Any]]) -> str:
    """One row per target: how many samples fall in each ``1 - cosine`` bin (log axis), with the min_cosine bound."""
    rows = [(name, h) for name, h in histograms.items()
            if name in manifest.get("targets", {}) and any(map(sum, h["outputs"].values()))]
    if not rows:
        return ""
    title = "Per-sample error: 1 - cosine of each validation sample"
    with style():
        fig = new_figure(9.5, 0.7 + 1.3 * len(rows))
        axes = fig.subplots(len(rows), 1, sharex=True, squeeze=False)[:, 0]
        for ax, (name, h) in zip(axes, rows):
            edges = list(h["edges"])
            edges[0] = edges[1] / 10 ** 0.5  # the first bin (down to exact matches) drawn as one more half-decade
            output = _worst_output(h["outputs"])
            counts = h["outputs"][output]
            status = manifest["targets"][name].get("status", "?")
            ax.bar(edges[:-1], counts, width=[b - a for a, b in zip(edges[:-1], edges[1:])], align="edge",
                   color=status_color(status), alpha=0.85, edgecolor="white", linewidth=0.5)
            ax.set_xscale("log")
            ax.set_xlim(edges[0], edges[-1])
            log_ticks(ax.xaxis, edges[0], edges[-1])
            ax.tick_params(axis="x", labelbottom=ax is axes[-1])
            bound = manifest.get("profiles", {}).get(name, {}).get("gates", {}).get("min_cosine")
            if finite(bound) and 0 < 1 - bound < edges[-1]:
                ax.axvline(max(1 - bound, edges[0]), color="#424242", linestyle="--", linewidth=1)
                ax.annotate(f"min_cosine {bound:g} (gate on the mean)", (max(1 - bound, edges[0]), 1),
                            xycoords=("data", "axes fraction"),
                            xytext=(4, -10), textcoords="offset points", fontsize=7, color="#424242")
            which = f", output {output}" if len(h["outputs"]) > 1 else ""
            ax.set_title(f"{name} — {status}{which}: {sum(counts)} samples vs {h.get('against', '?')}", loc="left", fontsize=9)
            ax.set_ylabel("samples")
            ax.grid(axis="x", visible=False)
        axes[-1].set_xlabel("1 - cosine per sample (log scale; left is closer to FP32; the first bar includes exact matches)")
        fig.suptitle(title, x=0.01, ha="left", fontweight="bold", fontsize=10)
        return to_svg(fig, "histograms", title)
