"""The BENCHMARKS.md section on ort-int4, rendered from benchmarks/results/int4.json (benchmarks/int4_bench.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULT = Path(__file__).resolve().parent / "results" / "int4.json"
BAR = 0.17  # issue 18: ort-int4 on MiniLM at most 0.17 of the FP32 bytes


def int4_section(path: Path = RESULT) -> list[str]:
    """Markdown lines, or none when the benchmark has not been run."""
    if not path.is_file():
        return []
    r: dict[str, Any] = json.loads(path.read_text())
    host = r["host"]
    rows = r["targets"]
    lines = [
        "## Weight-only 4-bit (`ort-int4`) on MiniLM", "",
        f"From `{r['command']}` (benchmarks/results/int4.json): one edgekit build of {r['model']}, then every artifact "
        f"timed interleaved ({r['rounds']} rounds, 3 timed calls per path per round). Host: {host.get('cpu', '?')}, "
        f"{host.get('cores', '?')} cores, ISA flags {', '.join(host.get('isa', [])) or 'none'}; other processes kept "
        f"{r['other_cpu_load'] if r['other_cpu_load'] is None else round(r['other_cpu_load'], 2)} CPUs busy during the timing. "
        "Cosine: against the torch model on the held-out sentences (mean; worst sentence). Bytes: files on disk, "
        f"ratio to the FP32 ONNX reference ({r['fp32_bytes'] / 1e6:.1f} MB).", "",
        *([f"**The host was saturated during this timing** ({r['other_cpu_load']:.2f} of {host.get('cores', '?')} CPUs busy "
           "with other processes): the milliseconds are many times a quiet host's and the speed ratios are indicative "
           "only (interleaving spreads the load over every path, not evenly over kernels that differ in memory traffic). "
           "Sizes and cosines do not depend on the load.", ""] if (r.get("other_cpu_load") or 0) > 1.0 else []),
        "| target | bytes | ratio to FP32 | cosine mean | cosine worst | p50 ms | speed vs ort-fp32 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, t in rows.items():
        bold = "**" if name == "ort-int4" else ""
        lines.append(f"| {bold}{name}{bold} | {t['bytes'] / 1e6:.1f} MB | {t['ratio_to_fp32']:.3f} | {t['cosine_mean']:.4f} | "
                     f"{t['cosine_min']:.4f} | {t['p50_ms']:.2f} | {t['speedup_vs_ort_fp32']:.2f}x |")
    int4, int8 = rows.get("ort-int4"), rows.get("ort-int8-dynamic")
    if int4 and int8:
        met = int4["ratio_to_fp32"] <= BAR
        faster = int4["p50_ms"] < int8["p50_ms"]
        lines += ["", f"Bar (issue 18): ort-int4 at most {BAR} of the FP32 bytes: {int4['ratio_to_fp32']:.3f}, "
                  f"{'met' if met else '**not met**'}. Against ort-int8-dynamic it is {int8['bytes'] / int4['bytes']:.2f}x "
                  f"smaller, cosine {int4['cosine_mean']:.4f} vs {int8['cosine_mean']:.4f}, and "
                  + (f"{int8['p50_ms'] / int4['p50_ms']:.2f}x faster" if faster else
                     f"{int4['p50_ms'] / int8['p50_ms']:.2f}x slower ({int4['p50_ms']:.2f} vs {int8['p50_ms']:.2f} ms)")
                  + " on this CPU. 4-bit is a size target: MatMulNBits unpacks each 4-bit block before its FP32 (or, with "
                  "accuracy_level 4, int8) product, and ort-int8-dynamic also fuses attention into QAttention, which "
                  "weight-only 4-bit does not. Most of the size comes from the embedding table: with `embeddings = false` "
                  "the 30522x384 word embeddings (47 MB) stay FP32 "
                  + (f"(ratio {rows['ort-int4-fp32-embeddings']['ratio_to_fp32']:.3f})." if "ort-int4-fp32-embeddings" in rows else ".")]
    return lines + [""]
