"""Run a build's ``[[compress]]`` steps in order, and measure every stage in the same run.

Each stage (the uncompressed model, then the model after each step) is exported like the reference, timed on
ONNX Runtime FP32 (interleaved runs, same feed, same threads) and compared with the uncompressed torch model.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgekit.backends.base import Runner
from edgekit.backends.onnx.session import OrtRunner
from edgekit.compress import CompressContext, check_step, run_step, settings_table, spec_of
from edgekit.config import BuildConfig, DataConfig, ExportConfig
from edgekit.console import Progress, Silent
from edgekit.data import open_feed, overlap
from edgekit.errors import ConfigError
from edgekit.export import example_inputs, make_reference
from edgekit.types import FeedSource, SourceModel, TensorSpec
from edgekit.validate.latency import Timed, interleaved
from edgekit.validate.run import TorchRunner, ValidationData, latency_feed, observe, validation_data

__all__ = ["measure_stages", "measurement_data", "needs_train", "onnx_params", "prepare", "run_compress"]

log = logging.getLogger(__name__)

THREADS = 2
"""ORT intra-op threads for every stage's timing (the same as the build's reference timing)."""
WARMUP = 10
RUNS = 100
SYNTHETIC_BATCHES = 8
"""Without [validation] data, the error is measured on this many seeded random batches of the declared shapes."""


def needs_train(cfg: BuildConfig) -> bool:
    return any(spec_of(s).needs_train for s in cfg.compress)


def _check_torch(source: SourceModel) -> None:
    if not source.is_torch:
        raise ConfigError("[[compress]] works on a torch model, but [model] source is an ONNX file; remove [[compress]] "
                          "or give the torch model (file.py:factory) instead")


def prepare(cfg: BuildConfig, source: SourceModel, validation: FeedSource | None = None, progress: Progress | None = None) -> FeedSource | None:
    """Check the steps against the loaded model and open the ``[train]`` data; called before any work starts.

    Returns the training data (checked like every other data section), or None when no step trains.
    """
    progress = progress or Silent()
    _check_torch(source)
    for i, settings in enumerate(cfg.compress):
        check_step(settings, source.module, i)
    if cfg.train is None:
        return None
    if not needs_train(cfg):
        progress.warn("[train] data is only used by distill and qat steps; no [[compress]] step here trains, so it is ignored")
        return None
    train = open_feed(cfg.train, source.inputs, "train")
    if validation is not None:
        shared = overlap(train, validation)
        if shared:
            progress.warn(
                f"{shared} sample(s) appear in both [train] data and [validation] data; the accuracy measured after "
                "training on them is optimistic: hold the validation samples out of the training data"
            )
    return train


def run_compress(
    cfg: BuildConfig,
    source: SourceModel,
    shapes: dict[str, tuple[int, ...]],
    progress: Progress | None = None,
    *,
    train: FeedSource | None = None,
    validation: FeedSource | None = None,
) -> tuple[SourceModel, list[dict[str, Any]]]:
    """Apply ``cfg.compress`` in order to a copy of ``source``; return the compressed model and one record per step.

    ``train`` / ``validation`` are the opened data sections (opened here from ``cfg`` when not given). Each record
    holds the step's settings, the method's own report, its duration, and ``before`` / ``after`` measurements:
    parameters (torch, and in the exported ONNX), reference ONNX bytes, ORT FP32 latency, and error against the
    uncompressed model (cosine, SQNR, top-1 agreement and accuracy when the validation data has labels).
    """
    progress = progress or Silent()
    _check_torch(source)
    if train is None and cfg.train is not None and needs_train(cfg):
        train = prepare(cfg, source, validation, progress)
    if validation is None and cfg.validation is not None:
        validation = open_feed(cfg.validation, source.inputs, "validation")
    teacher = copy.deepcopy(source.module).eval()
    feed = example_inputs(source.inputs, shapes)
    ctx = CompressContext(
        example_inputs=tuple(torch.from_numpy(feed[s.name]) for s in source.inputs),
        train=train,
        input_names=tuple(s.name for s in source.inputs),
        teacher=teacher,
        progress=progress.advance,
    )
    models: list[nn.Module] = [source.module]
    steps: list[dict[str, Any]] = []
    total = len(cfg.compress)
    for i, settings in enumerate(cfg.compress, 1):
        spec = spec_of(settings)
        progress.step(f"compress {i}/{total}: {spec.name} ({spec.summary})")
        start = time.perf_counter()
        model, details = run_step(models[-1], settings, ctx)
        seconds = round(time.perf_counter() - start, 3)
        log.info("compress step %d (%s) took %.1f s", i, spec.name, seconds)
        models.append(model)
        steps.append({"step": i, "method": spec.name, "settings": settings_table(settings), "details": details, "seconds": seconds})
    data = measurement_data(validation, cfg.validation, source.inputs, shapes)
    stages, measured_on = measure_stages(models, source, teacher, shapes, cfg.export, data, cfg.model.task, progress)
    for k, step in enumerate(steps, 1):
        before, after = stages[k - 1], stages[k]
        step["before"], step["after"] = before, after
        if before.get("p50_ms") and after.get("p50_ms"):
            step["p50_speedup"] = round(before["p50_ms"] / after["p50_ms"], 4)
        step["measured_on"] = measured_on
    return dataclasses.replace(source, module=models[-1]), steps


# ---------------------------------------------------------------- measuring


def measurement_data(
    validation: FeedSource | None, cfg: DataConfig | None, specs: tuple[TensorSpec, ...], shapes: dict[str, tuple[int, ...]]
) -> ValidationData:
    """The validation data in the batches the validator uses, or seeded random inputs when there is none."""
    return validation_data(validation, cfg, specs, shapes, SYNTHETIC_BATCHES)


def measure_stages(
    models: list[nn.Module],
    source: SourceModel,
    teacher: nn.Module,
    shapes: dict[str, tuple[int, ...]],
    export: ExportConfig,
    data: ValidationData,
    task: str | None,
    progress: Progress | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Export each model, then measure all of them together: sizes, error against ``teacher``, interleaved latency.

    Returns one dict per model and a description of how they were measured.
    """
    progress = progress or Silent()
    classification = task == "classification" or data.labelled
    with tempfile.TemporaryDirectory(prefix="edgekit-compress-") as tmp:
        stages: list[dict[str, Any]] = []
        runners: dict[str, Runner] = {}
        outputs: tuple[str, ...] = ()
        for k, module in enumerate(models):
            progress.step(f"compress: exporting stage {k}/{len(models) - 1} to measure its ONNX size and latency")
            path = Path(tmp) / f"stage{k}.onnx"
            ref = make_reference(dataclasses.replace(source, module=module), shapes, export, path)
            outputs = ref.outputs
            stages.append({
                "params": sum(p.numel() for p in module.parameters()),
                "nonzero_params": int(sum(int(torch.count_nonzero(p)) for p in module.parameters())),
                "onnx_params": onnx_params(path),
                "onnx_bytes": path.stat().st_size,
            })
            runners[_name(k)] = OrtRunner(path, ref.inputs, ref.outputs, THREADS)
        torch_ref = TorchRunner(dataclasses.replace(source, module=teacher), outputs, THREADS)
        progress.step(f"compress: comparing {len(models)} stage(s) with the uncompressed model on {data.description}")
        first = runners.pop(_name(0))
        measured = observe(runners, torch_ref, first, data, classification, outputs, progress.advance)
        runners = {_name(0): first, **runners}
        feed = latency_feed(data, ref.inputs, shapes, None)
        batch = int(next(iter(feed.values())).shape[0])
        progress.step(f"compress: timing {len(models)} stage(s) on ONNX Runtime FP32 ({THREADS} threads, batch {batch})")
        timed = interleaved({n: Timed(lambda r=r: r.run(feed), WARMUP, RUNS) for n, r in runners.items()}, progress.advance)
        for runner in runners.values():
            runner.close()
    for k, stage in enumerate(stages):
        m = measured["onnx-fp32" if k == 0 else _name(k)]
        if m.error:
            stage["error"] = m.error
        else:
            summary = m.vs_torch.summary()
            stage["cosine"] = summary["worst"]["cosine"]
            stage["min_cosine"] = min(o["min_cosine"] for o in summary["outputs"].values())
            stage["sqnr_db"] = summary["worst"]["sqnr_db"]
            if "top1_agreement" in summary:
                stage["top1_agreement"] = summary["top1_agreement"]
            if m.accuracy is not None and m.accuracy.total:
                stage["accuracy"] = m.accuracy.percent
        t, first_t = timed[_name(k)], timed[_name(0)]
        if isinstance(t, str) or isinstance(first_t, str):
            raise RuntimeError(f"timing compress stage {k} failed: {t if isinstance(t, str) else first_t}")
        stage.update({"p50_ms": t.p50_ms, "p90_ms": t.p90_ms, "mean_ms": t.mean_ms})
        stage["p50_speedup_vs_uncompressed"] = round(first_t.p50_ms / t.p50_ms, 4)
    torch_acc = measured["torch-fp32"].accuracy
    samples = next(iter(measured["onnx-fp32"].vs_torch.errors.values())).samples
    measured_on = {
        "data": data.description,
        "samples": samples,
        "labelled": data.labelled,
        "error_reference": "the uncompressed torch model",
        "uncompressed_torch_accuracy": torch_acc.percent if torch_acc is not None and torch_acc.total else None,
        "latency": f"ONNX Runtime FP32 (ORT_ENABLE_ALL), {THREADS} threads, batch {batch}, {WARMUP} warm-up, "
                   f"{RUNS} runs per stage interleaved round-robin",
    }
    return stages, measured_on


def _name(k: int) -> str:
    return f"stage-{k}"


def onnx_params(path: Path) -> int:
    """Floating-point weight elements of an ONNX model: initializers and Constant nodes (shape constants excluded)."""
    import onnx

    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}
    model = onnx.load(str(path), load_external_data=False)
    count = sum(int(np.prod(t.dims)) for t in model.graph.initializer if t.data_type in floats)
    for node in model.graph.node:
        if node.op_type == "Constant":
            count += sum(int(np.prod(a.t.dims)) for a in node.attribute if a.name == "value" and a.t.data_type in floats)
    return count

