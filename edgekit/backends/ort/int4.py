"""Weight-only 4-bit for ONNX Runtime: MatMul weights (and Gemm weights, rewritten as MatMul + Add first) into
``MatMulNBits``, optionally embedding tables into ``GatherBlockQuantized``, with ONNX Runtime's MatMulNBitsQuantizer.

Weights are quantized in blocks of ``block_size`` along K (one scale, and a zero point unless symmetric, per block);
activations stay FP32. Algorithms: ``rtn`` (round to nearest, ORT's default quantizer), ``hqq`` (Half-Quadratic
Quantization: scales and zero points optimised per block, no data) and ``gptq`` (error-compensating, needs
calibration data: ORT runs the model on it). Embedding tables are always RTN (ORT's HQQ does not take Gather).
A MatMul whose K is under ``block_size`` stays FP32 (one block would be mostly padding).
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from edgekit.backends.base import CalibrationSettings
from edgekit.backends.onnx.calibration import FeedCalibrationReader
from edgekit.backends.onnx.graph import GraphIndex
from edgekit.errors import ProfileError
from edgekit.onnxio import has_external_data, load_onnx, move_model, save_onnx
from edgekit.types import FeedSource, TensorSpec

if TYPE_CHECKING:
    from edgekit.backends.ort.recipe import OrtRecipe

ALGORITHMS = ("rtn", "hqq", "gptq")
MIN_GATHER_ELEMENTS = 1 << 16  # an embedding table worth 4 bits; smaller Gathers (position ids, shapes) stay as they are


@contextlib.contextmanager
def _quantizer_logging() -> Iterator[None]:
    """ORT's quantizer module calls logging.basicConfig(INFO) at import and logs every node: keep the root logger as
    the caller set it, and the quantizer's chatter (its opset-21 upgrade warning is in the notes) off the terminal."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    names = ("onnxruntime.quantization.matmul_nbits_quantizer", "onnxruntime.quantization.neural_compressor.weight_only")
    before = {n: logging.getLogger(n).level for n in names}
    try:
        for n in names:
            logging.getLogger(n).setLevel(logging.ERROR)
        with warnings.catch_warnings():  # HQQ hands torch a read-only array: a UserWarning about its own copy
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        for n, lvl in before.items():
            logging.getLogger(n).setLevel(lvl)


def gemm_to_matmul(model: Any) -> int:
    """Rewrite each Gemm with a constant B (alpha 1, no transA) as MatMul(A, B or B^T) + Add(C), in place, so its
    weight can be quantized (MatMulNBits has no Gemm form). Returns how many were rewritten."""
    from onnx import helper, numpy_helper

    index = GraphIndex(model)
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    out_nodes, count = [], 0
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (node.op_type != "Gemm" or node.input[1] not in inits or attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0
                or len(index.consumers.get(node.input[1], [])) != 1):
            out_nodes.append(node)
            continue
        weight = numpy_helper.to_array(inits[node.input[1]])
        if attrs.get("transB", 0):
            weight = np.ascontiguousarray(weight.T)
        inits[node.input[1]].CopyFrom(numpy_helper.from_array(weight, node.input[1]))
        has_bias = len(node.input) > 2 and node.input[2] != ""
        mm_out = f"{node.output[0]}__matmul" if has_bias else node.output[0]
        out_nodes.append(helper.make_node("MatMul", [node.input[0], node.input[1]], [mm_out], name=f"{node.name}_MatMul"))
        if has_bias:
            bias = node.input[2]
            if attrs.get("beta", 1.0) != 1.0:
                scaled = numpy_helper.to_array(inits[bias]) * np.float32(attrs["beta"]) if bias in inits else None
                if scaled is None:  # a computed C with beta != 1: keep it exact with a Mul
                    beta = f"{node.name}__beta"
                    graph.initializer.append(numpy_helper.from_array(np.array(attrs["beta"], np.float32), beta))
                    out_nodes.append(helper.make_node("Mul", [bias, beta], [f"{bias}__scaled"], name=f"{node.name}_Beta"))
                    bias = f"{bias}__scaled"
                else:
                    bias = f"{bias}__beta"
                    graph.initializer.append(numpy_helper.from_array(scaled.astype(np.float32), bias))
            out_nodes.append(helper.make_node("Add", [mm_out, bias], [node.output[0]], name=f"{node.name}_Add"))
        count += 1
    graph.ClearField("node")
    graph.node.extend(out_nodes)
    return count


def _weight_shape(index: GraphIndex, name: str) -> tuple[int, ...] | None:
    t = index.consts.get(name)
    return tuple(t.dims) if t is not None and t.data_type == 1 else None  # FLOAT initializers only


def plan_nodes(model: Any, block_size: int, embeddings: bool) -> tuple[list[str], list[str], dict[str, str]]:
    """(MatMuls to quantize, Gathers to quantize, {node: why it stays FP32}) of ``model``."""
    index = GraphIndex(model)
    matmuls, gathers, skipped = [], [], {}
    for node in model.graph.node:
        if node.op_type == "MatMul":
            shape = _weight_shape(index, node.input[1])
            if shape is None:
                continue  # activation x activation (attention scores): nothing to quantize
            if len(shape) < 2 or any(d != 1 for d in shape[:-2]):
                skipped[node.name] = f"weight of shape {list(shape)} (4-bit needs a 2-D weight)"
            elif shape[-2] < block_size:
                skipped[node.name] = f"K = {shape[-2]} < block_size {block_size}"
            else:
                matmuls.append(node.name)
        elif node.op_type == "Gather" and embeddings:
            shape = _weight_shape(index, node.input[0])
            if shape is not None and len(shape) == 2 and int(np.prod(shape)) >= MIN_GATHER_ELEMENTS:
                if shape[1] % block_size:
                    skipped[node.name] = f"embedding width {shape[1]} is not a multiple of block_size {block_size}"
                else:
                    gathers.append(node.name)
    return matmuls, gathers, skipped


class _ListReader:
    """GPTQ's data reader: ORT deep-copies it and iterates it once per pass."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self.feeds = feeds

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return iter(self.feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:  # the CalibrationDataReader protocol, unused by GPTQ
        return None


def _named(model: Any) -> None:
    """Give every unnamed node a name: the quantizer selects and reports nodes by name."""
    for i, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{i}"


def quantize_int4(src: Path, dst: Path, recipe: "OrtRecipe", calib: FeedSource | None = None,
                  specs: tuple[TensorSpec, ...] = (), settings: CalibrationSettings | None = None) -> dict[str, Any]:
    """Weight-only 4-bit of ``src`` into ``dst`` as the recipe asks; notes say what was quantized and what was not."""
    import onnx

    with _quantizer_logging():
        from onnxruntime.quantization.matmul_nbits_quantizer import (DefaultWeightOnlyQuantConfig, GPTQWeightOnlyQuantConfig,
                                                                     HQQWeightOnlyQuantConfig, MatMulNBitsQuantizer)
    model = load_onnx(src)
    opset = _opset(model)
    _named(model)
    gemms = gemm_to_matmul(model)
    matmuls, gathers, skipped = plan_nodes(model, recipe.block_size, recipe.embeddings)
    notes: dict[str, Any] = {"weights": f"4-bit {'symmetric' if recipe.symmetric else 'asymmetric'} blocks of "
                                        f"{recipe.block_size} along K ({recipe.algorithm.upper()}), activations FP32"}
    if gemms:
        notes["gemm_rewrite"] = f"{gemms} Gemm node(s) rewritten as MatMul + Add so their weights can be 4-bit"
    everything = {n.name for n in model.graph.node}
    with _quantizer_logging():
        if matmuls:
            common = dict(block_size=recipe.block_size, is_symmetric=recipe.symmetric,
                          accuracy_level=recipe.accuracy_level or None, nodes_to_exclude=sorted(everything - set(matmuls)))
            if recipe.algorithm == "rtn":
                algo = DefaultWeightOnlyQuantConfig(block_size=recipe.block_size, is_symmetric=recipe.symmetric,
                                                    accuracy_level=recipe.accuracy_level or None, op_types_to_quantize=("MatMul",))
            elif recipe.algorithm == "hqq":
                algo = HQQWeightOnlyQuantConfig(block_size=recipe.block_size, bits=4, op_types_to_quantize=("MatMul",))
            else:
                if calib is None:
                    raise ProfileError("ort-int4 algorithm = \"gptq\" needs calibration data: add a [calibration] section")
                reader = FeedCalibrationReader(calib, specs, settings or CalibrationSettings())
                algo = GPTQWeightOnlyQuantConfig(calibration_data_reader=_ListReader(list(reader.passes())),
                                                 op_types_to_quantize=("MatMul",))
            if recipe.algorithm == "gptq":  # ORT's GPTQ path (neural_compressor) takes a file and no exclusion list
                with tempfile.TemporaryDirectory(prefix="edgekit-int4-") as tmp:
                    staged = Path(tmp) / "gptq_in.onnx"
                    save_onnx(model, staged)
                    quantizer = MatMulNBitsQuantizer(str(staged), algo_config=algo, **common)
                    with contextlib.redirect_stdout(io.StringIO()):  # its progress bar
                        quantizer.process()
                    model = quantizer.model.model
            else:
                quantizer = MatMulNBitsQuantizer(model, algo_config=algo, **common)
                quantizer.process()
                model = quantizer.model.model
        if gathers:
            algo = DefaultWeightOnlyQuantConfig(block_size=recipe.block_size, is_symmetric=recipe.symmetric,
                                                op_types_to_quantize=("Gather",), quant_axes=(("Gather", 1),))
            quantizer = MatMulNBitsQuantizer(model, algo_config=algo,
                                             nodes_to_exclude=sorted({n.name for n in model.graph.node} - set(gathers)))
            quantizer.process()
            model = quantizer.model.model
    if _opset(model) != opset:
        notes["opset"] = (f"raised from {opset} to {_opset(model)} (IR version {model.ir_version}) by ONNX Runtime's "
                          "quantizer: the 4-bit tensors of GatherBlockQuantized need it")
    counts = _op_counts(model)
    notes["quantized"] = {"MatMulNBits": counts.get("MatMulNBits", 0), "GatherBlockQuantized": counts.get("GatherBlockQuantized", 0)}
    if recipe.accuracy_level:
        notes["accuracy_level"] = f"{recipe.accuracy_level} (MatMulNBits computes in {ACCURACY_LEVELS[recipe.accuracy_level]})"
    if skipped:
        notes["kept_fp32"] = dict(list(skipped.items())[:10])
    if not counts.get("MatMulNBits") and not counts.get("GatherBlockQuantized"):
        notes["warning"] = (f"nothing to quantize at 4 bits: no MatMul/Gemm weight with K >= block_size {recipe.block_size}"
                            + (" nor embedding table" if recipe.embeddings else "") + "; the artifact is the FP32 graph")
    with tempfile.TemporaryDirectory(prefix="edgekit-int4-") as tmp:
        out = Path(tmp) / dst.name
        save_onnx(model, out, external=has_external_data(src) or None)
        try:
            onnx.checker.check_model(str(out), full_check=False)
        except Exception as exc:  # the quantizer wrote a graph ONNX rejects: say so rather than ship it
            raise ProfileError(f"ort-int4: ONNX Runtime's 4-bit quantizer wrote an invalid graph ({str(exc).splitlines()[0][:200]}); "
                               "try embeddings = false or algorithm = \"rtn\"") from None
        move_model(out, dst)
    return notes


ACCURACY_LEVELS = {1: "fp32", 2: "fp16", 3: "bf16", 4: "int8 (activations quantized per block at run time)"}


def _opset(model: Any) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _op_counts(model: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts
