"""trtserve: object detectors on TensorRT and ONNX Runtime, calibrated to INT8, served over gRPC.

Importing this package never imports TensorRT, CUDA or ONNX Runtime; backends load them lazily.
"""

__version__ = "0.1.0"
