"""INT8 calibration for ONNX detectors, a library of its own (it never imports ``trtserve``).

* :mod:`calibrators.graph` — which tensors to quantize, per target runtime (``onnxruntime`` / ``tensorrt``
  placement), and which nodes stay float (the detection head, excluded nodes and op types);
* :mod:`calibrators.histogram` — streaming |x| histograms (memory independent of the number of frames);
* :mod:`calibrators.methods` — ranges from histograms: entropy (TensorRT EntropyCalibration2 semantics), minmax,
  percentile;
* :mod:`calibrators.calibrate` — ``calibrate(model, feeds)``: any iterable of ``{input_name: array}`` batches in,
  per-tensor ranges out;
* :mod:`calibrators.qdq` — the Q/DQ ONNX writer (explicit quantization: TensorRT 10/11, ONNX Runtime);
* :mod:`calibrators.trt_cache` — TensorRT calibration cache files (implicit INT8 on TensorRT 8.x/10.x);
* :mod:`calibrators.tensorrt_calibrator` — an ``IInt8EntropyCalibrator2`` that feeds batches or replays a cache;
* :mod:`calibrators.sensitivity` — keeping the most sensitive layers float until INT8 agrees with FP32;
* :mod:`calibrators.files` — atomic writes, so an interrupted run never leaves half an artifact.
* :mod:`calibrators.memory` — collecting activation histograms within a memory budget (sub-batches, tensor groups);
* :mod:`calibrators.names` — stable, unique names for unnamed nodes (legal ONNX that calibration keys by name);
* :mod:`calibrators.fold` — Constant weights into initializers, and a Q/DQ (QAT) model folded back to FP32.
"""
