"""report.html: the report.md table plus bar charts (latency, SQNR, size) as inline SVG; no plotting library."""

from __future__ import annotations

import html
import math
from typing import Any

from edgekit.report.markdown import COLUMNS, primary_comparison, reference_rows, summary_rows

_BAR_COLORS = {"passed": "#2e7d32", "failed": "#c62828", "unavailable": "#9e9e9e", "error": "#6a1b9a", "reference": "#1565c0"}


def _bars(title: str, unit: str, items: list[tuple[str, float, str]], fmt: str = ".3f") -> str:
    """A horizontal bar chart: one (label, value, status) per bar; non-finite values are skipped."""
    items = [(label, v, s) for label, v, s in items if v is not None and math.isfinite(v)]
    if not items:
        return ""
    top = max(v for _, v, _ in items) or 1.0
    row, label_w, bar_w = 22, 150, 360
    height = row * len(items) + 30
    parts = [f'<svg width="{label_w + bar_w + 90}" height="{height}" role="img" aria-label="{html.escape(title)}">',
             f'<text x="0" y="14" font-weight="bold">{html.escape(title)} ({html.escape(unit)})</text>']
    for i, (label, value, status) in enumerate(items):
        y = 24 + i * row
        w = max(1.0, bar_w * value / top)
        parts.append(f'<text x="0" y="{y + 14}">{html.escape(label)}</text>')
        parts.append(f'<rect x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row - 6}" fill="{_BAR_COLORS.get(status, "#555")}"/>')
        parts.append(f'<text x="{label_w + w + 4:.1f}" y="{y + 14}">{format(value, fmt)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def render_html(manifest: dict[str, Any]) -> str:
    """One self-contained page: summary table, charts, and each target's gate verdicts."""
    rows = reference_rows(manifest) + summary_rows(manifest)
    table = ["<table>", "<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS) + "</tr>"]
    table += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows]
    table.append("</table>")
    latency, sqnr, size = [], [], []
    for name, r in manifest.get("references", {}).items():
        latency.append((name, r.get("latency", {}).get("p50_ms"), "reference"))
    for name, t in manifest["targets"].items():
        latency.append((name, t.get("latency", {}).get("p50_ms"), t["status"]))
        sqnr.append((name, primary_comparison(t.get("metrics", {})).get("worst", {}).get("sqnr_db"), t["status"]))
        size.append((name, (t.get("size", {}).get("bytes") or 0) / 1e6 or None, t["status"]))
    charts = [_bars("p50 latency", "ms, lower is better", latency), _bars("SQNR vs FP32", "dB, higher is better", sqnr, ".1f"),
              _bars("artifact size", "MB", size)]
    gates = []
    for name, t in manifest["targets"].items():
        gates.append(f"<h3>{html.escape(name)} — {html.escape(t['status'])}</h3>")
        if t.get("reason"):
            gates.append(f"<p>{html.escape(t['reason'])}</p>")
        if t.get("measured_on"):
            gates.append(f"<p>measured on: {html.escape(t['measured_on'])}</p>")
        items = [f"<li>{'pass' if g['passed'] else 'FAIL' if g['passed'] is False else 'not checked'}: "
                 f"{html.escape(g['message'])}</li>" for g in t.get("gates", [])]
        if items:
            gates.append("<ul>" + "".join(items) + "</ul>")
    source = manifest["config"].get("model", {}).get("source", "?")
    return "\n".join([
        "<!doctype html>", '<html lang="en"><head><meta charset="utf-8"><title>edgekit report</title>',
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
        "padding:3px 8px;text-align:right}td:first-child,th:first-child{text-align:left}svg{display:block;margin:1em 0;"
        "font-size:12px}</style></head><body>",
        f"<h1>edgekit report</h1><p>Model: <code>{html.escape(str(source))}</code> — exit code {manifest['exit_code']}</p>",
        f"<p>Validation: {html.escape(str(manifest.get('validation', {}).get('description', '?')))}</p>",
        *table, *[c for c in charts if c], "<h2>Targets</h2>", *gates, "</body></html>", "",
    ])
