"""INT8 calibration for ONNX detectors (entropy / minmax / percentile; Q/DQ ONNX and TensorRT caches).

A library of its own: it never imports ``trtserve``. The calibration code itself is tracked in the
calibrators issue; this package currently only reserves the name in the distribution.
"""
