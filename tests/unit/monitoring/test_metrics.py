import socket
import urllib.request
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from prometheus_client.parser import text_string_to_metric_families

from trtserve.config import DriftSpec
from trtserve.errors import ConfigError
from trtserve.monitoring.devices import parse_tegrastats
from trtserve.monitoring.metrics import Metrics, ModelMetrics, start_metrics_http
from trtserve.monitoring.ranges import qdq_ranges
from trtserve.monitoring.shadow import compare_detections, compare_raw, out_of_range_fraction
from trtserve.serving.settings import load_server_settings
from trtserve.vision.detections import Detections


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_endpoint_serves_model_metrics_with_bounded_labels() -> None:
    metrics = Metrics()
    m = ModelMetrics(metrics, "shapes", "int8")
    m.track(lambda: 3, lambda: 1, 64)
    m.frame_ok(0.001, 0.002, 0.004, 0.0005, 0.008)
    m.frame_error("INVALID_ARGUMENT")
    m.dropped.inc()
    server, port = start_metrics_http(metrics.registry, "127.0.0.1", 0)
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        server.shutdown()
        server.server_close()
    s = _samples(text)
    key = (("code", "OK"), ("model", "shapes"), ("outcome", "ok"), ("precision", "int8"))
    assert s[("trtserve_frames_total", key)] == 1
    assert s[("trtserve_frames_total", (("code", "INVALID_ARGUMENT"), ("model", "shapes"), ("outcome", "error"),
                                        ("precision", "int8")))] == 1
    assert s[("trtserve_queue_depth", (("model", "shapes"),))] == 3
    assert s[("trtserve_queue_capacity", (("model", "shapes"),))] == 64
    total = (("model", "shapes"), ("precision", "int8"), ("stage", "total"))
    assert s[("trtserve_stage_duration_seconds_count", total)] == 1
    assert s[("trtserve_stage_duration_seconds_sum", total)] == pytest.approx(0.008)
    assert any(name == "process_resident_memory_bytes" for name, _ in s)
    labels = {k for (_, ls) in s for k, _ in ls}
    assert labels <= {"model", "precision", "outcome", "code", "stage", "le", "method", "tensor", "version",
                      "backend", "runtime_version", "device", "gpu"}


def test_metrics_port_in_use_is_a_clear_error() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ConfigError, match=rf"metrics port {port} on 127.0.0.1 is already in use; choose another"):
            start_metrics_http(Metrics(process=False).registry, "127.0.0.1", port)


def test_tegrastats_line() -> None:
    line = ("RAM 2448/7620MB (lfb 2x4MB) SWAP 0/3810MB CPU [12%@1510,9%@1510] EMC_FREQ 0% GR3D_FREQ 45% "
            "cpu@48.5C gpu@47C")
    sample = parse_tegrastats(line)
    assert sample.gpu_utilization_ratio == pytest.approx(0.45)
    assert sample.ram_used_bytes == 2448 * 1024 * 1024 and sample.ram_total_bytes == 7620 * 1024 * 1024
    assert parse_tegrastats("garbage").gpu_utilization_ratio is None


def _dets(boxes: list[list[float]], scores: list[float], classes: list[int]) -> Detections:
    return Detections(np.array(boxes, np.float32).reshape(-1, 4), np.array(scores, np.float32),
                      np.array(classes, np.int64))


def test_compare_detections_counts_missed_extra_and_score_difference() -> None:
    shadow = _dets([[0, 0, 10, 10], [20, 20, 40, 40], [50, 50, 60, 60]], [0.9, 0.8, 0.7], [0, 1, 2])
    served = _dets([[0, 0, 10, 11], [20, 20, 40, 40], [80, 80, 90, 90]], [0.85, 0.6, 0.5], [0, 2, 2])
    d = compare_detections(served, shadow, 0.5)
    # box 1 matches; box 2 has the wrong class; the third pair does not overlap
    assert (d.counts.true_positives, d.counts.false_positives, d.counts.false_negatives) == (1, 2, 2)
    assert d.counts.f1 == pytest.approx(2 / 6)
    assert d.mean_score_abs_diff == pytest.approx(0.05, abs=1e-6)
    assert d.counts.mean_iou == pytest.approx(100 / 110, abs=1e-6)
    assert compare_detections(_dets([], [], []), _dets([], [], []), 0.5).counts.f1 == 1.0


def test_compare_raw_and_out_of_range() -> None:
    a = np.array([1.0, 2.0, 3.0])
    assert compare_raw(a, a) == pytest.approx((1.0, 0.0))
    cosine, rel = compare_raw(-a, a)
    assert cosine == pytest.approx(-1.0) and rel == pytest.approx(2.0)
    assert out_of_range_fraction(np.array([-2.0, -0.5, 0.0, 0.9, 1.5]), (-1.0, 1.0)) == (2, 5)


def test_qdq_ranges_read_activation_ranges_not_weights(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    inits = [numpy_helper.from_array(np.array(0.5, np.float32), "s_int8"),
             numpy_helper.from_array(np.array(0, np.int8), "z_int8"),
             numpy_helper.from_array(np.array(0.1, np.float32), "s_u8"),
             numpy_helper.from_array(np.array(128, np.uint8), "z_u8"),
             numpy_helper.from_array(np.ones(4, np.float32), "w")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s_int8", "z_int8"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s_int8", "z_int8"], ["xd"]),
             helper.make_node("Relu", ["xd"], ["r"]),
             helper.make_node("QuantizeLinear", ["r", "s_u8", "z_u8"], ["rq"]),
             helper.make_node("DequantizeLinear", ["rq", "s_u8", "z_u8"], ["rd"]),
             helper.make_node("QuantizeLinear", ["w", "s_int8", "z_int8"], ["wq"]),
             helper.make_node("DequantizeLinear", ["wq", "s_int8", "z_int8"], ["wd"]),
             helper.make_node("Mul", ["rd", "wd"], ["y"])]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 13)])
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    ranges = qdq_ranges(path)
    assert set(ranges) == {"x", "r"}
    assert ranges["x"] == pytest.approx((-64.0, 63.5))
    assert ranges["r"] == pytest.approx((-12.8, 12.7))


def test_drift_settings_precedence_and_errors(tmp_path: Path) -> None:
    cfg = tmp_path / "server.yaml"
    cfg.write_text("drift: {enabled: true, sample_rate: 0.2, agreement_threshold: 0.8}\nmetrics_port: 9100\n")
    s = load_server_settings(cfg, environ={"TRTSERVE_SHADOW_RATE": "0.5"})
    assert s.metrics_port == 9100
    assert (s.drift.enabled, s.drift.sample_rate, s.drift.agreement_threshold) == (True, 0.5, 0.8)
    flag = load_server_settings(None, environ={}, overrides={"drift.sample_rate": 0.05})
    assert flag.drift.enabled and flag.drift.sample_rate == 0.05  # --shadow-rate alone turns it on
    off = load_server_settings(None, environ={}, overrides={"drift.sample_rate": 0.0})
    assert not off.drift.enabled
    assert load_server_settings(None, environ={}).drift == DriftSpec()
    cfg.write_text("drift: {sample_rate: 2}\n")
    with pytest.raises(ConfigError, match=r"key 'drift.sample_rate' has value 2; expected a number in \[0.0, 1.0\]"):
        load_server_settings(cfg, environ={})
    cfg.write_text("drift: {sampel_rate: 0.1}\n")
    with pytest.raises(ConfigError, match=r"unknown key 'drift\.sampel_rate'"):
        load_server_settings(cfg, environ={})
    cfg.write_text("metrics_port: 70000\n")
    with pytest.raises(ConfigError, match="key 'metrics_port' has value 70000"):
        load_server_settings(cfg, environ={})


def test_environment_and_flag_drift_keys_win_over_model_yaml() -> None:
    s = load_server_settings(None, environ={"TRTSERVE_SHADOW_RATE": "0"}, overrides={"drift.sample_rate": None})
    assert s.drift_overrides == {"sample_rate": 0.0}
    flag = load_server_settings(None, environ={"TRTSERVE_SHADOW_RATE": "0"}, overrides={"drift.sample_rate": 0.1})
    assert flag.drift_overrides == {"sample_rate": 0.1}
    assert load_server_settings(None, environ={}).drift_overrides == {}
