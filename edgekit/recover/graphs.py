"""The recipe repairs recovery applies to the FP32 ONNX graph before quantizing it again, each exact in FP32 (or, for
bias correction, a shift measured on the calibration data):

* ``equalize``: cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization"): for Conv -> Relu -> Conv,
  output channel i of the first conv is divided by s_i and input channel i of the second multiplied by it, with
  s_i = sqrt(r1_i / r2_i) (r: the channel's weight range), so both get the same range. Exact because ReLU is
  positively homogeneous; Clip (ReLU6) is not, so pairs through a Clip are left alone.
* ``correct_biases``: bias correction: every quantized Conv's bias is shifted by the mean error its quantized
  weights add, E[(W_q - W) x], with E[x] per input channel measured on the calibration data inside the INT8 graph.

SmoothQuant-style smoothing, the third repair, is backends/ort/passes/smooth.py (shared with ort-int8-dynamic).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

SCALE_LIMITS = (1e-3, 1e3)


def _attr(node: Any, name: str, default: int) -> int:
    return next((a.i for a in node.attribute if a.name == name), default)


def _uses(graph: Any) -> dict[str, int]:
    uses: dict[str, int] = defaultdict(int)
    for n in graph.node:
        for name in n.input:
            uses[name] += 1
    for o in graph.output:
        uses[o.name] += 1
    return uses


def _conv_pairs(graph: Any) -> list[tuple[Any, Any]]:
    """(first, second) Conv pairs joined by one Relu, each tensor on the way read once, weights constant and unshared."""
    inits = {i.name for i in graph.initializer}
    uses = _uses(graph)
    consumers: dict[str, list[Any]] = defaultdict(list)
    for n in graph.node:
        for name in n.input:
            consumers[name].append(n)
    pairs = []
    for first in graph.node:
        if first.op_type != "Conv" or len(first.input) < 2 or first.input[1] not in inits or uses[first.input[1]] != 1:
            continue
        if len(first.input) > 2 and (first.input[2] not in inits or uses[first.input[2]] != 1):
            continue
        act = consumers.get(first.output[0], [])
        if len(act) != 1 or act[0].op_type != "Relu" or uses[first.output[0]] != 1:
            continue
        nxt = consumers.get(act[0].output[0], [])
        if len(nxt) != 1 or uses[act[0].output[0]] != 1 or nxt[0].op_type != "Conv" or nxt[0].input[0] != act[0].output[0]:
            continue
        second = nxt[0]
        if len(second.input) < 2 or second.input[1] not in inits or uses[second.input[1]] != 1:
            continue
        pairs.append((first, second))
    return pairs


def equalize(src: Path, dst: Path, rounds: int = 4) -> int:
    """Write ``src`` with cross-layer equalization (module docstring) to ``dst``; returns the number of conv pairs."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    arrays = {name: numpy_helper.to_array(t).astype(np.float64) for name, t in inits.items()}
    usable = []
    for first, second in _conv_pairs(graph):
        w1, w2 = arrays[first.input[1]], arrays[second.input[1]]
        channels, groups = w1.shape[0], _attr(second, "group", 1)
        depthwise = groups == channels and w2.shape[0] == channels and w2.shape[1] == 1
        if w2.ndim != 4 or w1.ndim != 4 or not (groups == 1 and w2.shape[1] == channels or depthwise):
            continue
        usable.append((first, second, depthwise))
    for _ in range(rounds):
        for first, second, depthwise in usable:
            w1, w2 = arrays[first.input[1]], arrays[second.input[1]]
            channels = w1.shape[0]
            r1 = np.abs(w1).reshape(channels, -1).max(axis=1)
            r2 = np.abs(w2 if depthwise else w2.transpose(1, 0, 2, 3)).reshape(channels, -1).max(axis=1)
            live = (r1 > 0) & (r2 > 0)
            s = np.ones(channels)
            s[live] = np.clip(np.sqrt(r1[live] / r2[live]), *SCALE_LIMITS)
            arrays[first.input[1]] = w1 / s[:, None, None, None]
            if len(first.input) > 2:
                arrays[first.input[2]] = arrays[first.input[2]] / s
            arrays[second.input[1]] = w2 * (s[:, None, None, None] if depthwise else s[None, :, None, None])
    touched = {n.input[i] for f, s2, _ in usable for n in (f, s2) for i in range(1, len(n.input))}
    for name in touched:
        inits[name].CopyFrom(numpy_helper.from_array(arrays[name].astype(np.float32), name))
    onnx.save(model, str(dst))
    return len(usable)


def _dequantized(index: Mapping[str, Any], producer: Mapping[str, Any], name: str) -> np.ndarray | None:
    """The FP32 value of a constant fed through DequantizeLinear (per-tensor or per-axis), or None."""
    from onnx import numpy_helper

    dq = producer.get(name)
    if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in index:
        return None
    q = numpy_helper.to_array(index[dq.input[0]]).astype(np.float64)
    scale = numpy_helper.to_array(index[dq.input[1]]).astype(np.float64)
    zero = numpy_helper.to_array(index[dq.input[2]]).astype(np.float64) if len(dq.input) > 2 and dq.input[2] else 0.0
    axis = _attr(dq, "axis", 1)
    if np.ndim(scale) == 1 and scale.size > 1:
        shape = [1] * q.ndim
        shape[axis] = -1
        scale = scale.reshape(shape)
        zero = np.reshape(zero, shape) if np.ndim(zero) else zero
    return (q - zero) * scale


def correct_biases(fp32: Path, quantized: Path, feeds: Iterable[Mapping[str, np.ndarray]], dst: Path) -> int:
    """Write ``fp32`` (the graph ``quantized`` was made from) with every quantized Conv's bias corrected (module
    docstring) to ``dst``; returns the number of biases changed. Padding is ignored in E[x] (a mean per channel)."""
    import onnx
    from onnx import helper, numpy_helper

    from edgekit.backends.onnx.session import session

    qmodel = onnx.load(str(quantized))
    qinits = {i.name: i for i in qmodel.graph.initializer}
    producer = {o: n for n in qmodel.graph.node for o in n.output}
    model = onnx.load(str(fp32))
    inits = {i.name: i for i in model.graph.initializer}
    fp_nodes = {n.name: n for n in model.graph.node if n.name}
    todo = []  # (fp32 node, weight error, input tensor in the quantized graph)
    for n in qmodel.graph.node:
        fp = fp_nodes.get(n.name)
        if n.op_type != "Conv" or fp is None or fp.op_type != "Conv" or fp.input[1] not in inits:
            continue
        wq = _dequantized(qinits, producer, n.input[1])
        x = producer.get(n.input[0])
        if wq is None or x is None or x.op_type != "DequantizeLinear":
            continue
        w = numpy_helper.to_array(inits[fp.input[1]]).astype(np.float64)
        if wq.shape != w.shape:
            continue
        todo.append((fp, wq - w, n.input[0], _attr(n, "group", 1)))
    if not todo:
        onnx.save(model, str(dst))
        return 0
    wanted = sorted({t for *_, t, _ in todo})
    present = {o.name for o in qmodel.graph.output}
    for t in wanted:
        if t not in present:
            qmodel.graph.output.append(helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None))
    sess = session(qmodel.SerializeToString(), 2)
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = defaultdict(int)
    for feed in feeds:
        for t, v in zip(wanted, sess.run(wanted, dict(feed))):
            axes = tuple(i for i in range(v.ndim) if i != 1)
            sums[t] = sums.get(t, 0.0) + v.astype(np.float64).sum(axis=axes)
            counts[t] += int(np.prod([v.shape[i] for i in axes]))
    changed = 0
    uses = _uses(model.graph)
    for fp, dw, t, groups in todo:
        if t not in sums or (len(fp.input) > 2 and (fp.input[2] not in inits or uses[fp.input[2]] != 1)):
            continue
        mean_x = sums[t] / max(counts[t], 1)
        out_ch, in_per_group = dw.shape[0], dw.shape[1]
        per_group = out_ch // groups
        kernel = dw.reshape(out_ch, in_per_group, -1).sum(axis=2)  # [out, in/group]
        xin = np.stack([mean_x[(c // per_group) * in_per_group:(c // per_group + 1) * in_per_group] for c in range(out_ch)])
        shift = np.sum(kernel * xin, axis=1)
        if len(fp.input) > 2 and fp.input[2]:
            bias = numpy_helper.to_array(inits[fp.input[2]]).astype(np.float64) - shift
            inits[fp.input[2]].CopyFrom(numpy_helper.from_array(bias.astype(np.float32), fp.input[2]))
        else:
            name = f"{fp.name}_corrected_bias"
            model.graph.initializer.append(numpy_helper.from_array((-shift).astype(np.float32), name))
            while len(fp.input) < 3:
                fp.input.append("")
            fp.input[2] = name
        changed += 1
    onnx.save(model, str(dst))
    return changed
