"""ONNX Runtime targets: FP32 (offline-optimized), static INT8 QDQ with calibration, dynamic INT8.

``recipe`` (the profile's [recipe]), ``backend`` (the Backend: the smallest real one and the documentation of the
interface), ``dynamic`` (dynamic INT8 and the passes it runs), ``matmul_stats`` (what calibration shows of MatMul
inputs), ``passes/`` (graph rewrites, one per file). Static INT8 is the shared QDQ core in ``backends/onnx/qdq.py``.
"""

from edgekit.backends.ort.backend import OrtBackend

__all__ = ["OrtBackend"]
