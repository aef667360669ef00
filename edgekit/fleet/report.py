"""The fleet manifest (fleet.json, strict JSON) and its report (report.md, report.html): one row per (model, target)
with status, accuracy, error, latency, size, and whether this run rebuilt it or took it from the cache."""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit.fsutil import atomic_write_text
from edgekit.types import TargetResult

FLEET_MANIFEST = "fleet.json"
FORMAT = 1
COLUMNS = ("model", "target", "status", "accuracy %", "cosine", "SQNR dB", "p50 ms", "size", "size ratio", "this run", "why")


@dataclass(frozen=True)
class PairRecord:
    """One (model, target) of a fleet run: its result and what the run did for it."""

    model: str
    target: str
    result: TargetResult
    action: str  # build | measure | cached | unavailable (decided before the run)
    why: str  # the inputs that changed, when rebuilt
    steps: dict[str, str]  # reference / artifact / measure: built | cached | -
    keys: dict[str, str]

    @property
    def rebuilt(self) -> bool:
        return self.steps.get("artifact") == "built"

    def to_dict(self) -> dict[str, Any]:
        from edgekit.manifest import result_to_dict
        from edgekit.report.markdown import primary_comparison

        r = result_to_dict(self.result)
        worst = primary_comparison(r["metrics"]).get("worst", {})
        return {
            "model": self.model, "target": self.target, "status": r["status"], "reason": r["reason"],
            "accuracy": r["metrics"].get("accuracy"), "cosine": worst.get("cosine"), "sqnr_db": worst.get("sqnr_db"),
            "p50_ms": r["latency"].get("p50_ms"), "bytes": r["size"].get("bytes"), "size_ratio": r["size"].get("ratio_to_fp32"),
            "rebuilt": self.rebuilt, "action": self.action, "why": self.why, "steps": self.steps, "keys": self.keys,
            "files": r["files"], "folder": self.model,
        }


def finite(value: Any) -> Any:
    """``value`` with every NaN/Infinity replaced by None: fleet.json is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def write_fleet(out: Path, spec: Any, records: list[PairRecord], versions: dict[str, str], tasks: int, seconds: float,
                strict: bool) -> dict[str, Any]:
    """Write fleet.json, report.md and report.html into ``out``; return the fleet manifest."""
    from edgekit.manifest import host_info
    from edgekit.validate.verdict import exit_code

    fleet = finite({
        "format": FORMAT,
        "fleet_file": str(spec.path),
        "models": [b.name for b in spec.builds],
        "versions": versions,
        "host": host_info(),
        "tasks": tasks,
        "wall_seconds": seconds,
        "pairs": [r.to_dict() for r in records],
        "rebuilt": sum(r.rebuilt for r in records),
        "cached": sum(r.action == "cached" for r in records),
        "strict": strict,
        "exit_code": exit_code((r.result.status for r in records), strict),
    })
    atomic_write_text(out / "report.md", render_markdown(fleet))
    atomic_write_text(out / "report.html", render_html(fleet))
    atomic_write_text(out / FLEET_MANIFEST, json.dumps(fleet, indent=2, sort_keys=True, allow_nan=False) + "\n")
    return fleet


def _fmt(value: Any, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def _size(n: int | None) -> str:
    if n is None:
        return "—"
    return f"{n} B" if n < 1024 else f"{n / 1024:.1f} KB" if n < 1 << 20 else f"{n / (1 << 20):.1f} MB"


def rows(fleet: dict[str, Any]) -> list[list[str]]:
    out = []
    for p in fleet["pairs"]:
        run = "rebuilt" if p["rebuilt"] else {"cached": "cached", "measure": "re-measured", "unavailable": "—"}.get(p["action"], "—")
        status = p["status"] + (f": {p['reason']}" if p["status"] in ("error", "failed") and p["reason"] else "")
        out.append([p["model"], p["target"], status, _fmt(p["accuracy"], ".2f"), _fmt(p["cosine"], ".6f"),
                    _fmt(p["sqnr_db"], ".1f"), _fmt(p["p50_ms"], ".3f"), _size(p["bytes"]), _fmt(p["size_ratio"], ".3f"),
                    run, p["why"] if run != "cached" else ""])
    return out


def text_table(fleet: dict[str, Any]) -> str:
    table = [list(COLUMNS[:-1])] + [r[:-1] for r in rows(fleet)]
    widths = [max(len(r[i][:60]) for r in table) for i in range(len(table[0]))]
    lines = ["  ".join(c[:60].ljust(w) for c, w in zip(r, widths)).rstrip() for r in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render_markdown(fleet: dict[str, Any]) -> str:
    lines = ["# edgekit fleet report", "",
             f"{len(fleet['models'])} model(s), {len(fleet['pairs'])} pair(s): {fleet['rebuilt']} rebuilt, "
             f"{fleet['cached']} from the cache; {fleet['tasks']} Ray task(s), {fleet['wall_seconds']:.1f} s. "
             f"Exit code {fleet['exit_code']}.", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows(fleet)]
    lines += ["", "Each model's folder holds its own manifest.json, report.md and report.html (accuracy and latency per target, "
              "measured on this host)."]
    return "\n".join(lines) + "\n"


def render_html(fleet: dict[str, Any]) -> str:
    colour = {"passed": "#e6f4ea", "failed": "#fde7e9", "error": "#fde7e9", "unavailable": "#f1f3f4"}
    body = ["<table>", "<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS) + "</tr>"]
    for p, r in zip(fleet["pairs"], rows(fleet)):
        cells = [f'<td><a href="{html.escape(r[0])}/report.html">{html.escape(r[0])}</a></td>']
        cells += [f"<td>{html.escape(c)}</td>" for c in r[1:]]
        body.append(f'<tr style="background:{colour.get(p["status"], "#fff")}">' + "".join(cells) + "</tr>")
    body.append("</table>")
    return "\n".join([
        "<!doctype html>", '<html lang="en"><head><meta charset="utf-8"><title>edgekit fleet report</title>',
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
        "padding:3px 8px;text-align:right}td:nth-child(-n+3),th:nth-child(-n+3),td:last-child{text-align:left}</style>",
        "</head><body>", "<h1>edgekit fleet report</h1>",
        f"<p>{len(fleet['models'])} model(s), {len(fleet['pairs'])} pair(s): {fleet['rebuilt']} rebuilt, "
        f"{fleet['cached']} from the cache; {fleet['tasks']} Ray task(s), {fleet['wall_seconds']:.1f} s; "
        f"exit code {fleet['exit_code']}.</p>", *body, "</body></html>", ""])
