"""The ONNX layer the ONNX-producing backends share (ort, tensorrt); it imports no backend.

``session`` (the one ONNX Runtime session maker, and the runner over it), ``graph`` (a graph index, pruning, shape
inference, tensor read-out), ``calibration`` (ONNX Runtime's calibration-reader protocol over edgekit's samples),
``qdq`` (static QDQ quantization: the core of ort-int8 and tensorrt-int8), ``qdq_ranges`` (what edgekit measures
and decides before ONNX Runtime's quantizer runs).
"""
