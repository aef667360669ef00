"""Where an ONNX file's time goes: ONNX Runtime's profiler, summed per operator type.

    .venv/bin/python benchmarks/profile_ops.py MODEL.onnx FEED.npz [--rows 1] [--threads 2] [--runs 200]

    e.g. the MiniLM artifacts `make bench` built:
    .venv/bin/python benchmarks/profile_ops.py benchmarks/work/minilm/edgekit/ort-int8-dynamic/model.onnx \\
        benchmarks/work/minilm_val.npz

FEED.npz holds one array per model input (first ``--rows`` rows are fed). Sessions as in benchmarks/run.py (fixed
threads, idle workers sleep). The profiler adds a little time to every node, so the total is above a plain call's
latency; read the shares, not the absolute sum.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def profile(model: Path, feed: dict[str, np.ndarray], threads: int, runs: int) -> dict[str, tuple[float, int]]:
    """{op type: (ms per run, nodes of that type run per call)} over ``runs`` calls after 10 warm-up calls."""
    from edgekit.backends.onnx.session import session as ort_session

    session = ort_session(str(model), threads, spinning=False, profile_prefix="edgekit-profile")
    names = [i.name for i in session.get_inputs()]
    for _ in range(10):
        session.run(None, {k: feed[k] for k in names})
    for _ in range(runs):
        session.run(None, {k: feed[k] for k in names})
    trace = Path(session.end_profiling())
    try:
        events = json.loads(trace.read_text())
    finally:
        trace.unlink(missing_ok=True)
    runs_seen = [e for e in events if e.get("name") == "model_run"]
    start_us = runs_seen[-runs]["ts"] if len(runs_seen) >= runs else 0  # skip the warm-up calls
    total: dict[str, float] = collections.Counter()
    count: dict[str, int] = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= start_us:
            total[e["args"]["op_name"]] += e["dur"]
            count[e["args"]["op_name"]] += 1
    return {k: (v / runs / 1e3, count[k] // runs) for k, v in sorted(total.items(), key=lambda kv: -kv[1])}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("feed", type=Path, help=".npz with one array per model input")
    ap.add_argument("--rows", type=int, default=1, help="batch: first N rows of each array (default 1)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=200)
    args = ap.parse_args(argv)
    data = np.load(args.feed)
    feed = {k: data[k][: args.rows] for k in data.files}
    result = profile(args.model, feed, args.threads, args.runs)
    total = sum(ms for ms, _ in result.values())
    print(f"{args.model}: {args.threads} threads, batch {args.rows}, {args.runs} profiled calls")
    print(f"{'op type':28s} {'ms/call':>8s} {'share':>6s} {'nodes':>6s}")
    for op, (ms, n) in result.items():
        print(f"{op:28s} {ms:8.2f} {100 * ms / total:5.1f}% {n:6d}")
    print(f"{'total (profiled)':28s} {total:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
