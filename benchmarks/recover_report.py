"""The BENCHMARKS.md section on the build's recovery (docs/recovery.md), rendered from benchmarks/results/recover.json
(benchmarks/recover_bench.py, which `make bench` runs before benchmarks/run.py renders BENCHMARKS.md), and the runs
written beside it with `--result recover_<name>.json`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULT = Path(__file__).resolve().parent / "results" / "recover.json"
# issue 14's bars: (min mean cosine vs torch, min speed-up over ort-fp32 in the same run); recover_bench.py sets them
# as ort-int8's gates, so the search aims at them
BARS = {"mobilenetv2_like": (0.99, 1.3), "resnet18_like": (0.999, 1.6), "minilm": (0.995, 1.2)}


def _load(values: Any) -> str:
    return ", ".join(f"{x:.1f}" for x in values) if values else "?"


def _row(r: dict[str, Any], budget: float) -> str:
    rec = r.get("recovery") or {}
    attempts = rec.get("attempts", [])
    chosen = rec.get("chosen")
    picked = attempts[chosen]["change"] if chosen is not None and chosen < len(attempts) else "the original"
    cosine, speed = r.get("cosine_vs_torch"), r.get("speedup_vs_ort_fp32")
    bar = BARS.get(r["model"])
    gates = r.get("gates")  # recover_bench.py --gates: this run aimed at other gates than issue 14's bar
    own = gates is not None and bar != (gates["min_cosine"], gates["min_speedup"])
    if own:
        bar = (gates["min_cosine"], gates["min_speedup"])
    met = bar is not None and cosine is not None and speed is not None and cosine >= bar[0] and speed >= bar[1]
    verdict = (f"{'gates of this run: ' if own else ''}cosine >= {bar[0]} at >= {bar[1]}x: {'met' if met else '**not met**'}"
               if bar else "—")
    if met and r["status"] != "passed":
        verdict += f" (status {r['status']}: another of the target's gates failed)"
    total = r.get("build_and_recovery_s")
    within = f"{total:.0f} s ({'within' if total is not None and total <= budget + 60 else '**over**'} budget + 60 s)"
    timed = sum(1 for a in attempts[1:] if a.get("speedup") is not None)
    search = (f"{len(attempts) - 1} candidates ({timed} timed) in {rec.get('seconds', 0):.0f} s" if rec
              else "not run: the original meets every gate")
    return (f"| {r['model']} | {r.get('original_cosine', float('nan')):.5f} | {cosine:.5f} | {speed:.2f}x | {r['status']} | "
            f"{search} | {within} | {picked if rec else '—'} | {verdict} |")


TABLE_HEAD = ("| model | original cosine | cosine after recovery | speed-up vs ort-fp32 | status | search | whole build | "
              "written candidate | bar (issue 14) |", "|---|---|---|---|---|---|---|---|---|")


def recover_section(path: Path = RESULT) -> list[str]:
    """Markdown lines, or none when the benchmark has not been run."""
    if not path.is_file():
        return []
    doc: dict[str, Any] = json.loads(path.read_text())
    host = doc["host"]
    cpu = host["cpu"]
    lines = [
        "## Recovery of a failed static INT8 target (issue 14)", "",
        f"From `{doc['command']}` (benchmarks/results/recover.json), commit {host.get('commit')}: one `edgekit build` per "
        f"model with ort-fp32 and ort-int8, `[targets.ort-int8.recover] budget_s = {doc['budget_s']:g}`, ort-int8's gates "
        "`min_cosine` and `min_speedup` set to the model's bar (so the search aims at it); the numbers are "
        "the validator's after recovery (cosine: mean over the 64 held-out crops against the torch model; speed-up: p50 of "
        "ort-fp32 over ort-int8, timed interleaved in the same run, 200 calls). Host: "
        f"{cpu['model']}, {cpu['cores']} cores, ISA flags {', '.join(cpu.get('isa', [])) or 'none'}; load average "
        f"{_load(host.get('loadavg_start'))} at the start, {_load(doc.get('loadavg_end'))} at the end (a shared host: "
        "seconds are inflated, ratios are measured in one run).", "",
        *TABLE_HEAD,
    ]
    lines += [_row(r, doc["budget_s"]) for r in doc["results"]]
    lines += _more_runs(path)
    lines += ["", "Whole build: export, both targets, validation, the search and the re-validation of the written "
              "artifact, against the budget plus 60 s. Every attempt (step, change, cosine, p50, speed-up, seconds) is in "
              "the result file and in each build's report.md; a candidate is timed only when it could be chosen "
              "(docs/recovery.md).", ""]
    return lines


def _more_runs(path: Path) -> list[str]:
    """Rows of the runs written beside ``path`` with ``--result recover_<name>.json`` (one model re-run on its own),
    each with its command and load."""
    lines = []
    for other in sorted(path.parent.glob("recover_*.json")):
        if other.name == "recover_backends.json":  # benchmarks/recover_backends_bench.py: other targets, other table
            continue
        doc = json.loads(other.read_text())
        host = doc["host"]
        lines += ["", f"From `{doc['command']}` (benchmarks/results/{other.name}), commit {host.get('commit')}, load average "
                  f"{_load(host.get('loadavg_start'))} at the start, {_load(doc.get('loadavg_end'))} at the end:", "",
                  *TABLE_HEAD]
        lines += [_row(r, doc["budget_s"]) for r in doc["results"]]
    return lines


if __name__ == "__main__":
    print("\n".join(recover_section()))
