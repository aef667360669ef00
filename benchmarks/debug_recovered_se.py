"""How well 32 held-out crops resolve what keeping one layer FP32 recovers, for the top of `edgekit debug`'s ranking
on the ResNet-18-shaped CNN: per crop, the keep-FP32 model's cosine to the FP32 reference minus the artifact's; the
mean (the ranking's "recovered"), its standard error and the share of crops where it is positive.

    .venv/bin/python benchmarks/debug_bench.py --samples 32      # first: the build and the ranking
    .venv/bin/python benchmarks/debug_recovered_se.py

Reads /tmp/debug_bench/build (debug_bench.py's --out) and benchmarks/results/debug_bench.json (which layers to
check: its top 5 and the layer reading the image); writes benchmarks/results/debug_recovered_se.json. Cosines only:
the host's load does not change them.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def main(argv: list[str] | None = None) -> int:
    import onnx

    from edgekit.backends.onnx.session import session
    from edgekit.debug.keep import keep_fp32
    from edgekit.debug.layers import Graphs, find_layers

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", type=Path, default=Path("/tmp/debug_bench/build"))
    ap.add_argument("--samples", type=int, default=32)
    args = ap.parse_args(argv)
    ranking = json.loads((HERE / "results" / "debug_bench.json").read_text())["targets"]["ort-int8"]
    labels = [r["layer"] for r in ranking["top5"]] + [ranking["image_layer"]["layer"]]
    nodes = list(dict.fromkeys(m.group(1) if (m := re.search(r"\((\S+)\)$", label)) else label for label in labels))

    g = Graphs(onnx.load(str(args.build / "reference" / "model.onnx")), onnx.load(str(args.build / "ort-int8" / "model.onnx")))
    layers = {x.node: x for x in find_layers(g)}
    images = np.load(HERE / "work" / "data" / f"debug_val_{args.samples}.npz")["image"]
    reference = [session(g.reference.SerializeToString(), 2).run(None, {"image": x[None]})[0].ravel() for x in images]

    def cosines(model: bytes) -> np.ndarray:
        sess = session(model, 2)
        out = []
        for x, r in zip(images, reference):
            o = sess.run(None, {"image": x[None]})[0].ravel().astype(np.float64)
            out.append(float(r.astype(np.float64) @ o / np.linalg.norm(r) / np.linalg.norm(o)))
        return np.asarray(out)

    base = cosines(g.artifact.SerializeToString())
    rows = []
    for node in nodes:
        delta = cosines(keep_fp32(g, [layers[node]])) - base
        rows.append({"layer": next(label for label in labels if label == node or label.endswith(f"({node})")),
                     "recovered": float(delta.mean()), "standard_error": float(delta.std(ddof=1) / np.sqrt(len(delta))),
                     "positive_share": float(np.mean(delta > 0))})
        print(f"{rows[-1]['layer']}: recovered {rows[-1]['recovered']:.3e} ± {rows[-1]['standard_error']:.1e} "
              f"(s.e.), positive on {rows[-1]['positive_share']:.0%} of {len(delta)} crops", flush=True)
    out = HERE / "results" / "debug_recovered_se.json"
    out.write_text(json.dumps({"command": "benchmarks/debug_recovered_se.py", "samples": len(images),
                               "artifact_cosine": float(base.mean()), "rows": rows}, indent=1, allow_nan=False) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
