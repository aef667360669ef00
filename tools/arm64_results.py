"""Summarize `make verify-arm64`: every device report of OUT/reports beside the x86 build host's numbers on the same
golden inputs (from each bundle.json), written to OUT/results.json and OUT/results.md.

    python tools/arm64_results.py OUT "numpy X, onnxruntime Y"
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def rows(out: Path) -> list[dict]:
    walls = {}
    if (out / "runs.tsv").is_file():
        for line in (out / "runs.tsv").read_text().splitlines():
            name, cpu, code, wall = line.split("\t")
            walls[(name, cpu)] = (int(code), float(wall))
    found = []
    for path in sorted((out / "reports").glob("*@*.json")):
        name, cpu = path.stem.split("@")
        report = json.loads(path.read_text())
        meta = json.loads((out / "bundles" / name / "bundle.json").read_text())
        for output, arm in report["vs_reference"]["outputs"].items():
            x86 = meta["host_on_golden"]["outputs"][output]
            drift = report["vs_build_host"]["outputs"][output]
            found.append({
                "target": name, "emulated_cpu": cpu, "output": output, "features": report["device"]["features"],
                "runtime": report["runtime"]["description"], "note": report["runtime"]["note"],
                "exit_code": walls.get((name, cpu), (report["exit_code"], None))[0], "verdict": report["verdict"],
                "failures": report["failures"], "preflight": report["preflight"],
                "arm_cosine_vs_fp32": arm["cosine"], "x86_cosine_vs_fp32": x86["cosine"],
                "arm_max_abs_vs_fp32": arm["max_abs_error"], "x86_max_abs_vs_fp32": x86["max_abs_error"],
                "arm_vs_x86_max_abs": drift["max_abs_error"], "arm_vs_x86_cosine": drift["cosine"],
                "arm_vs_x86_top1": report["vs_build_host"].get("top1_agreement"),
                "samples": report["bundle"]["samples"], "wall_s": walls.get((name, cpu), (0, None))[1],
                "emulated_p50_ms": report["latency"]["p50_ms"],
            })
    reported = {(r["target"], r["emulated_cpu"]) for r in found}
    for (name, cpu), (code, wall) in sorted(walls.items()):
        if (name, cpu) not in reported:  # no report: exit 2 (bad bundle, or the runtime cannot run it); say why
            log = out / f"{name}@{cpu}.log"
            why = [ln for ln in log.read_text().splitlines() if ln.startswith("verify.py: error")] if log.is_file() else []
            found.append({"target": name, "emulated_cpu": cpu, "exit_code": code, "wall_s": wall,
                          "error": why[-1] if why else "no report written"})
    return found


def markdown(found: list[dict], versions: str) -> str:
    head = ("| target | emulated CPU | HWCAP features seen | exit | ARM cosine vs FP32 | x86 cosine vs FP32 | ARM max abs vs FP32 | "
            "x86 max abs vs FP32 | ARM vs x86 max abs | ARM vs x86 top-1 | wall s |")
    lines = [f"aarch64 root: Debian bookworm, {versions}; golden samples per bundle: "
             f"{found[0]['samples'] if found else '?'}. Emulated latency is meaningless and not shown.", "", head,
             "|" + "|".join("---" for _ in range(head.count("|") - 1)) + "|"]
    for r in found:
        if "error" in r:
            lines.append(f"| {r['target']} | {r['emulated_cpu']} | | {r['exit_code']} | {r['error']} |||||| "
                         f"{'—' if r['wall_s'] is None else round(r['wall_s'])} |")
            continue
        top1 = "—" if r["arm_vs_x86_top1"] is None else f"{r['arm_vs_x86_top1']:.4f}"
        lines.append(f"| {r['target']} | {r['emulated_cpu']} | {' '.join(r['features']) or 'none'} | {r['exit_code']} | "
                     f"{r['arm_cosine_vs_fp32']:.6f} | {r['x86_cosine_vs_fp32']:.6f} | {r['arm_max_abs_vs_fp32']:.4g} | "
                     f"{r['x86_max_abs_vs_fp32']:.4g} | {r['arm_vs_x86_max_abs']:.4g} | {top1} | "
                     f"{'—' if r['wall_s'] is None else round(r['wall_s'])} |")
    notes = sorted({f"- {r['target']} @ {r['emulated_cpu']}: {n}" for r in found if "error" not in r
                    for n in r["preflight"] + [r["note"]] if n})
    return "\n".join(lines + ["", "Preflight and runtime notes:", "", *notes, ""])


def main() -> int:
    out, versions = Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "?"
    found = rows(out)
    (out / "results.json").write_text(json.dumps({"versions": versions, "rows": found}, indent=2, allow_nan=False) + "\n")
    (out / "results.md").write_text(markdown(found, versions))
    print((out / "results.md").read_text())
    return 0 if found else 1


if __name__ == "__main__":
    sys.exit(main())
