"""Per-layer analysis of a torch.ao artifact (torch-fbgemm, torch-qnnpack): a frozen TorchScript graph.

Each ``quantized::conv*`` / ``quantized::linear*`` call of the graph is a layer. Its output value is named after its
module (``features_0``), which finds the reference's ONNX node; its packed weights unpack to the quantized weight;
its input's scale and zero point are the constants of the op that quantized that tensor. From these:

* local / weight-only / activation-only SQNR: the reference's layer run on the reference's own inputs with that
  weight and that input quantization (the same one-layer graph as the ONNX backends use);
* accumulated SQNR: the op's output, made an extra output of a copy of the graph, against the reference's tensor;
* keep FP32: a copy of the graph where the op becomes dequantize -> the FP32 op with the reference's weights ->
  quantize to the op's own output scale (what torch.ao does for a module it leaves in float).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.console import Progress
from edgekit.debug.layers import Act, Const, Graphs, Layer
from edgekit.debug.names import module_map
from edgekit.debug.rank import Candidates, Run, assemble, measure_layers
from edgekit.debug.report import DebugReport
from edgekit.debug.run import Reader, Timing, layer_errors
from edgekit.types import Feed, Reference, TargetProfile

_SUFFIX = re.compile(r"\.\d+$")
QUINT8, QINT8 = 13, 12  # torch's ScalarType codes in quantize_per_tensor


def _is_layer(kind: str) -> bool:
    return kind.startswith(("quantized::conv", "quantized::linear")) and not kind.endswith(("prepack", "unpack"))


def _unpack(node: Any) -> tuple[np.ndarray, np.ndarray | None, Any]:
    import torch

    packed = list(node.inputs())[1].toIValue()
    kind = node.kind()
    if "linear" in kind:
        w, b = torch.ops.quantized.linear_unpack(packed)
    elif "conv3d" in kind:
        w, b = torch.ops.quantized.conv3d_unpack(packed)
    elif "conv1d" in kind:
        w, b = torch.ops.quantized.conv1d_unpack(packed)
    else:
        w, b = torch.ops.quantized.conv2d_unpack(packed)
    return w.dequantize().numpy(), (b.detach().numpy() if b is not None else None), packed


def _input_qparams(node: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """Scale and zero point of the quantized tensor a layer reads: the constants of the op that made it, followed
    back through ops that keep a quantized tensor's parameters (pooling, reshapes)."""
    value = list(node.inputs())[0]
    for _ in range(64):
        producer = value.node()
        kind = producer.kind()
        args = list(producer.inputs())
        if kind == "aten::quantize_per_tensor":
            scale, zero, dtype = (a.toIValue() for a in args[1:4])
            return np.float32(scale), (np.uint8(zero) if dtype == QUINT8 else np.int8(zero))
        if kind.startswith("quantized::") and len(args) >= 3:
            return np.float32(args[-2].toIValue()), np.uint8(args[-1].toIValue())
        if not args or kind == "prim::Param":
            return None
        value = args[0]
    return None


def _find(module: Any, g: Graphs, modules: dict[str, str]) -> tuple[list[Layer], dict[str, Any], list[str]]:
    """The layers of the TorchScript graph mapped to the reference, and {layer: its graph node}."""
    by_key = {m.replace(".", "_"): node for node, m in modules.items()}
    consumers: dict[str, list[Any]] = {}
    for n in g.reference.graph.node:
        for name in n.input:
            consumers.setdefault(name, []).append(n)
    layers, nodes, unmapped = [], {}, []
    for tnode in module.forward.graph.nodes():
        if not _is_layer(tnode.kind()):
            continue
        out = tnode.output().debugName()
        ref = g.ref_nodes.get(by_key.get(_SUFFIX.sub("", out), ""))
        if ref is None:
            unmapped.append(_SUFFIX.sub("", out))
            continue
        weight, bias, _ = _unpack(tnode)
        layer = Layer(ref.name, ref.op_type, out)
        ref_w = g.ref_consts.get(ref.input[1]) if len(ref.input) > 1 else None
        if ref_w is not None and ref_w.shape != weight.shape and weight.ndim == 2 and ref_w.shape == weight.T.shape:
            weight = weight.T
        layer.consts.append(Const(1, ref_w.astype(np.float32) if ref_w is not None and ref_w.shape == weight.shape else None,
                                  weight))
        if len(ref.input) > 2 and ref.input[2] in g.ref_consts:
            fp32 = g.ref_consts[ref.input[2]].astype(np.float32)
            layer.consts.append(Const(2, fp32, bias.astype(np.float32) if bias is not None and bias.shape == fp32.shape else fp32))
        dynamic = "dynamic" in tnode.kind()
        qparams = None if dynamic else _input_qparams(tnode)
        layer.acts.append(Act(0, ref.input[0], *(qparams or (None, None)), dynamic=dynamic))
        target = ref.output[0]
        after = consumers.get(target, [])
        if tnode.kind().endswith("_relu") and len(after) == 1 and after[0].op_type == "Relu":
            target = after[0].output[0]  # the fused ReLU of conv2d_relu / linear_relu
        layer.out_artifact, layer.out_reference = out, target
        layers.append(layer)
        nodes[ref.name] = tnode
    return layers, nodes, unmapped


def _outputs(result: Any) -> list[np.ndarray]:
    items = result if isinstance(result, (tuple, list)) else (result,)
    return [t.dequantize().numpy() if t.is_quantized else t.detach().numpy() for t in items]


class _Script:
    """The artifact's forward graph, copied and edited, run as a function of the loaded module."""

    def __init__(self, module: Any, inputs: tuple[str, ...], engine: str, threads: int):
        self.module, self.inputs, self.engine, self.threads = module, inputs, engine, threads

    def call(self, fn: Any, feed: Feed, extra: tuple = ()) -> Any:
        import torch

        from edgekit.backends.torch_ao.common import quantized_engine, torch_threads

        with quantized_engine(self.engine), torch_threads(self.threads), torch.inference_mode():
            return fn(self.module._c, *(torch.from_numpy(feed[n]) for n in self.inputs), *extra)

    def reader(self, names: list[str]) -> Reader:
        """Tensors named by the graph's value names (``features_0.1``), dequantized, beside the outputs."""
        import torch

        g = self.module.forward.graph.copy()
        values = {v.debugName(): v for n in g.nodes() for v in n.outputs()}
        ret = g.return_node()
        outs = []
        for name in names:
            d = g.create("aten::dequantize", [values[name]])
            d.insertBefore(ret)
            d.output().setType(torch._C.TensorType.get())
            outs.append(d.output())
        t = g.create("prim::TupleConstruct", outs)
        t.insertBefore(ret)
        t.output().setType(torch._C.TupleType([o.type() for o in outs]))
        ret.replaceInput(0, t.output())
        fn = torch._C._create_function_from_graph("edgekit_debug_read", g)
        return lambda feed: {n: v.numpy() for n, v in zip(names, self.call(fn, feed))}

    def keep_fp32(self, layers: list[Layer], tnodes: dict[str, Any]) -> Run:
        """The graph with each of ``layers`` in FP32 between a dequantize and a quantize to its own output scale."""
        import torch

        g = self.module.forward.graph.copy()
        by_out = {n.output().debugName(): n for n in g.nodes() if _is_layer(n.kind())}
        tensor = torch._C.TensorType.get()
        extra = []
        for layer in layers:
            node = by_out[tnodes[layer.node].output().debugName()]
            args = list(node.inputs())
            weight = next(c for c in layer.consts if c.index == 1)
            bias = next((c for c in layer.consts if c.index == 2), None)
            w_in, b_in = g.addInput(), g.addInput()
            w_in.setType(tensor)
            b_in.setType(torch._C.OptionalType(tensor))
            extra += [torch.from_numpy(np.ascontiguousarray(weight.fp32)),
                      torch.from_numpy(bias.fp32) if bias is not None else None]
            g.setInsertPoint(node)

            def add(kind: str, inputs: list[Any]) -> Any:
                n = g.create(kind, inputs)
                g.insertNode(n)
                n.output().setType(tensor)
                return n.output()

            x = add("aten::dequantize", [args[0]])
            if "linear" in node.kind():
                y = add("aten::linear", [x, w_in, b_in])
            else:
                packed = args[1].toIValue()
                dims = node.kind().split("conv")[1][:2]  # "1d" / "2d" / "3d"
                params = [g.insertConstant(getattr(torch.ops.quantized, f"conv{dims}_{p}")(packed))
                          for p in ("stride", "padding", "dilation", "groups")]
                y = add(f"aten::conv{dims}", [x, w_in, b_in, *params])
            if node.kind().endswith("_relu"):
                y = add("aten::relu", [y])
            q = add("aten::quantize_per_tensor", [y, args[-2], args[-1], g.insertConstant(QUINT8)])
            node.output().replaceAllUsesWith(q)
            node.destroy()
        fn = torch._C._create_function_from_graph("edgekit_debug_keep", g)
        return lambda feed: _outputs(self.call(fn, feed, tuple(extra)))


def analyze_torch(reference: Reference, files: list[Path], feeds: list[Feed], profile: TargetProfile,
                  progress: Progress, timing: Timing) -> DebugReport:
    import onnx

    from edgekit.backends.onnx.session import session
    from edgekit.backends.torch_ao.artifact import TorchAoRunner

    path = next(f for f in files if f.suffix == ".pt")
    engine = str(profile.recipe.get("engine", "fbgemm"))
    threads = profile.runtime.threads
    runner = TorchAoRunner(path, reference.inputs, reference.outputs, engine, threads)
    ref_model = onnx.load(str(reference.path))
    g = Graphs(ref_model, ref_model)
    modules = module_map(ref_model)
    layers, tnodes, unmapped = _find(runner.module, g, modules)
    notes = []
    if unmapped:
        notes.append(f"{len(unmapped)} quantized op(s) of the TorchScript graph not matched to a reference node: "
                     + ", ".join(unmapped[:8]))
    if not layers and not unmapped:
        notes.append("no quantized conv/linear op in the TorchScript graph: nothing of this artifact is INT8")
    script = _Script(runner.module, tuple(s.name for s in reference.inputs), engine, threads)
    progress.step(f"local and accumulated error of {len(layers)} quantized layer(s), {len(feeds)} batch(es)")
    errors = layer_errors(g, layers, feeds, threads, progress.advance, artifact=script.reader)
    progress.step("keeping layers in FP32 one at a time: whole-model cosine and latency cost")
    ref = session(ref_model.SerializeToString(), threads)
    base = script.keep_fp32([], tnodes)  # the unchanged graph run the same way as the candidates, so timed alike
    candidates = Candidates([ref.run(None, f) for f in feeds], base, lambda chosen: script.keep_fp32(chosen, tnodes),
                            feeds, timing)
    keep, blocks = measure_layers(layers, modules, candidates, progress, notes)
    return assemble(layers, errors, keep, modules, candidates.end_to_end, blocks, notes)

