"""torch.ao FX (what torch-fbgemm ships) against torchao's PT2E x86 flow, on the ResNet-style CNN of the tests at
1x3x224x224 and on the digits example: p50 latency at 2 threads (interleaved rounds), cosine to FP32, digits accuracy.

    .venv/bin/python benchmarks/torch_ao_vs_pt2e.py            # writes benchmarks/results/torch_ao_vs_pt2e.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from timing import cpu_busy_other, host_sample, interleaved, percentiles  # noqa: E402

from edgekit.backends.torch_ao import artifact, backend, common  # noqa: E402
from edgekit.backends.base import CalibrationSettings  # noqa: E402
from edgekit.resources import calibration_dir  # noqa: E402
from edgekit.types import TensorSpec  # noqa: E402

log = logging.getLogger("torch_ao_vs_pt2e")
THREADS = 2
OUT = ROOT / "benchmarks" / "results" / "torch_ao_vs_pt2e.json"


def _test_models() -> Any:
    """The ResNet-style CNN is defined once, in tests/test_torch_ao.py; load that source as a module."""
    path = Path(tempfile.mkdtemp(prefix="edgekit-bench-")) / "bench_models.py"
    spec = importlib.util.spec_from_file_location("_test_torch_ao", ROOT / "tests" / "test_torch_ao.py")
    test_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(test_module)
    path.write_text(test_module.MODELS)
    spec = importlib.util.spec_from_file_location("bench_models", path)
    models = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(models)
    return models


def cosine(ref: np.ndarray, out: np.ndarray) -> tuple[float, float]:
    r, o = ref.reshape(len(ref), -1).astype(np.float64), out.reshape(len(out), -1).astype(np.float64)
    cos = np.sum(r * o, 1) / (np.linalg.norm(r, axis=1) * np.linalg.norm(o, axis=1))
    return float(cos.mean()), float(cos.min())


def run_all(call: Callable[[torch.Tensor], torch.Tensor], x: np.ndarray, batch: int) -> np.ndarray:
    with torch.inference_mode():
        return np.concatenate([call(torch.from_numpy(x[i:i + batch])).numpy() for i in range(0, len(x), batch)])


# ---------------------------------------------------------------------------------------------- builders


def build_fx(model: torch.nn.Module, engine: str, calib: np.ndarray, spec: TensorSpec, workdir: Path) -> dict[str, Any]:
    """Exactly what the torch-fbgemm / torch-qnnpack targets build: FX static PTQ, frozen TorchScript, canonical bytes."""
    import copy

    start = time.perf_counter()
    example = (torch.from_numpy(calib[:2]),)
    batches = (tuple([torch.from_numpy(calib[i:i + 32])]) for i in range(0, len(calib), 32))
    settings = CalibrationSettings(method="minmax", samples=len(calib))
    with common.quantized_engine(engine), common.torch_warnings_to_log():
        q, _ = backend.quantize_static(copy.deepcopy(model).eval(), engine, batches, example, settings, ())
        frozen, _ = artifact.to_torchscript(q, example)
        data, _ = artifact.serialize(frozen, example, {"engine": engine})
    path = workdir / f"fx_{engine}.pt"
    path.write_bytes(data)
    runner = artifact.TorchAoRunner(path, (spec,), ("y",), engine, THREADS)
    return {"build_s": time.perf_counter() - start, "bytes": len(data), "self_contained": True,
            "artifact": "frozen TorchScript (.pt)", "call": lambda t: torch.from_numpy(runner.run({spec.name: t.numpy()})["y"])}


def build_pt2e(model: torch.nn.Module, calib: np.ndarray, shape: tuple[int, ...], workdir: Path, aoti: bool) -> dict[str, dict[str, Any]]:
    """torchao PT2E with X86InductorQuantizer: lowered to oneDNN int8 ops (eager), and AOTInductor-compiled (.pt2)."""
    from torchao.quantization.pt2e.lowering import lower_pt2e_quantized_to_x86
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer,
        get_default_x86_inductor_quantization_config,
    )

    example = (torch.from_numpy(calib[: shape[0]]),)
    start = time.perf_counter()
    exported = torch.export.export(model.eval(), example).module()
    quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(exported, quantizer)
    with torch.no_grad():
        for i in range(0, len(calib), shape[0]):  # exported for the timing batch size: calibrate batch by batch
            prepared(torch.from_numpy(calib[i:i + shape[0]]))
    converted = convert_pt2e(prepared)
    quantize_s = time.perf_counter() - start
    out: dict[str, dict[str, Any]] = {}
    with torch.no_grad():
        start = time.perf_counter()
        lowered = lower_pt2e_quantized_to_x86(converted, example)
        out["pt2e_x86_onednn_eager"] = {
            "build_s": quantize_s + time.perf_counter() - start, "self_contained": False,
            "artifact": "none: the lowered module holds oneDNN packed weights that torch.export cannot serialize",
            "call": lowered,
        }
        if aoti:
            import torch._inductor.config as inductor_config

            start = time.perf_counter()
            inductor_config.freezing = True
            package = torch._inductor.aoti_compile_and_package(torch.export.export(converted, example), package_path=str(workdir / "pt2e.pt2"))
            compiled = torch._inductor.aoti_load_package(package)
            out["pt2e_x86_aotinductor"] = {
                "build_s": quantize_s + time.perf_counter() - start, "bytes": os.path.getsize(package), "self_contained": True,
                "artifact": "AOTInductor package (.pt2: a shared library compiled for this host's ISA; needs a C++ compiler to build)",
                "call": lambda t: compiled(t),
            }
    return out


# ------------------------------------------------------------------------------------------------ bench


def bench(name: str, model: torch.nn.Module, spec: TensorSpec, calib: np.ndarray, val: np.ndarray, labels: np.ndarray | None,
          args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    model = model.eval()
    shape = spec.example_shape()
    log.info("%s: building torch.ao FX (fbgemm, qnnpack) and PT2E variants", name)
    variants: dict[str, dict[str, Any]] = {"torch_fp32_eager": {"call": model, "self_contained": False, "artifact": "the Python model"}}
    variants["fx_fbgemm"] = build_fx(model, "fbgemm", calib, spec, workdir)
    variants["fx_qnnpack"] = build_fx(model, "qnnpack", calib, spec, workdir)
    if not args.no_pt2e:
        try:
            variants.update(build_pt2e(model, calib, shape, workdir, aoti=not args.no_aoti))
        except ImportError as exc:
            log.warning("PT2E skipped: %s", exc)
    ref = run_all(model, val, shape[0])
    result: dict[str, Any] = {"input": list(shape), "validation_samples": len(val), "calibration_samples": len(calib), "variants": {}}
    for key, v in list(variants.items()):
        entry = {k: v[k] for k in ("artifact", "self_contained", "bytes", "build_s") if k in v}
        result["variants"][key] = entry
        try:
            out = run_all(v["call"], val, shape[0])
        except Exception as exc:  # a variant that cannot run this model is a result too
            entry["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
            del variants[key]
            continue
        entry["cosine_mean"], entry["cosine_min"] = cosine(ref, out)
        if labels is not None:
            entry["accuracy"] = float(np.mean(out.argmax(1) == labels) * 100)
    x = torch.from_numpy(val[: shape[0]])
    calls = {key: (lambda c=v["call"]: c(x)) for key, v in variants.items()}
    log.info("%s: timing %d variants, %d interleaved rounds", name, len(calls), args.rounds)
    before, load = host_sample(), os.getloadavg()[0]
    with torch.inference_mode():
        times = interleaved(calls, warmup=args.warmup, rounds=args.rounds, per_round=args.per_round)
    busy = cpu_busy_other(before, host_sample())
    for key, t in times.items():
        result["variants"][key].update(percentiles(t))
    fp32 = result["variants"]["torch_fp32_eager"]
    for v in result["variants"].values():
        if "p50_ms" in v:  # min is the figure least touched by other jobs on the host; p50 is what edgekit reports
            v["p50_ratio_to_torch_fp32"] = v["p50_ms"] / fp32["p50_ms"]
            v["min_ratio_to_torch_fp32"] = v["min_ms"] / fp32["min_ms"]
    result["timing"] = {"threads": THREADS, "batch": shape[0], "rounds": args.rounds, "timed_calls_per_round": args.per_round,
                        "load_avg_1min_before": load, "other_cpus_busy_during": busy}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--per-round", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--no-pt2e", action="store_true", help="torch.ao FX only (no torchao installed)")
    parser.add_argument("--no-aoti", action="store_true", help="skip the AOTInductor compile (minutes on 2 cores)")
    parser.add_argument("--only", choices=("resnet", "digits"))
    parser.add_argument("-o", "--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    warnings.filterwarnings("ignore")
    torch.set_num_threads(THREADS)
    results: dict[str, Any] = json.loads(args.out.read_text()) if args.out.exists() and args.only else {}
    try:
        import torchao

        torchao_version = torchao.__version__
    except ImportError:
        torchao_version = "not installed"
    from edgekit.hostinfo import cpu

    results.update({
        "command": "python benchmarks/torch_ao_vs_pt2e.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "host": {**cpu(), "python": platform.python_version()},
        "versions": {"torch": torch.__version__, "torchao": torchao_version},
    })
    results.setdefault("models", {})
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-") as tmp:
        workdir = Path(tmp)
        if args.only in (None, "resnet"):
            models = _test_models()
            rng = np.random.default_rng(0)
            res = args.resolution
            data = rng.standard_normal((48, 3, res, res)).astype(np.float32)
            spec = TensorSpec("x", (1, 3, res, res))
            results["models"][f"resnet_style_{res}"] = bench(
                f"resnet {res}", models.resnet(widths=(32, 64, 128, 256)), spec, data[:32], data[32:], None, args, workdir)
        if args.only in (None, "digits"):
            from edgekit.examples.digits import WEIGHTS, build
            from safetensors.torch import load_file

            model = build()
            model.load_state_dict(load_file(str(WEIGHTS)))
            calib = np.load(calibration_dir() / "digits" / "calib.npz")["image"]
            val = np.load(calibration_dir() / "digits" / "val.npz")
            spec = TensorSpec("image", (1, 1, 8, 8))
            results["models"]["digits"] = bench("digits", model, spec, calib, val["image"], val["labels"], args, workdir)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    for name, r in results["models"].items():
        for key, v in r["variants"].items():
            if "error" in v:
                print(f"{name:18s} {key:24s} FAILED: {v['error']}")
                continue
            print(f"{name:18s} {key:24s} p50 {v['p50_ms']:8.3f} ms  x{v['p50_ratio_to_torch_fp32']:.3f} of fp32  "
                  f"(min x{v['min_ratio_to_torch_fp32']:.3f})  cos {v['cosine_mean']:.5f}" + (f"  acc {v['accuracy']:.2f}" if "accuracy" in v else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
