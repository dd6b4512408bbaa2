import numpy as np
import pytest

from trtserve.backends.base import BackendOptions
from trtserve.backends.registry import backend_class
from trtserve.errors import ConfigError, InvalidFrameError, ModelLoadError

from ...conftest import ENGINES

MODEL = ENGINES / "shapes" / "model.onnx"


def test_metadata_and_dynamic_batch() -> None:
    with backend_class("onnxruntime")(MODEL, BackendOptions(intra_op_threads=1, graph_optimization="basic")) as b:
        (inp,) = b.inputs
        (out,) = b.outputs
        assert (inp.name, inp.dtype, inp.shape) == ("images", np.dtype(np.float32), (None, 3, 256, 256))
        assert out.shape == (None, 10, 1344)
        for batch in (1, 3):
            result = b.infer({"images": np.zeros((batch, 3, 256, 256), np.float32)})
            assert result["output0"].shape == (batch, 10, 1344)


@pytest.mark.parametrize("feeds, message", [
    ({"pixels": np.zeros((1, 3, 256, 256), np.float32)}, "do not match the model's"),
    ({"images": np.zeros((1, 3, 256, 256), np.float64)}, "dtype float64"),
    ({"images": np.zeros((1, 3, 128, 256), np.float32)}, r"shape \[1, 3, 128, 256\]"),
])
def test_bad_feeds_are_rejected_before_the_runtime(feeds: dict, message: str) -> None:
    with backend_class("onnxruntime")(MODEL) as b, pytest.raises(InvalidFrameError, match=message):
        b.infer(feeds)


def test_unavailable_provider_and_unknown_settings() -> None:
    with pytest.raises(ModelLoadError, match="not available here"):
        backend_class("onnxruntime")(MODEL, BackendOptions(providers=("NoSuchExecutionProvider",))).load()
    with pytest.raises(ModelLoadError, match="graph_optimization 'max'"):
        backend_class("onnxruntime")(MODEL, BackendOptions(graph_optimization="max")).load()
    with pytest.raises(ConfigError, match="unknown backend 'tensorflow'"):
        backend_class("tensorflow")


def test_use_before_load_is_a_programming_error() -> None:
    b = backend_class("onnxruntime")(MODEL)
    with pytest.raises(RuntimeError, match="before load"):
        _ = b.inputs


def test_spin_wait_off_reaches_the_session() -> None:
    key = "session.intra_op.allow_spinning"
    off = backend_class("onnxruntime")(ENGINES / "shapes" / "model.onnx", BackendOptions(spin_wait=False))
    with off.load():
        assert off._session.get_session_options().get_session_config_entry(key) == "0"  # type: ignore[attr-defined]
    default = backend_class("onnxruntime")(ENGINES / "shapes" / "model.onnx")
    with default.load(), pytest.raises(RuntimeError):  # not set: ONNX Runtime's default (spinning)
        default._session.get_session_options().get_session_config_entry(key)  # type: ignore[attr-defined]


def test_a_runtime_failure_tells_an_incident_id_and_logs_the_runtime_s_own_text(
        tmp_path, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    """ONNX Runtime's message names its source files and the graph's nodes: the log's business, not a client's."""
    import onnx
    from onnx import TensorProto, helper

    from trtserve.errors import BackendError

    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [3, -1])
    graph = helper.make_graph([helper.make_node("Reshape", ["x", "shape"], ["y"], name="secret_node")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [shape])
    path = tmp_path / "reshape.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    with backend_class("onnxruntime")(path) as b, pytest.raises(BackendError) as info:
        b.infer({"x": np.zeros((1, 4), np.float32)})  # 4 values cannot be reshaped to 3 rows
    message = str(info.value)
    assert "incident" in message and "secret_node" not in message and "onnxruntime_src" not in message
    assert "ONNXRuntimeError" not in message
    incident = message.split("incident ")[1].split(";")[0]
    assert any(incident in r.getMessage() and "secret_node" in r.getMessage() for r in caplog.records)
