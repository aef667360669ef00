"""ONNX graph helpers the backends share: a producer/consumer index, renaming and dead-node pruning, inferred
shapes, and a read-out of every float tensor of a graph."""

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from edgekit.backends.onnx.session import session
from edgekit.onnxio import save_like

MS_DOMAIN = "com.microsoft"


@dataclass
class GraphIndex:
    """Producer/consumer look-ups over one ONNX graph."""

    model: Any

    def __post_init__(self) -> None:
        from onnx import numpy_helper

        graph = self.model.graph
        self.nodes = list(graph.node)  # one set of wrappers, so `is` comparisons between look-ups hold
        self.producer = {o: n for n in self.nodes for o in n.output}
        self.consumers: dict[str, list[Any]] = {}
        for n in self.nodes:
            for name in n.input:
                self.consumers.setdefault(name, []).append(n)
        self.consts = {i.name: i for i in graph.initializer}
        for n in self.nodes:  # Constant nodes count as initializers for matching
            if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
                self.consts[n.output[0]] = n.attribute[0].t
        self._array = numpy_helper.to_array
        self.graph_outputs = {o.name for o in graph.output}

    def const(self, name: str) -> np.ndarray | None:
        return self._array(self.consts[name]) if name in self.consts else None

    def only_consumer(self, name: str) -> Any | None:
        users = self.consumers.get(name, [])
        return users[0] if len(users) == 1 and name not in self.graph_outputs else None

    def made_by(self, name: str, op_type: str) -> Any | None:
        node = self.producer.get(name)
        return node if node is not None and node.op_type == op_type else None


@contextlib.contextmanager
def scratch_cwd() -> Iterator[None]:
    """Run ONNX Runtime's tools from a temporary working directory: its symbolic shape inference saves
    ``sym_shape_infer_temp.onnx`` and external-data files into the current directory when it cannot finish (seen
    on exports with a dynamic sequence axis); nothing of that may land in the user's folder."""
    with tempfile.TemporaryDirectory(prefix="edgekit-cwd-") as tmp, contextlib.chdir(tmp):
        yield


def inferred_shapes(model: Any) -> dict[str, list[int | str | None]]:
    """Every tensor's inferred shape (ints, symbolic names or None), initializers included.

    ONNX Runtime's symbolic shape inference first: it follows shapes computed at run time (Shape -> Concat ->
    Expand, as the TorchScript exporter writes masks); ONNX's own inference when that fails."""
    import onnx

    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        with scratch_cwd():
            inferred = SymbolicShapeInference.infer_shapes(model, auto_merge=True)
    except Exception:  # it raises whatever an op handler raises on graphs it does not understand
        inferred = None
    if inferred is None:
        inferred = onnx.shape_inference.infer_shapes(model)
    out: dict[str, list[int | str | None]] = {}
    graph = inferred.graph
    for v in [*graph.input, *graph.value_info, *graph.output]:
        t = v.type.tensor_type
        if t.HasField("shape"):
            out[v.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]
    for i in graph.initializer:
        out[i.name] = list(i.dims)
    return out


def rename_uses(graph: Any, old: str, new: str) -> None:
    """Every node input named ``old`` reads ``new`` instead (``old`` is never a graph output here)."""
    for n in graph.node:
        for k, name in enumerate(n.input):
            if name == old:
                n.input[k] = new


def names_read(graph: Any) -> set[str]:
    """Every tensor name a node of ``graph`` reads, subgraphs (If/Loop/Scan bodies) included."""
    names = set()
    for n in graph.node:
        names.update(n.input)
        for a in n.attribute:
            for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                names |= names_read(sub)
    return names


def prune_dead(graph: Any) -> None:
    """Drop nodes none of whose outputs is read by a node, a subgraph or the graph's outputs, then the initializers
    nothing reads any more."""
    while True:
        used = names_read(graph) | {o.name for o in graph.output}
        dead = [k for k, n in enumerate(graph.node) if not any(o in used for o in n.output if o)]
        if not dead:
            break
        for k in reversed(dead):
            del graph.node[k]
    declared = {i.name for i in graph.input}  # an initializer listed as a graph input stays (old IR: a default)
    unread = [k for k, i in enumerate(graph.initializer) if i.name not in used and i.name not in declared]
    for k in reversed(unread):
        del graph.initializer[k]


def reorder_nodes(graph: Any, before: dict[str, list[Any]], drop: set[str]) -> None:
    """Rebuild the node list: ``before[out]`` goes in front of the node whose first output is ``out``; ``drop`` out."""
    nodes = []
    for n in graph.node:
        nodes += before.get(n.output[0], [])
        if n.output[0] not in drop:
            nodes.append(n)
    del graph.node[:]
    graph.node.extend(nodes)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:200] if text else ''}"


def nodes_of_types(model: Path, op_types: tuple[str, ...]) -> list[str]:
    if not op_types:
        return []
    import onnx

    return [n.name for n in onnx.load(str(model), load_external_data=False).graph.node if n.op_type in op_types]


def strip_value_info(src: Path, dst: Path) -> None:
    import onnx

    model = onnx.load(str(src))
    del model.graph.value_info[:]
    save_like(model, dst, src)


def float_tensors(model: Any) -> list[str]:
    """Graph inputs and node outputs of type float: the tensors ORT's calibrator may quantize."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output)}
    inits = {i.name for i in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in inits] + [o for n in model.graph.node for o in n.output if o]
    return [t for t in dict.fromkeys(names) if types.get(t) == onnx.TensorProto.FLOAT]


STATS_BUDGET = 256 << 20  # bytes of tensors one statistics run may return; a larger batch is run in slices


class TensorReader:
    """One session over a graph with every float tensor made an output. ``runs(feed)`` yields them for a batch a
    slice of samples at a time, so that one run returns at most ``budget`` bytes (a transformer's intermediates for a
    whole batch are gigabytes: MiniLM at 32 x 128 tokens, about 3 GB). Min, max and histogram counts summed over the
    slices are those of the whole batch; a batch whose tensors fit the budget is run whole, as it comes."""

    def __init__(self, sess: Any, wanted: list[str], budget: int = STATS_BUDGET):
        self.sess, self.wanted, self.budget = sess, wanted, budget
        self.rows: int | None = None  # samples per run, from the bytes one sample's tensors take

    def __call__(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.wanted, self.sess.run(self.wanted, dict(feed))))

    def runs(self, feed: Mapping[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        arrays = list(feed.values())
        n = arrays[0].shape[0] if arrays and arrays[0].ndim else 0
        if n < 2 or any(a.ndim == 0 or a.shape[0] != n for a in arrays):
            yield self(feed)
            return
        if self.rows is None:  # one sample, measured once: the slice size for every batch of every pass
            one = sum(v.nbytes for v in self({k: v[:1] for k, v in feed.items()}).values())
            self.rows = max(1, self.budget // max(1, one))
        if n <= self.rows:
            yield self(feed)
            return
        for i in range(0, n, self.rows):
            yield self({k: v[i:i + self.rows] for k, v in feed.items()})


def tensor_reader(src: Path) -> TensorReader:
    """One session over ``src`` with every float tensor made an output (``TensorReader``)."""
    import onnx

    model = onnx.load(str(src))
    names = float_tensors(model)
    present = {o.name for o in model.graph.output}
    for t in names:
        if t not in present:
            model.graph.output.append(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None))
    sess = session(model.SerializeToString(), 2)
    wanted = [o.name for o in sess.get_outputs() if o.name in set(names)]
    return TensorReader(sess, wanted)
