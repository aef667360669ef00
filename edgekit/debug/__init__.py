"""Per-layer analysis of a built INT8 target (`edgekit debug`): which layers lose the accuracy, and what keeping
each in FP32 would recover per millisecond. docs/debug.md explains the numbers."""

from edgekit.debug.analysis import analyze
from edgekit.debug.names import resolve_layer_names
from edgekit.debug.report import BlockReport, DebugReport, KeepFp32, LayerReport

__all__ = ["BlockReport", "DebugReport", "KeepFp32", "LayerReport", "analyze", "resolve_layer_names"]
