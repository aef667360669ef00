"""TensorRT targets: a precision-explicit ONNX (FP16 casts or INT8 QDQ) built into a strongly typed engine where
TensorRT and a CUDA GPU exist; elsewhere that ONNX is measured on ONNX Runtime CPU as a host proxy.

``recipe`` (the profile's [recipe]), ``fp16`` (the FP16 graph and its emulation), ``int8`` (the TensorRT-ready QDQ
graph), ``engine`` (building and running the engine; ``tensorrt`` is imported there only), ``backend`` (the Backend).
"""

from edgekit.backends.tensorrt.backend import TensorRTBackend

__all__ = ["TensorRTBackend"]
