"""Several GPUs per host (model.yaml ``device: N`` / ``device: [N, M]``) against the TensorRT and CUDA contract doubles.

The CUDA double keeps CUDA's per-thread current device and records the device of every allocation, stream and
engine; its TensorRT double fails an enqueue whose current device, stream or buffers are not the engine's (as CUDA
fails such a kernel launch). So these tests show what the backend does on which GPU, and in which order.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from trtserve.backends.base import BackendOptions
from trtserve.backends.devices import SpreadBackend
from trtserve.backends.tensorrt import TensorRTBackend
from trtserve.config import load_model_config
from trtserve.detector import Detector
from trtserve.errors import ConfigError, ModelLoadError
from trtserve.repository import ModelRepository
from trtserve.serving.arrangement import candidates, spread
from trtserve.tensorrt.builder import build_engine
from trtserve.tensorrt.keys import default_settings, records

from ...conftest import ENGINES
from ...doubles.gpu_host import FakeHost, install

TWO_GPUS = (("NVIDIA Double GPU B", (9, 0)),)  # GPU 1: another model and compute capability than GPU 0


def _repo(tmp_path: Path, **keys: object) -> ModelRepository:
    shutil.copytree(ENGINES / "shapes", tmp_path / "shapes", ignore=shutil.ignore_patterns("cache"))
    path = tmp_path / "shapes" / "model.yaml"
    doc = yaml.safe_load(path.read_text())
    doc.update(keys)
    path.write_text(yaml.safe_dump(doc))
    return ModelRepository(tmp_path)


def _host(monkeypatch: pytest.MonkeyPatch, gpus: tuple[tuple[str, tuple[int, int]], ...] = TWO_GPUS) -> FakeHost:
    return install(monkeypatch, "10.3.0", more_gpus=gpus)


def test_spread_is_round_robin_and_auto_measures_multiples_of_the_gpus() -> None:
    assert spread(4, (0, 1)) == [0, 1, 0, 1]
    assert spread(3, (2, 0)) == [2, 0, 2]
    assert candidates(4) == [1, 2, 3, 4] and candidates(4, step=2) == [2, 4] and candidates(2, step=3) == [3]
    with pytest.raises(ValueError):
        spread(0, (0,))


@pytest.mark.parametrize("value, why", [(-1, "negative"), ("1", "a string"), (1.5, "not an integer"),
                                        (True, "a bool"), ([], "an empty list"), ([0, 0], "a repeated GPU"),
                                        ([0, -2], "a negative in the list"), (64, "beyond any host")])
def test_a_bad_device_is_refused_at_config_load_naming_the_key(tmp_path: Path, value: object, why: str) -> None:
    repo = _repo(tmp_path, device=value)
    with pytest.raises(ConfigError, match=r"model\.yaml: key 'device' has value .*expected a GPU index"):
        load_model_config(repo.root / "shapes" / "model.yaml")


def test_device_n_allocates_everything_on_that_gpu_after_choosing_it(monkeypatch: pytest.MonkeyPatch,
                                                                    tmp_path: Path) -> None:
    host = _host(monkeypatch)
    config = _repo(tmp_path, device=1, engine={"auto_build": True}).get("shapes")
    assert config.devices == (1,)
    with Detector.open(config, "fp32", backend="tensorrt") as detector:
        # the engine was built for GPU 1 (its name and compute capability are the key), not for GPU 0
        (plan, record), = records(config)
        assert (record.gpu_name, record.compute_capability) == ("NVIDIA Double GPU B", "9.0")
        assert ".sm90.nvidia-double-gpu-b." in plan.name
        assert detector.backend.device == "GPU 1: NVIDIA Double GPU B (sm 9.0)"
        made = [(what, device) for what, device in host.cuda.history
                if what in ("cudaMalloc", "cudaMallocHost", "cudaStreamCreate", "deserialize_cuda_engine")]
        assert made and all(device == 1 for _, device in made), made
        first_set = host.cuda.history.index(("cudaSetDevice", 1))
        assert all(what == "cudaSetDevice" for what, _ in host.cuda.history[:first_set + 1])  # nothing before it
        # a batch from a thread that never chose a device (CUDA's default there is GPU 0) still runs on GPU 1
        out: list[object] = []
        x = np.zeros((2, 256, 256, 3), np.uint8)
        worker = threading.Thread(target=lambda: out.append(detector.detect(list(x))))
        worker.start()
        worker.join()
        assert out and all(r.ok for r in out[0])  # type: ignore[attr-defined]
        assert [d for what, d in host.cuda.history if what == "enqueue"] == [1]
    assert host.cuda.live() == 0


def test_the_double_fails_an_enqueue_on_another_gpu_as_cuda_does(monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:
    """The check the test above relies on can fail: an engine on GPU 1 run while GPU 0 is current is refused."""
    host = _host(monkeypatch, (("NVIDIA Double GPU", (8, 9)),))
    config = _repo(tmp_path, device=1).get("shapes")
    host.cuda.module("cuda.bindings.runtime").cudaSetDevice(1)
    plan = build_engine(config, default_settings(config, "fp32")).plan
    backend = TensorRTBackend(plan, BackendOptions(device_id=1)).load()
    try:
        monkeypatch.setattr(backend._cuda, "set_device", lambda index: None)  # a backend that forgot to choose
        result: list[BaseException] = []

        def run() -> None:
            try:
                backend.infer({"images": np.zeros((1, 3, 256, 256), np.float32)})
            except Exception as exc:
                result.append(exc)

        worker = threading.Thread(target=run)
        worker.start()
        worker.join()
        assert result and "failed on a batch" in str(result[0])
    finally:
        backend.close()


def test_a_device_beyond_the_visible_gpus_is_refused_at_load(monkeypatch: pytest.MonkeyPatch,
                                                              tmp_path: Path) -> None:
    _host(monkeypatch)
    config = _repo(tmp_path, device=2, engine={"auto_build": True}).get("shapes")
    with pytest.raises(ModelLoadError, match=r"model\.yaml: key 'device' is 2, but this process sees 2 GPU\(s\) "
                                             r"\(0\.\.1\)"):
        Detector.open(config, "fp32", backend="tensorrt")
    with pytest.raises(ModelLoadError, match=r"--device 5, but this process sees 2 GPU"):
        build_engine(config, default_settings(config, "fp32"), device_id=5)


def test_instances_spread_over_listed_gpus_each_with_its_own_engine(monkeypatch: pytest.MonkeyPatch,
                                                                    tmp_path: Path) -> None:
    host = _host(monkeypatch)
    config = _repo(tmp_path, device=[1, 0], engine={"auto_build": True}).get("shapes")
    options = BackendOptions(instances=4)
    with Detector.open(config, "fp32", backend="tensorrt", options=options) as detector:
        backend = detector.backend
        assert isinstance(backend, SpreadBackend) and backend.name == "tensorrt"
        assert backend.order == [1, 0, 1, 0]
        built = {r.compute_capability for _, r in records(config)}
        assert built == {"8.9", "9.0"}  # an engine per GPU model, each keyed by its own GPU
        engines = [d for what, d in host.cuda.history if what == "deserialize_cuda_engine"]
        assert sorted(engines) == [0, 1]
        frames = [np.full((256, 256, 3), 100, np.uint8)] * 2
        expected = detector.detect(frames)
        for _ in range(5):
            got = detector.detect(frames)
            assert [r.detections.class_ids.tolist() for r in got] == \
                [r.detections.class_ids.tolist() for r in expected]  # type: ignore[union-attr]
        enqueued = [d for what, d in host.cuda.history if what == "enqueue"]
        assert enqueued[:6] == [1, 0, 1, 0, 1, 0]  # round-robin, each on its own engine's GPU
        assert backend.batches_per_device == {1: 3, 0: 3}
        assert "GPU 1: NVIDIA Double GPU B (sm 9.0)" in backend.device and "GPU 0: NVIDIA Double GPU" in backend.device
    assert host.cuda.live() == 0


def test_concurrent_batches_run_on_different_gpus(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    host = _host(monkeypatch, (("NVIDIA Double GPU", (8, 9)),))
    config = _repo(tmp_path, device=[0, 1], engine={"auto_build": True}).get("shapes")
    with Detector.open(config, "fp32", backend="tensorrt", options=BackendOptions(instances=2)) as detector:
        # one engine, built once: both GPUs are the same model, so the key (and the plan) is the same
        assert len(records(config)) == 1
        backend = detector.backend
        assert isinstance(backend, SpreadBackend)
        lock = threading.Lock()
        running: dict[int, int] = {0: 0, 1: 0}
        most: dict[int, int] = {0: 0, 1: 0}
        most_at_once = [0]

        def watched(device: int, real: object) -> object:  # each GPU's own backend, noting what runs at once
            def infer(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
                with lock:
                    running[device] += 1
                    most[device] = max(most[device], running[device])
                    most_at_once[0] = max(most_at_once[0], sum(running.values()))
                try:
                    time.sleep(0.02)  # long enough for the other thread's batch to start meanwhile
                    return real(feeds)  # type: ignore[operator, no-any-return]
                finally:
                    with lock:
                        running[device] -= 1
            return infer

        for device, inner in backend.backends.items():
            monkeypatch.setattr(inner, "_infer", watched(device, inner._infer))
        x = detector.preprocessor.to_input([np.zeros((256, 256, 3), np.uint8)])
        barrier = threading.Barrier(2)
        errors: list[BaseException] = []

        def work() -> None:
            try:
                barrier.wait()
                for _ in range(10):
                    detector.infer_tensor(x)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert most_at_once[0] == 2 and most == {0: 1, 1: 1}  # two at once, never two on one GPU
        assert sum(backend.batches_per_device.values()) == 20 and min(backend.batches_per_device.values()) > 0
        enqueued = [d for what, d in host.cuda.history if what == "enqueue"]
        assert len(enqueued) == 20 and set(enqueued) == {0, 1}


def test_fewer_instances_than_listed_gpus_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _host(monkeypatch)
    config = _repo(tmp_path, device=[0, 1], engine={"auto_build": True}).get("shapes")
    with pytest.raises(ConfigError, match=r"key 'device' lists 2 GPUs \[0, 1\] but the server runs 1 instance.*"
                                          r"batcher\.instances to a multiple of 2"):
        Detector.open(config, "fp32", backend="tensorrt", options=BackendOptions(instances=1))


def test_a_failed_gpu_closes_the_ones_already_open(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    host = _host(monkeypatch)
    config = _repo(tmp_path, device=[0, 1]).get("shapes")  # no auto_build: GPU 1 (sm 9.0) has no engine
    build_engine(config, default_settings(config, "fp32"))  # GPU 0's only
    with pytest.raises(ModelLoadError, match=r"no TensorRT fp32 engine for this host \(NVIDIA Double GPU B, compute "
                                             r"9\.0"):
        Detector.open(config, "fp32", backend="tensorrt", options=BackendOptions(instances=2))
    assert host.cuda.live() == 0  # GPU 0's engine, contexts and buffers were released


def test_onnxruntime_cpu_ignores_the_device_with_a_log_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = _repo(tmp_path, device=[0, 1]).get("shapes")
    with caplog.at_level("INFO"), Detector.open(config, "fp32", options=BackendOptions(instances=2)) as detector:
        assert detector.backend.name == "onnxruntime" and not isinstance(detector.backend, SpreadBackend)
        frame = np.full((256, 256, 3), 90, np.uint8)
        assert detector.detect([frame])[0].ok
    text = caplog.text
    assert "device 0 ignored: ONNX Runtime runs it on CPUExecutionProvider, which has no GPU to choose" in text
    assert "one onnxruntime backend serves all 2 instances" in text


def test_onnxruntime_gpu_providers_get_the_device_id(tmp_path: Path) -> None:
    from trtserve.backends.onnxruntime import provider_options

    got = provider_options(["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"], "fp32",
                           tmp_path, "1.20.1", device_id=1)
    assert got[0][1]["device_id"] == 1 and got[0][1]["trt_engine_cache_enable"] is True
    assert got[1] == ("CUDAExecutionProvider", {"device_id": 1}) and got[2] == ("CPUExecutionProvider", {})
    assert json.dumps(got)  # plain values, as ONNX Runtime takes them


def test_trtserve_build_device_builds_for_that_gpu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from trtserve.cli import main

    _host(monkeypatch)
    repo = _repo(tmp_path)
    assert main(["build", "shapes", "--precision", "fp32", "--device", "1", "--repository", str(repo.root),
                 "--json"]) == 0
    built = json.loads(capsys.readouterr().out)
    assert (built["gpu_name"], built["compute_capability"]) == ("NVIDIA Double GPU B", "9.0")
    assert main(["build", "shapes", "--precision", "fp32", "--device", "7", "--repository", str(repo.root)]) == 2
    assert "--device 7, but this process sees 2 GPU(s)" in capsys.readouterr().err
