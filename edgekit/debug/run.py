"""The measurements of `edgekit debug`: per-layer SQNR streamed in chunks of tensors, whole-model cosine, latency.

Memory stays bounded: a chunk of a few layers' tensors is made graph outputs at a time (never every tensor at
once), and only running sums of signal and noise power are kept across batches.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from edgekit.backends.onnx.session import session
from edgekit.debug.layers import VARIANTS, Graphs, Layer, local_graph
from edgekit.types import Feed
from edgekit.validate.metrics import OutputError, sqnr_db

log = logging.getLogger(__name__)

CHUNK = 8  # layers whose tensors are read per pair of sessions


@dataclass
class Power:
    """Running sums of signal and noise power of one comparison."""

    signal: float = 0.0
    noise: float = 0.0
    seen: bool = False

    def update(self, ref: np.ndarray, out: np.ndarray) -> None:
        ref = np.asarray(ref, np.float64)
        diff = np.asarray(out, np.float64) - ref
        self.signal += float(np.sum(ref * ref))
        self.noise += float(np.sum(diff * diff))
        self.seen = True

    def db(self) -> float | None:
        return sqnr_db(self.signal, self.noise) if self.seen else None


@dataclass
class LayerErrors:
    """A layer's SQNRs: local (full, weight-only, activation-only) and accumulated."""

    powers: dict[str, Power] = field(default_factory=lambda: {k: Power() for k in (*VARIANTS[1:], "accumulated")})

    def db(self, key: str) -> float | None:
        return self.powers[key].db()


CAST_SUFFIX = "__edgekit_as_float"


def with_outputs(model: Any, names: Sequence[str], cast: bool = False) -> bytes:
    """``model`` (a ModelProto, not changed) with these tensors added as graph outputs; with ``cast`` each is read
    through a Cast to float32, as ``<name>__edgekit_as_float`` (float16 tensors of an FP16 artifact)."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    present = {o.name for o in copy.graph.output}
    for name in dict.fromkeys(names):
        if cast:
            copy.graph.node.append(onnx.helper.make_node("Cast", [name], [name + CAST_SUFFIX], to=onnx.TensorProto.FLOAT))
            name += CAST_SUFFIX
        if name not in present:
            copy.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return copy.SerializeToString()


Reader = Callable[[Feed], dict[str, np.ndarray]]


def onnx_reader(model: Any, threads: int, cast: bool = False) -> Callable[[list[str]], Reader]:
    """For a list of tensor names, a function reading those tensors of ``model`` (an ONNX ModelProto) for a feed
    (``cast``: float16 tensors, read as float32)."""
    def make(names: list[str]) -> Reader:
        sess = session(with_outputs(model, names, cast), threads)
        wanted = [n + CAST_SUFFIX for n in names] if cast else names
        return lambda feed: dict(zip(names, sess.run(wanted, feed)))
    return make


def layer_errors(g: Graphs, layers: list[Layer], feeds: list[Feed], threads: int,
                 progress: Callable[[str, int, int], None] | None = None,
                 artifact: Callable[[list[str]], Reader] | None = None) -> dict[str, LayerErrors]:
    """Local and accumulated SQNR of every layer over ``feeds``, ``CHUNK`` layers per pass over the data.
    ``artifact`` reads the artifact's tensors (default: ``g.artifact`` on ONNX Runtime)."""
    artifact = artifact or onnx_reader(g.artifact, threads, cast=bool(g.fp16))
    errors = {x.node: LayerErrors() for x in layers}
    for start in range(0, len(layers), CHUNK):
        part = layers[start:start + CHUNK]
        local = [x for x in part if x.local_ok and x.acts and all(a.tensor in g.ref_tensors for a in x.acts)]
        compared = [x for x in part if x.out_artifact and x.out_reference]
        ref_names = list(dict.fromkeys([a.tensor for x in local for a in x.acts] + [x.out_reference for x in compared]))
        art_names = list(dict.fromkeys(x.out_artifact for x in compared))
        inputs = {i.name for i in g.reference.graph.input}  # read from the feed itself
        wanted = [n for n in ref_names if n not in inputs]
        ref_sess = session(with_outputs(g.reference, wanted), threads) if wanted else None
        read = artifact(art_names) if art_names else None
        minis = {}
        for x in local:
            try:
                minis[x.node] = session(local_graph(g, x), threads, optimize=False)
            except Exception as exc:  # an op ONNX Runtime will not run alone (an output it needs): no local figures
                log.debug("one-layer graph of %s refused: %s", x.node, exc)
        local = [x for x in local if x.node in minis]
        for feed in feeds:
            ref = dict(feed)
            if ref_sess is not None:
                ref.update(zip(wanted, ref_sess.run(wanted, feed)))
            art = read(feed) if read is not None else {}
            for x in compared:
                errors[x.node].powers["accumulated"].update(ref[x.out_reference], art[x.out_artifact])
            for x in local:
                out = dict(zip(VARIANTS, minis[x.node].run(list(VARIANTS), {f"in{a.index}": ref[a.tensor] for a in x.acts})))
                for key in VARIANTS[1:]:
                    errors[x.node].powers[key].update(out["fp32"], out[key])
        if progress is not None:
            progress("layer errors", min(start + CHUNK, len(layers)), len(layers))
    return errors


def run_all(model: bytes | str, feeds: list[Feed], threads: int) -> list[list[np.ndarray]]:
    sess = session(model, threads)
    return [sess.run(None, feed) for feed in feeds]


def sample_cosines(reference: list[list[np.ndarray]], outputs: list[list[np.ndarray]], index: int) -> np.ndarray:
    """The cosine of output ``index`` against the reference, one per sample (a batch's rows are samples)."""
    from edgekit.validate.metrics import cosine_rows

    rows = []
    for ref, out in zip(reference, outputs):
        r, o = np.asarray(ref[index], np.float64), np.asarray(out[index], np.float64)
        n = r.shape[0] if r.ndim > 0 else 1
        rows.append(cosine_rows(r.reshape(n, -1), o.reshape(n, -1)))
    return np.concatenate(rows) if rows else np.zeros(0)


def agreement(reference: list[list[np.ndarray]], outputs: list[list[np.ndarray]]) -> dict[str, float | None]:
    """Mean cosine and SQNR of ``outputs`` against ``reference``, the worst over the model's outputs."""
    per_output = [OutputError() for _ in reference[0]] if reference else []
    for ref, out in zip(reference, outputs):
        for acc, r, o in zip(per_output, ref, out):
            acc.update(r, o)
    summaries = [acc.summary() for acc in per_output]
    if not summaries:
        return {"cosine": None, "sqnr_db": None}
    return {"cosine": min(s["cosine"] for s in summaries), "sqnr_db": min(s["sqnr_db"] for s in summaries)}


@dataclass(frozen=True)
class Timing:
    """How keep-FP32 candidates are timed against the artifact (debug/rank.py): ``warmup`` calls of each, then
    ``runs`` rounds in which the artifact and each candidate of a group are called once, in a shuffled order; ``runs``
    more at a time, up to ``max_runs``, while a cost's noise is above the timing's resolution (a loaded host)."""

    warmup: int = 5
    runs: int = 30
    max_runs: int = 120
