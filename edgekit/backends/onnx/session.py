"""The one place edgekit makes an ONNX Runtime session (CPU, fixed threads), and the Runner over it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgekit.backends.base import Runner
from edgekit.types import Feed, TensorSpec

def session(model: str | bytes, threads: int, optimize: bool = True, save_to: Path | None = None, spinning: bool = False,
            profile_prefix: str | None = None, external_data: bool = False) -> Any:
    """An ONNX Runtime CPU session with a fixed thread count (timing is only comparable with threads fixed; 0 is
    ONNX Runtime's default, one per core, for sessions that only compute).

    Idle intra-op workers sleep instead of spin-waiting (``spinning=True`` turns spinning back on): edgekit always
    has several runners taking turns in one process (the validator's interleaved timing: ONNX Runtime sessions and
    torch), and one session's spinning workers steal the cores of the next. On a loaded host that stall dominates:
    docs/gates.md ("How latency is timed") has the measurement.
    ``profile_prefix``: ONNX Runtime's profiler on, its trace written under that prefix by ``end_profiling()``.
    ``external_data``: the model saved to ``save_to`` keeps its weights in ``<save_to name>.data`` beside it."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    if profile_prefix is not None:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    if save_to is not None:
        # Offline optimization saved to disk stays portable only at the BASIC level (standard ONNX ops).
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        opts.optimized_model_filepath = str(save_to)
        if external_data:
            opts.add_session_config_entry("session.optimized_model_external_initializers_file_name", f"{save_to.name}.data")
            opts.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


class OrtRunner(Runner):
    """A session over one file. Its idle workers sleep (``spinning=False``) unless told otherwise: every runner is
    timed taking turns with others in one process (validate/latency.py), where spinning ORT workers steal the cores
    of the next runner; torch's OpenMP threads worst of all (an ort-fp32 session spinning beside a torch.ao artifact
    on 2 threads made its calls hundreds of times slower: docs/gates.md)."""

    def __init__(self, path: Path, inputs: tuple[TensorSpec, ...], outputs: tuple[str, ...], threads: int, spinning: bool = False):
        super().__init__(inputs, outputs)
        self.path, self.threads = Path(path), threads
        self.session = session(str(path), threads, spinning=spinning)
        self._names = [o.name for o in self.session.get_outputs()]

    def _run(self, feed: Feed) -> list[np.ndarray]:
        return self.session.run(self._names, feed)
