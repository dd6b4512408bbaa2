"""INT8 calibration for ONNX detectors, a library of its own (it never imports ``trtserve``).

Present so far: streaming |x| histograms (:mod:`calibrators.histogram`), range methods
(:mod:`calibrators.methods`: entropy with TensorRT EntropyCalibration2 semantics, minmax,
percentile) and TensorRT calibration cache files (:mod:`calibrators.trt_cache`). Collecting
activations from an ONNX model and writing the Q/DQ ONNX are still to come.
"""
