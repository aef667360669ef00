"""The torch.ao targets' artifact: a frozen TorchScript file with byte-reproducible contents, and the runner that
loads it with the target's quantized engine selected."""

from __future__ import annotations

import io
import json
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgekit.backends.base import Runner
from edgekit.backends.torch_ao.common import as_outputs, first_line, quantized_engine, torch_threads, torch_warnings_to_log
from edgekit.types import Feed, TensorSpec

log = logging.getLogger(__name__)

ARTIFACT = "model.pt"
META = "edgekit.json"  # an extra file inside the TorchScript archive: engine, mode, inputs, outputs
CANONICAL_CLASS = ("__torch__.edgekit", "QuantizedModel")  # the artifact's root class, whatever the model's


def to_torchscript(model: Any, example: tuple) -> tuple[Any, str]:
    """Script (or, failing that, trace) and freeze: a self-contained module, submodules inlined into one graph."""
    try:
        scripted, how = torch.jit.script(model), "torch.jit.script + torch.jit.freeze"
    except Exception as exc:
        log.debug("torch.jit.script failed, tracing instead", exc_info=True)
        scripted = torch.jit.trace(model, example, check_trace=False)
        how = (f"torch.jit.trace + torch.jit.freeze (torch.jit.script failed: {first_line(exc)}); "
               "data-dependent control flow follows the path the example input took")
    return torch.jit.freeze(scripted.eval()), how


_MANGLE = re.compile(rb"\.___torch_mangle_\d+")
_MANGLE_PATH = re.compile(r"/___torch_mangle_\d+")


def canonical_archive(raw: bytes, root_qualname: str) -> bytes:
    """The TorchScript zip with everything that depends on process history removed: debug records (they name FX's
    per-process ``<eval_with_key>.N`` files), ``___torch_mangle_N`` class namespaces (a per-process counter), and the
    root class's name (the model's Python module path), which becomes ``__torch__.edgekit.QuantizedModel``."""

    module, _, cls = root_qualname.rpartition(".")
    new_module, new_cls = CANONICAL_CLASS
    root_file = "code/" + module.replace(".", "/") + ".py"
    reader = torch._C.PyTorchFileReader(io.BytesIO(raw))
    out = io.BytesIO()
    writer = torch._C.PyTorchFileWriter(out)
    for name in reader.get_all_records():
        if name.endswith(".debug_pkl") or name == ".data/serialization_id":
            continue  # the writer computes serialization_id from the records it writes
        data = reader.get_record(name)
        if name == root_file:
            data = data.replace(root_qualname.encode(), f"{new_module}.{new_cls}".encode())
            data = re.sub(rb"^class " + re.escape(cls.encode()) + rb"\(", f"class {new_cls}(".encode(), data, count=1, flags=re.M)
            name = "code/" + new_module.replace(".", "/") + ".py"
        elif name == "data.pkl":
            data = data.replace(f"c{module}\n{cls}\n".encode(), f"c{new_module}\n{new_cls}\n".encode(), 1)
        if name.startswith("code/") or name.endswith(".pkl"):
            data, name = _MANGLE.sub(b"", data), _MANGLE_PATH.sub("", name)
        writer.write_record(name, data, len(data))
    writer.write_end_of_file()
    return out.getvalue()


def serialize(frozen: Any, example: tuple, meta: dict[str, Any]) -> tuple[bytes, str]:
    """Save the frozen module reproducibly; the canonical bytes are loaded back and must give identical outputs."""
    buf = io.BytesIO()
    torch.jit.save(frozen, buf, _extra_files={META: json.dumps(meta, sort_keys=True)})
    raw = buf.getvalue()
    try:
        data = canonical_archive(raw, frozen._c._type().qualified_name())
        with torch.no_grad():
            want = as_outputs(frozen(*example))
            got = as_outputs(torch.jit.load(io.BytesIO(data), map_location="cpu")(*example))
        if len(want) == len(got) and all(torch.equal(a, b) for a, b in zip(want, got)):
            return data, "reproducible: process-dependent names and debug records removed, reload verified bit-exact"
        problem = "the canonical archive's outputs differ from the frozen module's"
    except Exception as exc:  # an archive layout this rewrite does not know: keep torch's own bytes
        log.debug("canonical TorchScript archive failed", exc_info=True)
        problem = first_line(exc)
    return raw, f"NOT byte-reproducible ({problem}): torch.jit.save output kept as is"


class TorchAoRunner(Runner):
    """A loaded torch.ao artifact; the quantized engine is selected for every call and restored after it."""

    def __init__(self, path: Path, inputs: tuple[TensorSpec, ...], outputs: tuple[str, ...], engine: str, threads: int):
        super().__init__(inputs, outputs)
        self.engine, self.threads = engine, threads
        extra = {META: ""}
        with quantized_engine(engine), torch_warnings_to_log():  # weights are re-packed for the engine current at load
            # torch warns once per process that quantized tensors are deprecated; raised while loading or running
            # TorchScript it goes straight to stderr, raised from Python it is a warning: use the "once" up here
            torch.quantize_per_tensor(torch.zeros(1), 1.0, 0, torch.quint8)
            self.module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        meta = json.loads(extra[META] or "{}")
        if meta.get("engine", engine) != engine:
            raise ValueError(f"{path} was built for the {meta['engine']} engine, not {engine}")

    def _run(self, feed: Feed) -> list[np.ndarray]:
        with quantized_engine(self.engine), torch_threads(self.threads), torch.inference_mode():
            out = self.module(*(torch.from_numpy(feed[s.name]) for s in self.inputs))
        return [o.detach().numpy() for o in as_outputs(out)]
