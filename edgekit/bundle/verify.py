"""Verify an edgekit bundle on the device: sha256, CPU preflight, golden inputs against expected outputs, latency.

This file is copied into every bundle as ``verify.py`` and must run there alone: it imports only the standard
library, numpy, and (inside functions) the artifact's runtime: onnxruntime, torch, or tensorrt + cuda-python.

    python verify.py [BUNDLE] [--runs N] [--warmup W] [--threads T] [--json OUT]

One file by design, hence longer than edgekit's other modules: it travels alone, so preflight, runners,
comparison and report cannot be split into modules of their own.

Exit codes: 0 every output within the bundle's tolerances; 1 outside them (the failing output and numbers are
printed); 2 a bad bundle (tampered or missing file, malformed bundle.json) or a missing runtime (with the pip line).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

try:
    import numpy as np
except ImportError:  # reported by main() as a missing runtime, exit 2
    np = None  # type: ignore[assignment]

BUNDLE_JSON = "bundle.json"
REPORT = "device-report.json"
FORMAT = 1
X86_INT8 = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
VNNI = ("avx512_vnni", "avx_vnni", "amx_int8")
ARM_INT8 = ("asimd", "asimddp", "i8mm", "sve", "sve2", "bf16")
# AT_HWCAP / AT_HWCAP2 bits of Linux arm64 (arch/arm64/include/uapi/asm/hwcap.h)
HWCAP_BITS = {"asimd": 1 << 1, "asimddp": 1 << 20, "sve": 1 << 22}
HWCAP2_BITS = {"sve2": 1 << 1, "i8mm": 1 << 13, "bf16": 1 << 14}
AT_HWCAP, AT_HWCAP2 = 16, 26
INSTALL = {"onnxruntime": "pip install numpy onnxruntime", "torch": "pip install numpy torch",
           "tensorrt": "pip install numpy tensorrt cuda-python (on a Jetson: use JetPack's TensorRT)"}


class BundleError(Exception):
    """Exit 2: the bundle is not what bundle.json vouches for, or this device lacks the runtime."""


# --------------------------------------------------------------------------------------------- bundle


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def read_bundle(root: Path) -> dict[str, Any]:
    """bundle.json, strictly parsed and checked for the keys the verifier reads."""
    path = root / BUNDLE_JSON
    if not path.is_file():
        raise BundleError(f"{path} is missing: pass the bundle folder (the one holding bundle.json and verify.py)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"), parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path} is not valid JSON ({exc}); re-make the bundle with edgekit bundle") from None
    for key, kind in (("format", int), ("target", str), ("runtime", dict), ("inputs", list), ("outputs", list),
                      ("golden", dict), ("tolerances", dict), ("files", dict)):
        if not isinstance(meta.get(key), kind):
            raise BundleError(f"{path}: key '{key}' is missing or not a {kind.__name__}; re-make the bundle")
    if meta["format"] > FORMAT:
        raise BundleError(f"{path} has format {meta['format']}; this verify.py reads format {FORMAT}")
    return meta


def check_files(root: Path, meta: dict[str, Any]) -> int:
    """Every file bundle.json lists has its sha256 and size; raise BundleError naming the first that does not."""
    for rel, want in sorted(meta["files"].items()):
        path = root / rel
        if not path.is_file():
            raise BundleError(f"{rel} is missing from the bundle {root}; copy the whole bundle again")
        got = sha256_file(path)
        if got != want.get("sha256") or path.stat().st_size != want.get("bytes"):
            raise BundleError(f"{rel} was modified (sha256 {got[:12]}... != bundle.json {str(want.get('sha256'))[:12]}...); "
                              "copy the bundle again")
    return len(meta["files"])


def open_bundle(arg: str | None, scratch: Path) -> Path:
    """The bundle folder: ``arg`` (a folder or a .tar.gz, unpacked into ``scratch``), else this file's folder."""
    path = Path(arg) if arg else Path(__file__).resolve().parent
    if path.is_file() and path.name.endswith((".tar.gz", ".tgz")):
        with tarfile.open(path, "r:gz") as tar:
            for m in tar.getmembers():
                if m.name.startswith("/") or ".." in Path(m.name).parts or not (m.isfile() or m.isdir()):
                    raise BundleError(f"{path}: unsafe member {m.name!r} in the archive; re-make the bundle")
            tar.extractall(scratch)
        found = [p.parent for p in scratch.rglob(BUNDLE_JSON)]
        if len(found) != 1:
            raise BundleError(f"{path} holds {len(found)} bundle.json files; expected one bundle")
        return found[0]
    if not path.is_dir():
        raise BundleError(f"{path} is not a bundle folder or .tar.gz")
    return path


# ------------------------------------------------------------------------------------------ preflight


ARM_PARTS = {"0xd03": "Cortex-A53", "0xd04": "Cortex-A35", "0xd05": "Cortex-A55", "0xd07": "Cortex-A57",
             "0xd08": "Cortex-A72", "0xd09": "Cortex-A73", "0xd0a": "Cortex-A75", "0xd0b": "Cortex-A76",
             "0xd0c": "Neoverse-N1", "0xd0d": "Cortex-A77", "0xd40": "Neoverse-V1", "0xd41": "Cortex-A78",
             "0xd44": "Cortex-X1", "0xd46": "Cortex-A510", "0xd47": "Cortex-A710", "0xd48": "Cortex-X2",
             "0xd49": "Neoverse-N2", "0xd4f": "Neoverse-V2"}


def parse_cpuinfo(text: str) -> dict[str, Any]:
    """CPU model and feature flags from /proc/cpuinfo text (x86 'flags', ARM 'Features')."""
    found: dict[str, str] = {}
    flags, arch = set(), ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip().lower(), value.strip()
        if key == "flags" and not flags:
            flags, arch = set(value.split()), "x86"
        elif key == "features" and not flags:
            flags, arch = set(value.split()), "arm"
        elif key in ("model name", "model", "hardware", "cpu part") and value and key not in found:
            if not (key == "model" and value.isdigit()):  # x86 'model' is a number; a Raspberry Pi's names the board
                found[key] = ARM_PARTS.get(value, f"ARM CPU part {value}") if key == "cpu part" else value
    model = next((found[k] for k in ("model name", "model", "cpu part", "hardware") if k in found), "")
    return {"model": model, "flags": sorted(flags), "arch": arch}


def parse_auxv(data: bytes) -> dict[int, int]:
    """The (type, value) pairs of /proc/self/auxv (64-bit little-endian)."""
    pairs = {}
    for i in range(0, len(data) - 15, 16):
        key, value = struct.unpack_from("<QQ", data, i)
        if key == 0:
            break
        pairs[key] = value
    return pairs


def arm_features(hwcap: int, hwcap2: int) -> list[str]:
    return sorted([n for n, bit in HWCAP_BITS.items() if hwcap & bit] + [n for n, bit in HWCAP2_BITS.items() if hwcap2 & bit])


def _sysctl(name: str) -> str:
    try:
        return subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=2).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError:
        return b""


def detect_device(cpuinfo: str | None = None, machine: str | None = None, auxv: bytes | None = None) -> dict[str, Any]:
    """This device: CPU model, architecture, the INT8-relevant ISA features, whether it looks emulated, any GPU."""
    machine = (machine or platform.machine()).lower()
    is_arm = machine in ("aarch64", "arm64") or machine.startswith("arm")
    info = parse_cpuinfo(_read("/proc/cpuinfo").decode("utf-8", "replace") if cpuinfo is None else cpuinfo)
    emulated = bool(info["arch"]) and (info["arch"] == "x86") == is_arm  # the kernel describes another CPU
    model = info["model"] if not emulated else ""
    if is_arm:
        pairs = parse_auxv(_read("/proc/self/auxv") if auxv is None else auxv)
        features = arm_features(pairs.get(AT_HWCAP, 0), pairs.get(AT_HWCAP2, 0)) if pairs else []
        if not features and info["arch"] == "arm":
            features = sorted({"asimd" if f == "neon" else f for f in info["flags"]} & set(ARM_INT8))
        if not features and platform.system() == "Darwin":
            features = [n for n, key in (("asimd", "hw.optional.AdvSIMD"), ("asimddp", "hw.optional.arm.FEAT_DotProd"),
                                         ("i8mm", "hw.optional.arm.FEAT_I8MM"), ("bf16", "hw.optional.arm.FEAT_BF16"))
                        if _sysctl(key) == "1"]
            model = _sysctl("machdep.cpu.brand_string")
    else:
        features = [f for f in X86_INT8 if f in info["flags"]]
        if not features and platform.system() == "Darwin":
            flags = (_sysctl("machdep.cpu.features") + " " + _sysctl("machdep.cpu.leaf7_features")).lower().split()
            features = [f for f in X86_INT8 if f.replace("_", "") in flags]
            model = _sysctl("machdep.cpu.brand_string")
    board = _read("/proc/device-tree/model").decode("utf-8", "replace").strip("\x00\n ")
    device = {"cpu": model or platform.processor() or machine, "machine": machine, "system": platform.system(),
              "os": platform.platform(), "cores": os.cpu_count(), "features": features, "emulated": emulated,
              "board": board, "python": platform.python_version()}
    jetson = _read("/etc/nv_tegra_release").decode("utf-8", "replace").split(",")[0].strip()
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=5).stdout.strip()
            device["gpu"] = out.splitlines()[0] if out else ""
        except (OSError, subprocess.SubprocessError):
            pass
    if jetson:
        device["gpu"] = device.get("gpu") or f"Jetson ({jetson})"
    return device


def predict(device: dict[str, Any], meta: dict[str, Any]) -> list[str]:
    """Before running: plain words on whether this artifact's recipe can be exact and fast on this device."""
    q = meta.get("quantization") or {}
    precision, engine = q.get("precision", "fp32"), q.get("engine", "")
    features, arm = set(device["features"]), device["machine"] in ("aarch64", "arm64") or device["machine"].startswith("arm")
    notes = []
    if device["emulated"]:
        notes.append("emulated CPU (the kernel's /proc/cpuinfo describes another architecture): latency here is "
                     "meaningless; the numerics are the emulated CPU's real kernels")
    if engine == "fbgemm" and arm:
        notes.append("fbgemm is an x86-only engine: this artifact cannot run on ARM; ship the torch-qnnpack bundle")
    elif engine == "qnnpack" and not arm:
        notes.append("qnnpack on x86 runs for checking only: its latency here does not predict an ARM device's")
    if meta["runtime"].get("name") == "tensorrt" and not device.get("gpu"):
        notes.append("no NVIDIA GPU found: the precision-explicit ONNX is verified on ONNX Runtime CPU, not as an engine")
    if precision != "int8" or meta["runtime"].get("name") == "tensorrt":
        return notes or [f"{precision.upper()}: no INT8 kernel risk on this CPU"]
    if arm:
        if "asimddp" not in features:
            notes.append("no dot-product extension (asimddp; e.g. Cortex-A53/A72, Raspberry Pi 3/4): INT8 runs on "
                         "widening NEON multiplies and is rarely faster than FP32 here")
        else:
            notes.append("dot-product (asimddp: SDOT/UDOT) present: INT8 GEMMs use it; INT8 can beat FP32"
                         + ("; i8mm (SMMLA) present: the fastest INT8 GEMM kernels" if "i8mm" in features else ""))
    elif not features & set(VNNI):
        if "avx2" not in features:
            notes.append("no AVX2: INT8 kernels fall back to SSE and are slow")
        elif q.get("u8s8") and q.get("weight_bits", 8) == 8:
            notes.append("saturation risk: 8-bit u8 x s8 INT8 on x86 without VNNI adds pairs of products in int16 "
                         "(vpmaddubsw), which can saturate, so outputs may differ from the build host's; and INT8 is "
                         "often not faster than FP32 here (rebuild with 7-bit weights: reduce_range)")
        else:
            notes.append("x86 without VNNI: 7-bit range avoids int16 saturation, but INT8 is often not faster than FP32")
    else:
        notes.append(f"VNNI/AMX present ({', '.join(sorted(features & set(VNNI)))}): u8 x s8 products accumulate "
                     "exactly in int32; INT8 should beat FP32")
    return notes


# -------------------------------------------------------------------------------------------- runners


def _missing(runtime: str, exc: Exception) -> BundleError:
    return BundleError(f"the {runtime} runtime is not importable here ({exc}); install it: {INSTALL[runtime]}")


def onnx_runner(path: Path, threads: int, optimize: bool = True) -> tuple[Callable[[dict], list], str]:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise _missing("onnxruntime", exc) from None
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # a TensorRT bundle's ONNX runs as written (Q/DQ in FP32, as the build host's proxy ran it)
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, "ORT_ENABLE_ALL" if optimize else "ORT_DISABLE_ALL")
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return (lambda feed: sess.run(names, feed)), f"onnxruntime {ort.__version__} (CPUExecutionProvider)"


def torch_runner(path: Path, threads: int, engine: str) -> tuple[Callable[[dict], list], str]:
    try:
        import torch
    except ImportError as exc:
        raise _missing("torch", exc) from None
    if engine and engine not in torch.backends.quantized.supported_engines:
        raise BundleError(f"torch {torch.__version__} here has no '{engine}' quantized engine (it has "
                          f"{torch.backends.quantized.supported_engines}); this artifact cannot run on this CPU")
    if engine:
        torch.backends.quantized.engine = engine  # before load: weights are packed for the engine current at load
    torch.set_num_threads(threads)
    module = torch.jit.load(str(path), map_location="cpu")

    def run(feed: dict) -> list:
        with torch.inference_mode():
            out = module(*(torch.from_numpy(v) for v in feed.values()))
        return [o.numpy() for o in (out if isinstance(out, (tuple, list)) else (out,))]

    return run, f"torch {torch.__version__} (TorchScript, {engine or 'default'} engine)"


def tensorrt_runner(path: Path, feed: dict) -> tuple[Callable[[dict], list], str]:
    """Build a strongly typed engine from the precision-explicit ONNX (TensorRT 10 API) and run it with
    cuda-python's cudart; ImportError or RuntimeError when this device cannot (the caller falls back)."""
    import tensorrt as trt
    from cuda.bindings import runtime as cudart

    def ok(result: Any) -> Any:
        err, *rest = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            raise RuntimeError(f"CUDA error {err}")
        return rest[0] if len(rest) == 1 else rest

    if ok(cudart.cudaGetDeviceCount()) < 1:
        raise RuntimeError("no CUDA device")
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    network = builder.create_network(0 if flag is None else 1 << int(flag))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(path)):
        raise RuntimeError("; ".join(str(parser.get_error(i)) for i in range(parser.num_errors)))
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    for name, arr in feed.items():
        profile.set_shape(name, arr.shape, arr.shape, arr.shape)
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError("TensorRT could not build the engine")
    engine = trt.Runtime(logger).deserialize_cuda_engine(plan)
    context = engine.create_execution_context()
    stream = ok(cudart.cudaStreamCreate())
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    outs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
    H2D, D2H = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost

    def run(feed: dict) -> list:
        held, results = [], []
        for name, arr in feed.items():
            arr = np.ascontiguousarray(arr, dtype=trt.nptype(engine.get_tensor_dtype(name)))
            ptr = ok(cudart.cudaMalloc(arr.nbytes))
            held.append(ptr)
            ok(cudart.cudaMemcpy(ptr, arr.ctypes.data, arr.nbytes, H2D))
            context.set_input_shape(name, arr.shape)
            context.set_tensor_address(name, ptr)
        for name in outs:
            host = np.empty(tuple(context.get_tensor_shape(name)), dtype=trt.nptype(engine.get_tensor_dtype(name)))
            ptr = ok(cudart.cudaMalloc(max(host.nbytes, 1)))
            held.append(ptr)
            context.set_tensor_address(name, ptr)
            results.append((host, ptr))
        if not context.execute_async_v3(stream):
            raise RuntimeError("TensorRT execution failed")
        ok(cudart.cudaStreamSynchronize(stream))
        for host, ptr in results:
            ok(cudart.cudaMemcpy(host.ctypes.data, ptr, host.nbytes, D2H))
        for ptr in held:
            ok(cudart.cudaFree(ptr))
        return [h for h, _ in results]

    return run, f"TensorRT {trt.__version__} engine built on this device"


def load_runner(root: Path, meta: dict[str, Any], threads: int, feed: dict) -> tuple[Callable[[dict], list], str, str]:
    """(run, runtime description, note) for the bundle's artifact on this device."""
    rt = meta["runtime"]
    artifact = root / rt["artifact"]
    if rt["name"] == "torch":
        return (*torch_runner(artifact, threads, rt.get("engine", "")), "")
    if rt["name"] == "tensorrt":
        try:
            return (*tensorrt_runner(artifact, feed), "")
        except (ImportError, RuntimeError) as exc:
            run, desc = onnx_runner(artifact, threads, optimize=False)
            return run, desc, f"TensorRT engine not built here ({type(exc).__name__}: {str(exc)[:160]}): verified on ONNX Runtime CPU instead"
    return (*onnx_runner(artifact, threads), "")


# ------------------------------------------------------------------------------------------- compare


def _cosines(ref: Any, out: Any) -> Any:
    r, o = ref.reshape(ref.shape[0], -1).astype(np.float64), out.reshape(out.shape[0], -1).astype(np.float64)
    nr, no = np.linalg.norm(r, axis=1), np.linalg.norm(o, axis=1)
    both_zero = (nr == 0) & (no == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.clip(np.where(both_zero, 1.0, np.sum(r * o, axis=1) / np.maximum(nr * no, 1e-300)), -1.0, 1.0)


def compare(expected: dict[str, Any], got: dict[str, Any], classification: bool) -> dict[str, Any]:
    """Per output: mean and worst-sample cosine, max abs error; top-1 agreement on the first output."""
    result: dict[str, Any] = {"outputs": {}}
    for name, ref in expected.items():
        out = got[name]
        if ref.shape != out.shape:
            raise BundleError(f"output '{name}' has shape {out.shape} here, {ref.shape} in the bundle")
        cos = _cosines(ref, out)
        err = np.abs(out.astype(np.float64) - ref.astype(np.float64))
        result["outputs"][name] = {"cosine": float(np.mean(cos)), "min_cosine": float(np.min(cos)),
                                   "max_abs_error": float(np.max(err)) if err.size else 0.0}
    if classification:
        first = next(iter(expected))
        result["top1_agreement"] = float(np.mean(np.argmax(expected[first], -1) == np.argmax(got[first], -1)))
    return result


def judge(vs_ref: dict[str, Any], tol: dict[str, Any]) -> list[str]:
    """The failures of ``vs_ref`` against the tolerances, each naming the output and the numbers."""
    failures = []
    for name, m in vs_ref["outputs"].items():
        if tol.get("min_cosine") is not None and m["cosine"] < tol["min_cosine"]:
            failures.append(f"{name}: cosine {m['cosine']:.6f} < {tol['min_cosine']:.6f} required")
        bound = (tol.get("max_abs_error") or {}).get(name)
        if bound is not None and m["max_abs_error"] > bound:
            failures.append(f"{name}: max abs error {m['max_abs_error']:.6g} > {bound:.6g} allowed")
    if tol.get("min_top1_agreement") is not None and vs_ref.get("top1_agreement") is not None \
            and vs_ref["top1_agreement"] < tol["min_top1_agreement"]:
        failures.append(f"top-1 agreement {vs_ref['top1_agreement']:.4f} < {tol['min_top1_agreement']:.4f} required")
    return failures


def latency(run: Callable[[dict], list], feed: dict, warmup: int, runs: int) -> dict[str, Any]:
    for _ in range(warmup):
        run(feed)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run(feed)
        times.append(time.perf_counter() - start)
    ms = np.asarray(times) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
            "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(np.mean(ms)), "min_ms": float(np.min(ms)),
            "runs": runs, "warmup": warmup, "batch": int(next(iter(feed.values())).shape[0])}


# ----------------------------------------------------------------------------------------------- main


def strict(obj: Any) -> Any:
    """Plain JSON data: non-finite floats become null (strict JSON has no NaN/Infinity)."""
    if isinstance(obj, float):
        return obj if obj == obj and obj not in (float("inf"), float("-inf")) else None
    if isinstance(obj, dict):
        return {str(k): strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v) for v in obj]
    return obj


def _load_npz(root: Path, rel: str) -> dict[str, Any]:
    with np.load(root / rel, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def verify(root: Path, runs: int | None, warmup: int | None, threads: int | None) -> dict[str, Any]:
    """Check, preflight, run and compare the bundle at ``root``; the device report (BundleError: exit 2)."""
    meta = read_bundle(root)
    files = check_files(root, meta)
    if np is None:
        raise _missing(meta["runtime"].get("name", "onnxruntime"), ImportError("No module named 'numpy'"))
    settings = meta.get("runtime_settings", {})
    threads = threads or settings.get("threads", 1)
    runs = runs if runs is not None else min(int(settings.get("runs", 100)), 100)
    warmup = warmup if warmup is not None else min(int(settings.get("warmup", 10)), 10)
    device = detect_device()
    notes = predict(device, meta)
    golden = meta["golden"]
    inputs = _load_npz(root, golden["inputs"])
    names = [s["name"] for s in meta["inputs"]]
    count = inputs[names[0]].shape[0]
    feeds = [{n: np.ascontiguousarray(inputs[n][i], dtype=s["dtype"]) for n, s in zip(names, meta["inputs"])} for i in range(count)]
    try:
        run, runtime, note = load_runner(root, meta, threads, feeds[0])
        outs = [run(f) for f in feeds]
    except BundleError:
        raise
    except Exception as exc:  # the runtime is here but cannot load or run this artifact on this device
        raise BundleError(f"{meta['runtime']['name']} cannot run {meta['runtime']['artifact']} here: "
                          f"{type(exc).__name__}: {str(exc)[:300]}") from None
    got = {name: np.stack([o[j] for o in outs]) for j, name in enumerate(meta["outputs"])}
    classification = meta.get("task") == "classification"
    vs_ref = compare(_load_npz(root, golden["expected_reference"]), got, classification)
    vs_host = compare(_load_npz(root, golden["expected_host"]), got, classification)
    failures = judge(vs_ref, meta["tolerances"])
    return strict({
        "format": FORMAT, "kind": "edgekit-device-report", "target": meta["target"],
        "bundle": {"artifact_files": {k: v["sha256"] for k, v in meta["files"].items() if k in meta["runtime"].get("files", [])},
                   "bundle_json_sha256": sha256_file(root / BUNDLE_JSON), "files_checked": files, "samples": count},
        "device": device, "preflight": notes, "runtime": {"description": runtime, "threads": threads, "note": note},
        "vs_reference": vs_ref, "vs_build_host": vs_host, "tolerances": meta["tolerances"],
        "latency": {**latency(run, feeds[0], warmup, runs), "threads": threads,
                    "meaningful": not device["emulated"]},
        "host": meta.get("host", {}), "failures": failures, "verdict": "fail" if failures else "pass",
        "exit_code": 1 if failures else 0,
    })


def render(report: dict[str, Any]) -> str:
    """The one verdict table."""
    d, lat, tol = report["device"], report["latency"], report["tolerances"]
    rows = [("check", "measured", "bound", "result"), ("sha256", f"{report['bundle']['files_checked']} files match", "", "ok")]
    for name, m in report["vs_reference"]["outputs"].items():
        bound = (tol.get("max_abs_error") or {}).get(name)
        rows.append((f"{name} cosine vs FP32", f"{m['cosine']:.6f} (worst {m['min_cosine']:.6f})",
                     f">= {tol['min_cosine']:.6f}" if tol.get("min_cosine") is not None else "",
                     "FAIL" if tol.get("min_cosine") is not None and m["cosine"] < tol["min_cosine"] else "ok"))
        rows.append((f"{name} max abs error", f"{m['max_abs_error']:.6g}", f"<= {bound:.6g}" if bound is not None else "",
                     "FAIL" if bound is not None and m["max_abs_error"] > bound else "ok"))
    agree, want = report["vs_reference"].get("top1_agreement"), tol.get("min_top1_agreement")
    if agree is not None:
        rows.append(("top-1 agreement", f"{agree:.4f}", f">= {want:.4f}" if want is not None else "",
                     "FAIL" if want is not None and agree < want else "ok"))
    for name, m in report["vs_build_host"]["outputs"].items():
        rows.append((f"{name} vs build host", f"max abs {m['max_abs_error']:.3g}, cosine {m['cosine']:.6f}", "", "info"))
    rows.append(("latency", f"p50 {lat['p50_ms']:.3f} / p90 {lat['p90_ms']:.3f} / p99 {lat['p99_ms']:.3f} ms",
                 f"{lat['threads']} threads, {lat['warmup']} warm-up, {lat['runs']} runs",
                 "info" if lat["meaningful"] else "emulated"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    table = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    table.insert(1, "  ".join("-" * w for w in widths))
    head = [f"edgekit verify: {report['target']} ({report['bundle']['samples']} golden samples)",
            f"device: {d['cpu']} ({d['machine']}, {d['system']}{', ' + d['board'] if d.get('board') else ''}); "
            f"INT8 features: {', '.join(d['features']) or 'none found'}" + (f"; GPU {d['gpu']}" if d.get("gpu") else ""),
            f"runtime: {report['runtime']['description']}"]
    head += [f"note: {report['runtime']['note']}"] if report["runtime"]["note"] else []
    head += [f"preflight: {n}" for n in report["preflight"]]
    verdict = ("verdict: PASS (every output within the bundle's tolerances)" if not report["failures"] else
               "verdict: FAIL: " + "; ".join(report["failures"]))
    return "\n".join(head + [""] + table + ["", verdict])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="verify.py", description=__doc__.split("\n\n")[0])
    p.add_argument("bundle", nargs="?", help="the bundle folder or .tar.gz (default: this file's folder)")
    p.add_argument("--runs", type=int, help="timed runs (default: the profile's, at most 100)")
    p.add_argument("--warmup", type=int, help="untimed warm-up runs (default: the profile's, at most 10)")
    p.add_argument("--threads", type=int, help="intra-op threads (default: the profile's)")
    p.add_argument("--json", type=Path, metavar="OUT", help=f"write the report here (default: BUNDLE/{REPORT})")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="edgekit-bundle-") as scratch:
        try:
            root = open_bundle(args.bundle, Path(scratch))
            report = verify(root, args.runs, args.warmup, args.threads)
        except BundleError as exc:
            print(f"verify.py: error: {exc}", file=sys.stderr)
            return 2
        out = args.json or (root if Path(scratch) not in root.parents and os.access(root, os.W_OK) else Path.cwd()) / REPORT
        tmp = out.with_name(f".{out.name}.tmp")
        try:
            tmp.write_text(json.dumps(report, indent=2, sort_keys=True, allow_nan=False) + "\n", encoding="utf-8")
            os.replace(tmp, out)
        except OSError as exc:
            print(f"verify.py: error: cannot write {out}: {exc.strerror}; pass --json PATH in a writable folder", file=sys.stderr)
            return 2
    print(render(report))
    print(f"report: {out}")
    return report["exit_code"]


if __name__ == "__main__":
    sys.exit(main())
