"""report.html: one self-contained page (no network: styles inline, plots as inline SVG drawn by matplotlib) with
the verdicts at a glance, the plots, and everything report.md says.

    intro + target table (report.md) -> verdicts -> plots: targets, per-sample error, per-layer sensitivity,
    recovery attempts -> the rest of report.md (each target's details, compression)
A plot with nothing to draw is left out, never drawn blank.
"""

from __future__ import annotations

import logging
from html import escape
from typing import Any, Callable

from edgekit.faults import raise_if_signalled
from edgekit.report.analysis import recovery_axis, recovery_plot, sensitivity_plot, written_attempt
from edgekit.report.data import ReportData
from edgekit.report.figure import STATUS_COLORS, finite
from edgekit.report.markdown import render_markdown
from edgekit.report.mdhtml import markdown_to_html
from edgekit.report.plots import accuracy_axis, histograms_plot, targets_plot

log = logging.getLogger(__name__)

# No request leaves the page: nothing may be loaded from anywhere, styles are inline, images are inline SVG.
_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:2em auto;max-width:1150px;
padding:0 1.5em;color:#212121;line-height:1.45}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
code{background:#f3f3f3;padding:0 3px;border-radius:3px;font-size:90%}
.table{overflow-x:auto}table{border-collapse:collapse;margin:.6em 0;font-size:14px}
td,th{border:1px solid #d0d0d0;padding:3px 8px;text-align:right;vertical-align:top}
td:first-child,th:first-child{text-align:left}th{background:#f5f5f5}
table.verdicts td,table.verdicts th{text-align:left}table.verdicts td:nth-child(2){width:16em}
table.verdicts ul{margin:0;padding-left:1.2em}
figure{margin:1.2em 0 2em}svg.plot{display:block;max-width:100%;height:auto}
figcaption{font-size:13px;color:#555;max-width:900px}
figcaption ol{margin:.3em 0;padding-left:2.2em}
p.plot-error{color:#b71c1c}li.fail{color:#b71c1c;font-weight:600}li.pass{color:#1b5e20}li.unchecked{color:#616161}
.status{font-weight:600;padding:0 6px;border-radius:3px;color:#fff;white-space:nowrap}
.small{font-size:12px;color:#555}
"""


def _status(status: str) -> str:
    color = STATUS_COLORS.get(status, "#424242")
    return f'<span class="status" style="background:{color}">{escape(status)}</span>'


def _gate_line(g: dict[str, Any]) -> str:
    mark = {True: "pass", False: "FAIL", None: "not checked"}.get(g.get("passed"), "?")
    cls = {True: "pass", False: "fail"}.get(g.get("passed"), "unchecked")
    extra = []
    if g.get("resolution"):
        extra.append(f"resolution: {g['resolution']}")
    interval = g.get("interval")
    if isinstance(interval, list) and len(interval) == 2 and all(finite(v) for v in interval):
        extra.append(f"interval [{interval[0]:.3g}, {interval[1]:.3g}]")
    tail = f' <span class="small">({escape("; ".join(extra))})</span>' if extra else ""
    return f'<li class="{cls}">{mark}: {escape(str(g.get("message", "")))}{tail}</li>'


def verdicts(manifest: dict[str, Any]) -> str:
    """One row per target: its status, why, and every gate verdict (with its resolution and interval when known)."""
    rows = []
    for name, t in manifest.get("targets", {}).items():
        gates = t.get("gates") or []
        cell = "<ul>" + "".join(_gate_line(g) for g in gates) + "</ul>" if gates else '<span class="small">no gates measured</span>'
        reason = f'<div class="small">{escape(t["reason"])}</div>' if t.get("reason") else ""
        rows.append(f"<tr><td><strong>{escape(name)}</strong></td><td>{_status(t.get('status', '?'))}{reason}</td><td>{cell}</td></tr>")
    if not rows:
        return ""
    return ('<h2>Verdicts</h2>\n<div class="table"><table class="verdicts"><thead><tr><th>target</th><th>status</th>'
            "<th>gates</th></tr></thead><tbody>\n" + "\n".join(rows) + "\n</tbody></table></div>")


def _figure(draw: Callable[[], str], caption: str) -> str:
    """``draw()``'s plot with its caption; "" when it has nothing to draw. A plot that fails says so in its place
    (and in the log) rather than cost the page: everything else the report says still stands."""
    try:
        svg = draw()
    except Exception as exc:  # noqa: BLE001 - a plotting fault must not lose a finished build's report
        raise_if_signalled()  # Ctrl-C inside the plotting library, re-raised by it as another error: stop, quietly
        log.warning("report.html: a plot could not be drawn", exc_info=True)
        return f'<p class="plot-error">This plot could not be drawn ({escape(type(exc).__name__)}: {escape(str(exc)[:200])}).</p>'
    return f"<figure>\n{svg}<figcaption>{caption}</figcaption>\n</figure>" if svg else ""


def _attempt_list(manifest: dict[str, Any], target: str) -> str:
    """The recovery attempts by their number in the plot: what changed, and what it gave."""
    recovery = manifest["targets"][target].get("recovery")
    recovery = recovery if isinstance(recovery, dict) else {}
    attempts = [a for a in recovery.get("attempts", []) if isinstance(a, dict)]
    axis, written = recovery_axis(attempts), written_attempt(recovery, attempts)
    items = []
    for i, a in enumerate(attempts):
        value = a.get(axis)
        numbers = [f"{axis} {value:.6g}" if finite(value) else f"{axis} —",
                   f"p50 {a['p50_ms']:.3f} ms" if finite(a.get("p50_ms")) else "p50 —"]
        if finite(a.get("speedup")):
            numbers.append(f"{a['speedup']:.2f}x")
        if finite(a.get("seconds")):
            numbers.append(f"{a['seconds']:.1f} s")
        mark = " <strong>(written)</strong>" if i == written else ""
        change = f"{a.get('step', '?')}: {a.get('change', '')}".rstrip(": ")
        items.append(f"<li>{escape(change)} — {escape(', '.join(numbers))}"
                     f"{'' if a.get('gates_passed') else ', misses a gate'}{mark}</li>")
    spent = recovery.get("seconds")
    budget = recovery.get("budget_s")
    head = (f"Recovery {'met every gate' if recovery.get('met') else 'did not meet every gate'}"
            + (f" in {spent:.1f} s" if finite(spent) else "") + (f" of a {budget:.0f} s budget" if finite(budget) else "") + ".")
    return f'{escape(head)}<ol start="0">{"".join(items)}</ol>'


def plots(manifest: dict[str, Any], data: ReportData) -> str:
    """The plots section: every plot that has something to draw, each with its caption."""
    what = "accuracy against the labels" if accuracy_axis(manifest) else "worst cosine against FP32"
    figures = [
        _figure(lambda: targets_plot(manifest),
                f"Each target's {what} against its p50 latency (log scale). Colour: status; hollow marker: measured on "
                "the build host or a host proxy, not the target device; diamond: a device report's latency; squares: "
                "the FP32 references."),
        _figure(lambda: histograms_plot(manifest, data.histograms),
                "How the error spreads over the validation samples: the count of samples in each half-decade of "
                "1 - cosine (per sample, against the FP32 model). A long right tail means a few samples are far off "
                "even when the mean cosine passes."),
    ]
    for name in manifest.get("targets", {}):
        if name in data.debug:
            figures.append(_figure(lambda name=name: sensitivity_plot(name, data.debug[name]),
                                   f"From <code>{escape(name)}/debug.json</code> (<code>edgekit debug</code>): the layers ranked "
                                   "first, each as <em>torch module (ONNX node)</em>. Local SQNR: the layer's own quantization "
                                   "error; accumulated: its output inside the quantized graph."))
        if manifest["targets"][name].get("recovery"):
            figures.append(_figure(lambda name=name: recovery_plot(manifest, name), _attempt_list(manifest, name)))
    figures = [f for f in figures if f]
    return "<h2>Plots</h2>\n" + "\n".join(figures) if figures else ""


def render_html(manifest: dict[str, Any], data: ReportData | None = None) -> str:
    """The page for ``manifest`` (plain JSON data, as in manifest.json); ``data``: what report.data reads beside it."""
    data = data or ReportData()
    md = render_markdown(manifest)
    split = md.find("\n## ")
    head, tail = (md, "") if split < 0 else (md[:split], md[split + 1:])
    source = manifest.get("config", {}).get("model", {}).get("source", "?")
    return "\n".join([
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>edgekit report — {escape(str(source))}</title>",
        f"<style>{_CSS}</style></head><body>",
        markdown_to_html(head),
        verdicts(manifest),
        plots(manifest, data),
        markdown_to_html(tail),
        "</body></html>",
        "",
    ])
