"""Hand-made inputs of report.html's analysis plots, exactly in the shapes of /tmp/helpers/SCHEMAS.md's issue-14
contract (DIR/<target>/debug.json from `edgekit debug`, manifest targets.<name>.recovery from the build's recovery,
gate verdicts' optional resolution/interval): the report is tested on them before those writers exist."""

from __future__ import annotations

from typing import Any


def debug_json(target: str = "ort-int8", layers: int = 20) -> dict[str, Any]:
    """debug.json with ``layers`` quantized layers, ranked; the first one fragile (a planted outlier channel)."""
    rows = []
    for i in range(layers):
        local = 12.0 + 1.5 * i if i else 4.0
        rows.append({
            "onnx_node": f"node_Conv_{31 + 2 * i}", "torch_module": f"layer{1 + i // 4}.{i % 4}.conv{1 + i % 2}" if i % 5 != 3 else None,
            "op_type": "Conv" if i % 3 else "MatMul",
            "local_sqnr_db": local, "accumulated_sqnr_db": local - 3.0 if i % 7 != 6 else None,
            "weight_only_sqnr_db": local + 9.0, "activation_only_sqnr_db": local + 2.0,
            "keep_fp32": {"cosine": 0.999 - 0.001 * i, "p50_ms": 0.012 + 0.001 * i, "latency_cost_ms": 0.001 * (i + 1),
                          "recovered_per_ms": 30.0 / (i + 1)} if i < 10 else None,
            "rank": i + 1 if i < 10 else None,
        })
    return {"schema": 1, "target": target, "backend": "ort", "precision": "int8", "data": "validation", "samples": 24,
            "end_to_end": {"cosine": 0.9712, "sqnr_db": 18.2}, "layers": rows,
            "blocks": [{"name": "layer1", "layers": ["node_Conv_31", "node_Conv_33"],
                        "keep_fp32": {"cosine": 0.995, "p50_ms": 0.02, "latency_cost_ms": 0.004, "recovered_per_ms": 6.0}}]}


def recovery(accuracy: bool = False) -> dict[str, Any]:
    """A recovery record: the original misses the gate, calibration and a recipe help, one exclusion meets it."""
    def attempt(step: str, change: str, cosine: float | None, p50: float | None, ok: bool, excluded: list[str],
                acc: float | None = None) -> dict:
        return {"step": step, "change": change, "cosine": cosine, "accuracy": acc if accuracy else None, "p50_ms": p50,
                "speedup": round(0.030 / p50, 3) if p50 else None, "seconds": 1.5, "gates_passed": ok, "excluded": excluded}

    return {"enabled": True, "budget_s": 180.0, "seconds": 42.1, "met": True, "chosen": 3, "attempts": [
        attempt("original", "static INT8, minmax calibration", 0.9712, 0.021, False, [], 95.0),
        attempt("calibration", "calibrate_method = percentile", 0.9841, 0.021, False, [], 96.5),
        attempt("recipe", "cross-layer equalization", 0.9870, 0.022, False, [], 97.0),
        attempt("precision", "keep node_Conv_31 in FP32", 0.9952, 0.024, True, ["node_Conv_31"], 98.5),
        attempt("precision", "keep node_Conv_31, node_Conv_33 in FP32", 0.9961, 0.029, True, ["node_Conv_31", "node_Conv_33"], 98.7),
        attempt("precision", "keep layer1 in FP32", None, None, False, ["node_Conv_31", "node_Conv_33"]),  # timed out
    ]}


def gate_with_resolution() -> dict[str, Any]:
    """A max_top1_drop verdict on too few samples: the resolution and the interval of the drop."""
    return {"gate": "max_top1_drop", "bound": 1.0, "value": 4.17, "passed": False,
            "message": "ort-int8: top1_drop 4.17 points fails max_top1_drop (<= 1 points)",
            "resolution": "too few samples: one sample = 4.2 points, bound 1.0", "interval": [-4.5, 12.8]}
