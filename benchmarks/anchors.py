"""Issue 14's anchors: other tools' static INT8 on the same ONNX files and data as benchmarks/recover_bench.py,
measured with edgekit's recovered ort-int8 in one run on ONNX Runtime CPU (2 threads, the same feeds).

Peers, each with the recipe its documentation recommends for the model kind:
- NNCF ``nncf.quantize`` on the ONNX model: ``ModelType.TRANSFORMER`` for MiniLM; its defaults (performance
  preset, fast bias correction) for the CNNs.
- ONNX Runtime ``quantize_static``: matrix products only for MiniLM (MatMul and Gemm: the reference holds the
  linear layers as Gemm; uint8 activations, int8 weights, QDQ); its defaults (QDQ, MinMax) for the CNNs.
- NVIDIA ModelOpt ``modelopt.onnx.quantization.quantize``: int8, entropy calibration on the CPU provider, the rest
  of the graph kept FP32 (its default FP16 is for TensorRT; ONNX Runtime CPU has no fast FP16 kernels).
- AIMET ``aimet_onnx``: QuantizationSimModel, min-max encodings for MiniLM, cross-layer equalization then TF-enhanced
  encodings for the CNNs, exported as a QDQ model.

Two steps, two environments (``make bench-anchors`` runs both): the peers are installed into their own venv
(benchmarks/.venv-anchors, benchmarks/anchors-requirements.txt), never into the project's.

    .venv/bin/python benchmarks/recover_bench.py --models minilm --budget 300 --gates 0.9973,1.19 \
        --result recover_minilm_nncf.json                                  # MiniLM aimed at NNCF's accuracy
    .venv/bin/python benchmarks/anchors.py prepare                         # project venv: ONNX files, torch outputs
    benchmarks/.venv-anchors/bin/python benchmarks/anchors.py run          # peers' venv: quantize, measure
    .venv/bin/python benchmarks/anchors.py markdown                        # BENCHMARKS.md's section from the result

``prepare`` reuses benchmarks/work/recover_<model>/ (recover_bench.py's build: the reference ONNX every tool starts
from, the ort-fp32 artifact every speed-up is measured against, edgekit's recovered ort-int8) and builds it when it
is missing; it writes the torch FP32 outputs on the held-out data. ``run`` quantizes with each peer in a child
process (``anchors.py quantize``), measures and writes benchmarks/results/anchors.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

HERE = Path(__file__).resolve().parent


def _sibling(name: str) -> Any:
    """A module of benchmarks/ by path: benchmarks/ stays off sys.path in the peers' venv, so none of its files
    (models.py, report.py, ...) can shadow a package a peer imports (benchmarks/subproc.py says the same)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"_anchors_{name}", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


timing = _sibling("timing")  # numpy only: importable in the peers' venv

WORK = HERE / "work"
OUT = WORK / "anchors"
RESULTS = HERE / "results"
MODELS = ("minilm", "mobilenetv2_like", "resnet18_like", "vit")
PEERS = ("nncf", "ort-quantize-static", "modelopt", "aimet")
THREADS = 2
DATA = {"minilm": ("minilm_calib.npz", "minilm_val.npz"), "mobilenetv2_like": ("cnn_calib.npz", "cnn_val.npz"),
        "resnet18_like": ("cnn_calib.npz", "cnn_val.npz")}
VIT = OUT / "vit"  # the tests' small ViT (tests/small_models.py, its seeded data): net.py, weights, data
PEER_MODULES = {"nncf": "nncf", "ort-quantize-static": "onnxruntime", "modelopt": "modelopt", "aimet": "aimet_onnx"}
PACKAGES = ("onnxruntime", "onnx", "numpy", "torch", "nncf", "nvidia-modelopt", "aimet-onnx")


def build_dir(name: str) -> Path:
    return WORK / f"recover_{name}"


def data_paths(name: str) -> tuple[Path, Path]:
    """(calibration, held-out) .npz files of a model."""
    if name == "vit":
        return VIT / "calib.npz", VIT / "val.npz"
    return WORK / "data" / DATA[name][0], WORK / "data" / DATA[name][1]


# ----------------------------------------------------------------------------------------- prepare (project venv)


def prepare(names: list[str], budget: float) -> None:
    """recover_bench.py's build of every model (kept when it is there) and the torch outputs on the held-out data."""
    sys.path.insert(0, str(HERE))  # the project's venv: recover_bench.py and models.py import their siblings
    import recover_bench

    recover_bench.prepare([n for n in names if n != "vit"])
    if "vit" in names:
        prepare_vit()
    for name in names:
        if not (build_dir(name) / "ort-int8" / "model.onnx").is_file():
            print(f"anchors: building {build_dir(name)} with recovery (budget {budget:.0f} s)", flush=True)
            if name == "vit":
                build_vit(budget)
            else:
                recover_bench.bench_model(name, budget, build_dir(name))
        target = OUT / name / "torch_val.npz"
        target.parent.mkdir(parents=True, exist_ok=True)
        np.savez(target, output=torch_outputs(name, load(data_paths(name)[1])))
        print(f"anchors: wrote {target}", flush=True)


def prepare_vit() -> None:
    """The ViT of tests/test_recover.py, its seeded weights and its data, as the test lays them out
    (tests/small_models.py write_sandbox: 96 calibration and 64 held-out standard-normal images, seed 0)."""
    import importlib.util

    VIT.mkdir(parents=True, exist_ok=True)
    spec = importlib.util.spec_from_file_location("_anchors_small_models", HERE.parent / "tests" / "small_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.write_sandbox(VIT)


def vit_module() -> Any:
    """The ViT from VIT's net.py with its saved weights."""
    import importlib.util

    from safetensors.torch import load_file

    spec = importlib.util.spec_from_file_location("_anchors_vit_net", VIT / "net.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    module = mod.vit()
    module.load_state_dict(load_file(str(VIT / "vit.safetensors")), strict=True)
    return module.eval()


def build_vit(budget: float) -> None:
    """The test's build (ort-fp32, ort-int8 with recovery, the default gates) into benchmarks/work/recover_vit."""
    from edgekit.config import load_config
    from edgekit.console import Console
    from edgekit.pipeline import BuildOptions, build

    cfg = {"model": {"source": f"{VIT / 'net.py'}:vit", "weights": str(VIT / "vit.safetensors"), "outputs": ["logits"],
                     "inputs": [{"name": "x", "shape": [1, 3, 32, 32]}]},
           "calibration": {"data": str(VIT / "calib.npz")}, "validation": {"data": str(VIT / "val.npz")},
           "targets": {"use": ["ort-fp32", "ort-int8"], "ort-int8": {"recover": {"budget_s": budget}}}}
    build(load_config(cfg), BuildOptions(out=build_dir("vit")), Console(progress=True))


def torch_outputs(name: str, val: dict[str, np.ndarray]) -> np.ndarray:
    """The torch FP32 model's outputs, one sample at a time (the ONNX files take batch 1)."""
    import torch

    import models

    module = models.minilm() if name == "minilm" else vit_module() if name == "vit" else cnn_module(name)
    rows = []
    with torch.inference_mode():
        for feed in samples(val):
            out = module(*(torch.from_numpy(feed[k]) for k in val))
            rows.append(out.numpy().reshape(1, -1))
    return np.concatenate(rows)


def cnn_module(name: str) -> Any:
    from safetensors.torch import load_file

    import models

    module = models.CNNS[name]()
    module.load_state_dict(load_file(str(WORK / f"{name}.safetensors")), strict=True)
    return module.eval()


# ------------------------------------------------------------------------------------------ run (peers' venv)


def load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def samples(data: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """Batch-1 feeds, in the data file's order."""
    n = len(next(iter(data.values())))
    return [{k: v[i : i + 1] for k, v in data.items()} for i in range(n)]


@dataclass
class Case:
    """One model: the files every tool starts from and the data every artifact is judged on."""

    name: str
    reference: Path  # what every peer quantizes (edgekit's reference/model.onnx)
    fp32: Path  # edgekit's ort-fp32 artifact: the denominator of every speed-up
    edgekit: Path  # edgekit's recovered ort-int8 artifact
    calib: dict[str, np.ndarray]
    val: dict[str, np.ndarray]
    torch_out: np.ndarray

    @property
    def transformer(self) -> bool:
        return self.name in ("minilm", "vit")


def load_case(name: str) -> Case:
    d = build_dir(name)
    calib, val = (load(p) for p in data_paths(name))
    return Case(name, d / "reference" / "model.onnx", d / "ort-fp32" / "model.onnx", d / "ort-int8" / "model.onnx",
                calib, val, load(OUT / name / "torch_val.npz")["output"])


# The peers: each takes the Case and the output path, writes a QDQ ONNX model there and returns its recipe text.


def quantize_nncf(case: Case, out: Path) -> str:
    import nncf
    import onnx

    model = onnx.load(str(case.reference))
    feeds = samples(case.calib)
    dataset = nncf.Dataset(feeds)
    if case.name == "vit":  # issue 14's best NNCF recipe for the small ViT: the overflow fix on every layer
        advanced = nncf.AdvancedQuantizationParameters(overflow_fix=nncf.OverflowFix.ENABLE)
        q = nncf.quantize(model, dataset, subset_size=len(feeds), model_type=nncf.ModelType.TRANSFORMER,
                          advanced_parameters=advanced)
        recipe = "nncf.quantize(model_type=TRANSFORMER, overflow_fix=ENABLE), default preset (mixed), all calibration samples"
    elif case.transformer:
        q = nncf.quantize(model, dataset, subset_size=len(feeds), model_type=nncf.ModelType.TRANSFORMER)
        recipe = "nncf.quantize(model_type=TRANSFORMER), default preset (mixed), all calibration samples"
    else:
        q = nncf.quantize(model, dataset, subset_size=len(feeds), fast_bias_correction=True)
        recipe = "nncf.quantize defaults (performance preset, fast bias correction), all calibration samples"
    onnx.save(q, str(out))
    return recipe


class Reader:
    """ONNX Runtime's CalibrationDataReader over batch-1 feeds (a fresh iterator per rewind)."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self.feeds, self._it = feeds, iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self.feeds)


def quantize_ort(case: Case, out: Path) -> str:
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    class _Reader(Reader, CalibrationDataReader):
        pass

    reader = _Reader(samples(case.calib))
    if case.transformer:
        # the reference ONNX holds MiniLM's linear layers as Gemm (2-D, after a Reshape), its attention products as
        # MatMul: "MatMuls only" means both, and no Add, LayerNorm, Softmax or GELU. Calibration: MinMax for MiniLM,
        # percentile for the small ViT (issue 14's best ORT recipe for each)
        method = CalibrationMethod.Percentile if case.name == "vit" else CalibrationMethod.MinMax
        quantize_static(str(case.reference), str(out), reader, quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=["MatMul", "Gemm"], activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, per_channel=False, calibrate_method=method)
        return (f"quantize_static QDQ, MatMul and Gemm only (the linear layers), uint8 activations / int8 weights, "
                f"{method.name}")
    quantize_static(str(case.reference), str(out), reader)
    return "quantize_static defaults (QDQ, int8 activations and weights, per-tensor, MinMax)"


def quantize_modelopt(case: Case, out: Path) -> str:
    from modelopt.onnx.quantization import quantize

    quantize(str(case.reference), quantize_mode="int8", calibration_data=case.calib, calibration_method="entropy",
             calibration_eps=["cpu"], high_precision_dtype="fp32", mha_accumulation_dtype="fp32", output_path=str(out),
             log_level="WARNING")
    return "modelopt.onnx.quantization.quantize int8, entropy calibration on CPU, high_precision_dtype fp32"


def quantize_aimet(case: Case, out: Path) -> str:
    import onnx
    from aimet_onnx.quantsim import QuantizationSimModel

    model = onnx.load(str(case.reference))
    # MiniLM: min-max encodings (TF-enhanced ones collapse it: mean cosine about 0.05 in a probe on 8 held-out
    # sentences, min-max about 0.36); CNNs: AIMET's documented PTQ recipe, CLE then TF-enhanced encodings
    scheme = "min_max" if case.transformer else "tf_enhanced"
    recipe = f"QuantizationSimModel int8 weights and activations (default config), {scheme} encodings"
    if not case.transformer:
        from aimet_onnx.cross_layer_equalization import equalize_model

        equalize_model(model)
        recipe = "cross-layer equalization (BatchNorm folding, ReLU6 -> ReLU), then " + recipe
    sim = QuantizationSimModel(model, param_type="int8", activation_type="int8", quant_scheme=scheme,
                               providers=["CPUExecutionProvider"])
    sim.compute_encodings(samples(case.calib))
    onnx.save(sim.to_onnx_qdq(), str(out))  # activations exported unsigned (its default)
    return recipe + "; exported with to_onnx_qdq() (uint8 activations)"


QUANTIZERS: dict[str, Callable[[Case, Path], str]] = {
    "nncf": quantize_nncf, "ort-quantize-static": quantize_ort, "modelopt": quantize_modelopt, "aimet": quantize_aimet}


@dataclass
class Artifact:
    """One ONNX file to measure: edgekit's, or a peer's with how it was made (or why there is none)."""

    label: str
    path: Path | None
    recipe: str = ""
    quantize_s: float | None = None
    error: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)


def make_peer(case: Case, peer: str) -> Artifact:
    """Quantize with one peer in a child process (ModelOpt patches ONNX Runtime's calibrators for the whole process,
    which breaks a later quantize_static); a peer that is not installed or fails is recorded with its error."""
    out, log, meta = (OUT / case.name / f"{peer}{ext}" for ext in (".onnx", ".log", ".json"))
    for path in (out, meta):
        path.unlink(missing_ok=True)
    start = time.monotonic()
    with open(log, "w", encoding="utf-8") as fh:
        code = subprocess.run([sys.executable, str(Path(__file__).resolve()), "quantize", "--models", case.name,
                               "--peers", peer], stdout=fh, stderr=subprocess.STDOUT, check=False).returncode
    seconds = round(time.monotonic() - start, 1)
    if code != 0 or not meta.is_file():
        lines = [ln for ln in log.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
        error = next((ln for ln in reversed(lines) if "Error" in ln or "error" in ln), lines[-1] if lines else "")
        return Artifact(peer, None, quantize_s=seconds, error=f"exit {code}: {error.strip()}"[:500],
                        metrics={"log": str(log.relative_to(HERE.parent))})
    return Artifact(peer, out, json.loads(meta.read_text())["recipe"], seconds)


def quantize_child(name: str, peer: str) -> int:
    """`anchors.py quantize`: one peer on one model, the recipe written beside the ONNX file (make_peer's child)."""
    try:
        __import__(PEER_MODULES[peer])
    except Exception as exc:  # not installed here: anchors-requirements.txt says why
        print(f"not importable: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 3
    case = load_case(name)
    recipe = QUANTIZERS[peer](case, OUT / name / f"{peer}.onnx")
    (OUT / name / f"{peer}.json").write_text(json.dumps({"recipe": recipe}))
    return 0


def session(path: Path) -> Any:
    """ONNX Runtime CPU, THREADS intra-op threads, full graph optimization, no spin-waiting (the sessions take turns)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = THREADS, 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-sample cosine, as edgekit's validator computes it (edgekit/validate/metrics.py: two zero rows count as 1)."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    dot = np.sum(a * b, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where((na == 0) & (nb == 0), 1.0, dot / np.maximum(na * nb, 1e-300))
    return np.clip(cos, -1.0, 1.0)


def outputs(sess: Any, feeds: list[dict[str, np.ndarray]]) -> np.ndarray:
    name = sess.get_outputs()[0].name
    return np.concatenate([sess.run([name], f)[0].reshape(1, -1) for f in feeds])


def quantized_nodes(path: Path) -> dict[str, int]:
    """How much of the graph is INT8: QuantizeLinear / DequantizeLinear / QLinear* / *Integer node counts."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    ops = [n.op_type for n in model.graph.node]
    return {"nodes": len(ops), "QuantizeLinear": ops.count("QuantizeLinear"), "DequantizeLinear": ops.count("DequantizeLinear"),
            "int8_ops": sum(1 for o in ops if o.startswith("QLinear") or o.endswith("Integer"))}


def measure(case: Case, artifacts: list[Artifact], rounds: int, quiet_wait_s: float) -> None:
    """Cosine vs torch (and vs ort-fp32) on every held-out sample, then p50 of all artifacts interleaved on sample 0."""
    feeds = samples(case.val)
    sessions: dict[str, Any] = {}
    fp32 = next(a for a in artifacts if a.label == "ort-fp32")
    for art in artifacts:
        if art.path is None:
            continue
        try:
            sessions[art.label] = session(art.path)
        except Exception as exc:
            art.error = f"ONNX Runtime cannot load it: {type(exc).__name__}: {str(exc)[:300]}"
    ref = outputs(sessions[fp32.label], feeds)
    for art in artifacts:
        if art.label not in sessions:
            continue
        out = outputs(sessions[art.label], feeds)
        if not np.all(np.isfinite(out)):  # strict JSON has no NaN: say so instead
            art.error = f"{int(np.sum(~np.isfinite(out)))} non-finite output values on the held-out data"
            continue
        art.metrics.update({
            "cosine_vs_torch": float(np.mean(cosine_rows(case.torch_out, out))),
            "min_cosine_vs_torch": float(np.min(cosine_rows(case.torch_out, out))),
            "cosine_vs_ort_fp32": float(np.mean(cosine_rows(ref, out))),
            "graph": quantized_nodes(art.path),
        })
    feed = feeds[0]
    calls = {label: (lambda s=s: s.run(None, feed)) for label, s in sessions.items()}
    per_round = calls_per_round(calls[fp32.label])
    waited = timing.wait_for_quiet(quiet_wait_s)
    before = timing.host_sample()
    times = timing.interleaved(calls, warmup=5, rounds=rounds, per_round=per_round)
    busy = timing.cpu_busy_other(before, timing.host_sample())
    base = timing.percentiles(times[fp32.label])["p50_ms"]
    for art in artifacts:
        if art.label in times:
            stats = timing.percentiles(times[art.label])
            art.metrics.update({"latency": stats, "speedup_vs_ort_fp32": base / stats["p50_ms"]})
    for art in artifacts:
        art.metrics.update({"timing_other_cpus_busy": busy, "timing_rounds": rounds, "timing_calls_per_round": per_round,
                            "timing_waited_for_quiet": list(waited) if waited else None})


def calls_per_round(call: Callable[[], Any], slice_s: float = 0.02) -> int:
    """Timed calls per path and round: 2, or enough for about ``slice_s`` of FP32 work, so that a sub-millisecond
    model (the ViT) is not timed one call between two other sessions' calls."""
    for _ in range(3):
        call()
    start = time.perf_counter()
    for _ in range(5):
        call()
    return max(2, int(slice_s / max((time.perf_counter() - start) / 5, 1e-6)))


def _gates_text(gates: dict[str, float] | None) -> str:
    """The gates the build searched for (recover_bench.py sets them per model: BARS, or --gates)."""
    if not gates:
        return ""
    return ", built for " + " and ".join(f"{'cosine' if g == 'min_cosine' else 'speed-up'} >= {b:g}{'x' if g == 'min_speedup' else ''}"
                                         for g, b in sorted(gates.items()))


def build_verdict(name: str) -> dict[str, Any]:
    """What the build that wrote edgekit's artifact measured itself (its manifest.json): another run's numbers."""
    manifest = json.loads((build_dir(name) / "manifest.json").read_text())
    t = manifest["targets"]["ort-int8"]
    return {"manifest": str((build_dir(name) / "manifest.json").relative_to(HERE.parent)), "status": t["status"],
            "cosine_vs_torch": t["metrics"]["vs_torch"]["worst"]["cosine"],
            "speedup_vs_ort_fp32": t["latency"].get("speedup_vs_ort_fp32"),
            "gates": {g["gate"]: g["bound"] for g in t.get("gates", []) if g["gate"] in ("min_cosine", "min_speedup")}}


def bench_case(name: str, peers: list[str], rounds: int, quiet_wait_s: float) -> list[Artifact]:
    case = load_case(name)
    (OUT / name).mkdir(parents=True, exist_ok=True)
    artifacts = [Artifact("ort-fp32", case.fp32, "edgekit's ort-fp32 artifact (the speed-up denominator)"),
                 Artifact("edgekit", case.edgekit, "edgekit static ort-int8 with recovery (recover_bench.py's build)",
                          metrics={"its_build": build_verdict(name)})]
    for peer in peers:
        print(f"anchors: {name}: quantizing with {peer}", flush=True)
        artifacts.append(make_peer(case, peer))
        if artifacts[-1].error:
            print(f"anchors: {name}: {peer} failed: {artifacts[-1].error}", flush=True)
    print(f"anchors: {name}: measuring {sum(a.path is not None for a in artifacts)} artifacts", flush=True)
    measure(case, artifacts, rounds, quiet_wait_s)
    return artifacts


def versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    found: dict[str, str | None] = {}
    for pkg in PACKAGES:
        try:
            found[pkg] = version(pkg)
        except PackageNotFoundError:
            found[pkg] = None
    return found


def host() -> dict[str, Any]:
    """CPU model and the INT8-relevant ISA flags (as edgekit.hostinfo.cpu reports them), load, Python."""
    model, flags = platform.machine(), set()
    with open("/proc/cpuinfo", encoding="utf-8") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "amx_bf16")
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True, check=False)
    return {"cpu": model, "cores": os.cpu_count(), "isa": [f for f in wanted if f in flags], "python": platform.python_version(),
            "hostname": platform.node(), "loadavg_start": list(os.getloadavg()), "commit": head.stdout.strip() or None}


def row(model: str, art: Artifact) -> dict[str, Any]:
    m = {k: v for k, v in art.metrics.items()}
    return {"model": model, "tool": art.label, "recipe": art.recipe, "quantize_s": art.quantize_s, "error": art.error,
            "file": str(art.path.relative_to(HERE.parent)) if art.path else None, **m}


def table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'model':<18} {'tool':<21} {'cos vs torch':>12} {'cos vs fp32':>12} {'p50 ms':>8} {'speed-up':>8}  note"]
    for r in rows:
        if r.get("cosine_vs_torch") is None:
            lines.append(f"{r['model']:<18} {r['tool']:<21} {'-':>12} {'-':>12} {'-':>8} {'-':>8}  {r['error'] or ''}"[:200])
            continue
        lines.append(f"{r['model']:<18} {r['tool']:<21} {r['cosine_vs_torch']:>12.5f} {r['cosine_vs_ort_fp32']:>12.5f} "
                     f"{r['latency']['p50_ms']:>8.2f} {r['speedup_vs_ort_fp32']:>7.2f}x")
    return "\n".join(lines)


def run(names: list[str], peers: list[str], rounds: int, quiet_wait_s: float, result: str, argv: list[str]) -> int:
    meta = host()
    rows: list[dict[str, Any]] = []
    for name in names:
        missing = [p for p in (build_dir(name) / "reference" / "model.onnx", OUT / name / "torch_val.npz") if not p.is_file()]
        if missing:
            print(f"anchors: {missing[0]} is missing; run `.venv/bin/python benchmarks/anchors.py prepare` first", file=sys.stderr)
            return 2
        rows += [row(name, a) for a in bench_case(name, peers, rounds, quiet_wait_s)]
    meta["loadavg_end"] = list(os.getloadavg())
    doc = {"command": "benchmarks/anchors.py " + " ".join(argv), "host": meta, "versions": versions(), "threads": THREADS,
           "rounds": rounds, "cosine": "mean over held-out samples of the per-sample cosine vs the torch FP32 model "
           "(cosine_vs_torch, as recover_bench.py reports it) and vs edgekit's ort-fp32 ONNX (cosine_vs_ort_fp32)",
           "speedup": "p50 of ort-fp32 / p50 of the artifact, every artifact of a model interleaved in one process",
           "results": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / result).write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n")
    print(table(rows))
    print(f"anchors: wrote {RESULTS / result}; load average {meta['loadavg_start']} -> {meta['loadavg_end']}")
    return 0


LABELS = {"minilm": "MiniLM", "mobilenetv2_like": "MobileNetV2-shaped", "resnet18_like": "ResNet-18-shaped",
          "vit": "small ViT (tests)"}
TOOLS = {"edgekit": "edgekit ort-int8, recovered", "nncf": "NNCF", "ort-quantize-static": "ONNX Runtime quantize_static",
         "modelopt": "NVIDIA ModelOpt", "aimet": "AIMET (aimet-onnx)"}


def _cell(r: dict[str, Any] | None) -> str:
    if r is None:
        return "—"
    if r.get("cosine_vs_torch") is None:
        return "failed (see json)"
    return f"{r['cosine_vs_torch']:.4f} at {r['speedup_vs_ort_fp32']:.2f}x"


def _other_runs() -> dict[str, dict[str, Any]]:
    """edgekit's numbers as recover_bench.py published them (benchmarks/results/recover*.json): other runs."""
    found: dict[str, dict[str, Any]] = {}
    for name in ("recover.json", "recover_minilm.json"):
        path = RESULTS / name
        if path.is_file():
            for r in json.loads(path.read_text())["results"]:
                found[r["model"]] = {**r, "file": name}
    return found


def _bar(model: str, by: dict[tuple[str, str], dict[str, Any]]) -> str:
    """Issue 14's bar for the model: edgekit at least as accurate as the most accurate peer, at edgekit's speed."""
    ours = by.get((model, "edgekit"), {})
    peers = [r for (m, t), r in by.items() if m == model and t not in ("edgekit", "ort-fp32") and r.get("cosine_vs_torch")]
    if not peers or ours.get("cosine_vs_torch") is None:
        return f"- {LABELS.get(model, model)}: no comparison (a tool failed)"
    best = max(peers, key=lambda r: r["cosine_vs_torch"])
    met = ours["cosine_vs_torch"] >= best["cosine_vs_torch"]
    speed = ours["speedup_vs_ort_fp32"] / best["speedup_vs_ort_fp32"]
    return (f"- {LABELS.get(model, model)}: the most accurate peer is {TOOLS[best['tool']]} ({best['cosine_vs_torch']:.4f} at "
            f"{best['speedup_vs_ort_fp32']:.2f}x); edgekit {ours['cosine_vs_torch']:.4f} at {speed:.2f}x that tool's speed: "
            + ("at least as accurate, **met**" if met else "less accurate, **not met**"))


def _reruns() -> list[str]:
    """Runs of some models and peers written beside anchors.json with ``run --models M --peers P --result
    anchors_<name>.json`` (after a change to edgekit, say): each model's artifacts timed in that run, with its bar."""
    lines = []
    for path in sorted(RESULTS.glob("anchors_*.json")):
        doc = json.loads(path.read_text())
        by = {(r["model"], r["tool"]): r for r in doc["results"]}
        host = doc["host"]
        lines += ["", f"Re-run: `{doc['command']}` (benchmarks/results/{path.name}), commit {host.get('commit', '?')}, load "
                  f"average {', '.join(f'{x:.1f}' for x in host['loadavg_start'])} at the start:", ""]
        lines += [f"- {LABELS.get(m, m)} {TOOLS.get(t, t)}: {_cell(r)}" for (m, t), r in by.items() if t != "ort-fp32"]
        lines += [_bar(m, by) for m in dict.fromkeys(m for m, _ in by)]
    return lines


def markdown(doc: dict[str, Any]) -> list[str]:
    """BENCHMARKS.md's anchors section from anchors.json: cosine vs torch and speed-up vs ort-fp32 per tool and model."""
    rows = doc["results"]
    models = list(dict.fromkeys(r["model"] for r in rows))
    by = {(r["model"], r["tool"]): r for r in rows}
    host, v = doc["host"], doc["versions"]
    lines = ["## Anchors: other tools' static INT8 on the same files (issue 14)", "",
             f"From `make bench-anchors` (`{doc['command']}` in benchmarks/.venv-anchors after `anchors.py prepare` in "
             ".venv; benchmarks/results/anchors.json). Every tool starts from the reference ONNX of recover_bench.py's "
             "build (benchmarks/work/recover_<model>/reference/model.onnx) with its calibration data; every artifact "
             f"runs on ONNX Runtime {v.get('onnxruntime')} CPU, {doc['threads']} threads, on the same held-out feeds. "
             "Cell: mean cosine vs the torch FP32 model over the held-out samples, at p50 speed-up over edgekit's "
             "ort-fp32 artifact, all of a model's artifacts timed interleaved in one process. "
             f"Host: {host['cpu']}, {host['cores']} cores, ISA flags {', '.join(host['isa'])}; load average "
             f"{', '.join(f'{x:.1f}' for x in host['loadavg_start'])} at the start, "
             f"{', '.join(f'{x:.1f}' for x in host['loadavg_end'])} at the end (a shared host: ratios, not "
             "milliseconds). Versions: " + ", ".join(f"{k} {x}" for k, x in v.items() if x) + " (ModelOpt's [onnx] "
             "extra spelled out without the onnxruntime-gpu and cupy-cuda12x it pulls: anchors-requirements.txt).", "",
             "| tool | " + " | ".join(LABELS.get(m, m) for m in models) + " |", "|---" * (len(models) + 1) + "|"]
    for tool, label in TOOLS.items():
        lines.append(f"| {label} | " + " | ".join(_cell(by.get((m, tool))) for m in models) + " |")
    other = _other_runs()
    lines.append("| edgekit ort-int8, recovered, as published (**another run**: "
                 + " / ".join(sorted({o["file"] for o in other.values()})) + ") | "
                 + " | ".join(_cell(other.get(m)) for m in models) + " |")
    builds = {m: by[(m, "edgekit")].get("its_build") for m in models if (m, "edgekit") in by}
    lines += ["", "edgekit's row times the ort-int8 artifact of the build in benchmarks/work/recover_<model>/ (written by "
              "recover_bench.py, or by `anchors.py prepare` when missing); that build's own validator said: "
              + "; ".join(f"{LABELS.get(m, m)} {b['cosine_vs_torch']:.4f} at {b['speedup_vs_ort_fp32']:.2f}x ({b['status']}"
                          + _gates_text(b.get("gates")) + ")" for m, b in builds.items() if b) + ".", ""]
    lines += [_bar(m, by) for m in models] + [""]
    lines += ["Recipes (anchors.json has each one's text, its quantization seconds and node counts):", ""]
    recipes = {}
    for r in rows:
        if r["tool"] in TOOLS and r["tool"] != "edgekit" and r.get("recipe"):
            recipes.setdefault(r["tool"], {}).setdefault(r["recipe"], []).append(LABELS.get(r["model"], r["model"]))
    for tool, texts in recipes.items():
        lines.append(f"- {TOOLS[tool]}: " + "; ".join(f"{', '.join(ms)}: {t}" for t, ms in texts.items()))
    failed = [r for r in rows if r.get("error")]
    lines += [f"- failed: {LABELS.get(r['model'], r['model'])} {TOOLS.get(r['tool'], r['tool'])}: {r['error']}" for r in failed]
    lines += _reruns()
    return lines + ["", "Reproduce (the peers go into benchmarks/.venv-anchors from benchmarks/anchors-requirements.txt, "
                    "never into .venv):", "",
                    "    make bench-anchors                                             # all of the below",
                    "    .venv/bin/python benchmarks/recover_bench.py --models minilm --budget 300 --gates 0.9973,1.19 \\",
                    "        --result recover_minilm_nncf.json                          # MiniLM aimed at NNCF's accuracy",
                    "    .venv/bin/python benchmarks/anchors.py prepare                 # ONNX files (builds missing ones), torch outputs",
                    "    benchmarks/.venv-anchors/bin/python benchmarks/anchors.py run  # quantize with each peer, measure",
                    "    .venv/bin/python benchmarks/anchors.py markdown                # this section", ""]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=("prepare", "run", "quantize", "markdown"))
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated, from: " + ", ".join(MODELS))
    parser.add_argument("--peers", default=",".join(PEERS), help="comma-separated, from: " + ", ".join(PEERS))
    parser.add_argument("--budget", type=float, default=180.0, help="prepare: recovery budget_s of a missing build")
    parser.add_argument("--rounds", type=int, default=40, help="run: interleaved timing rounds (2 or more timed calls each)")
    parser.add_argument("--quiet-wait", type=float, default=60.0,
                        help="run: wait up to this many seconds for other processes to leave the CPUs before timing")
    parser.add_argument("--result", default="anchors.json", help="run: file name under benchmarks/results/")
    args = parser.parse_args(argv)
    names, peers = args.models.split(","), args.peers.split(",")
    bad = [n for n in names if n not in MODELS] + [p for p in peers if p not in PEERS]
    if bad:
        print(f"anchors: unknown model or peer {bad[0]!r}", file=sys.stderr)
        return 2
    if args.step == "prepare":
        prepare(names, args.budget)
        return 0
    if args.step == "quantize":
        return quantize_child(names[0], peers[0])
    if args.step == "markdown":  # BENCHMARKS.md's section, from the result file
        print("\n".join(markdown(json.loads((RESULTS / args.result).read_text()))))
        return 0
    return run(names, peers, args.rounds, args.quiet_wait, args.result, argv)


if __name__ == "__main__":
    raise SystemExit(main())
