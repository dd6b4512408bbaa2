"""The ``trtserve`` command line, in process (``main``) and once as a real subprocess."""

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from trtserve.bench.demo import SAMPLE_FRAMES
from trtserve.cli import main
from trtserve.datasets.synthetic import render_scene

from ...conftest import ENGINES, ROOT


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["--repository", str(ENGINES), *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_models_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "models", "--json")
    rows = json.loads(out)
    assert code == 0
    shapes = next(r for r in rows if r["name"] == "shapes")
    assert shapes["head"] == "yolov8" and "fp32" in shapes["precisions"]


def test_detect_json_and_annotated_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scene = render_scene(3, 1)
    image = tmp_path / "scene.png"
    cv2.imwrite(str(image), scene.image_bgr)
    out_image = tmp_path / "annotated.jpg"
    code, out, _ = run(capsys, "detect", str(image), "--json", "--out", str(out_image))
    assert code == 0
    (item,) = json.loads(out)
    assert len(item["detections"]) >= 1
    assert {d["label"] for d in item["detections"]} <= {"circle", "square", "triangle", "star", "cross", "ring"}
    assert cv2.imread(str(out_image)).shape == scene.image_bgr.shape


def test_detect_bad_image_fails_that_image_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good, bad = tmp_path / "good.png", tmp_path / "bad.jpg"
    cv2.imwrite(str(good), render_scene(3, 2).image_bgr)
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    code, out, _ = run(capsys, "detect", str(good), str(bad), str(tmp_path / "absent.png"), "--json")
    items = json.loads(out)
    assert code == 2
    assert "detections" in items[0]
    assert "cannot decode the image" in items[1]["error"] and "cannot read file" in items[2]["error"]


def test_unknown_model_is_one_clear_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "eval", "--model", "nope")
    assert code == 2
    assert err.startswith("trtserve: error: no model 'nope'") and "Traceback" not in err


def test_user_error_in_a_real_process_has_no_traceback(tmp_path: Path) -> None:
    bad_repo = tmp_path / "repo" / "broken"
    bad_repo.mkdir(parents=True)
    (bad_repo / "model.yaml").write_text("name: broken\nonnx: model.onnx\ninput: {height_px: 64}\n")
    proc = subprocess.run([sys.executable, "-m", "trtserve.cli", "--repository", str(tmp_path / "repo"),
                           "eval", "--model", "broken"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2
    assert "missing required key 'input.width_px'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bundled_detector_meets_the_map_target_through_eval(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "eval", "--json")  # the 300-image held-out set
    result = json.loads(out)
    assert code == 0 and result["images"] == 300 and result["precision"] == "fp32"
    assert result["map50"] >= 0.80, result
    assert result["map50_95"] >= 0.50, result


def test_demo_streams_through_a_real_server_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "demo", "--out", str(tmp_path), "--json")
    summary = json.loads(out)
    assert code == 0
    assert summary["mode"] == "grpc" and summary["server_exit_code"] == 0  # SIGTERM drained cleanly
    assert summary["mean_batch_size"] > 1
    assert summary["frames"] == SAMPLE_FRAMES
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    cap = cv2.VideoCapture(str(tmp_path / "annotated.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == SAMPLE_FRAMES
    cap.release()
    assert summary["ground_truth"]["f1_iou50"] > 0.8
    assert summary["precision"] == "int8"  # the default demo serves INT8 watched by the FP32 shadow
    assert summary["drift"]["samples"] > 0 and summary["drift"]["agreement_f1"] >= 0.9
    code, out, _ = run(capsys, "demo", "--out", str(tmp_path), "--json", "--in-process")
    in_process = json.loads(out)
    assert code == 0 and in_process["mode"] == "in-process"
    assert in_process["ground_truth"]["f1_iou50"] == pytest.approx(summary["ground_truth"]["f1_iou50"], abs=0.01)


def test_bench_reports_raw_and_end_to_end_per_batch(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "bench", "throughput", "--batch", "1", "3", "--repeats", "2", "--json")
    rows = json.loads(out)
    assert code == 0 and [r["batch"] for r in rows] == [1, 3]
    assert all(r["raw_backend_fps"] > 0 and r["end_to_end_fps"] > 0 and r["efficiency"] > 0 for r in rows)


def test_bundled_int8_artifact_keeps_the_accuracy(capsys: pytest.CaptureFixture[str]) -> None:
    """The committed INT8 Q/DQ model (trtserve calibrate, entropy, head kept float) against FP32."""
    from trtserve.calibration.compare import compare_precisions
    from trtserve.repository import ModelRepository

    config = ModelRepository(ENGINES).get("shapes")
    assert config.available_precisions() == ["fp32", "int8"]
    result = compare_precisions(config, 300)
    assert result.map50_95_fp32 - result.map50_95_int8 <= 0.015, result
    assert result.agreement_f1 >= 0.95, result


def test_stream_command_against_a_server_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from trtserve.bench.demo import sample_video
    from trtserve.serving.process import start_server_process, stop_server_process

    video = sample_video(tmp_path)
    server, address = start_server_process(ENGINES, "shapes", "fp32", tmp_path / "server.log")
    try:
        code, out, _ = run(capsys, "stream", str(video), "--server", address, "--frames", "40", "--raw",
                           "--out", str(tmp_path / "out.mp4"), "--json")
        summary = json.loads(out.splitlines()[-1])["summary"]  # JSON Lines: 40 frames, then the summary
        assert code == 0 and summary["frames"] == 40 and summary["errors"] == 0 and summary["p50_ms"] > 0
        assert cv2.VideoCapture(str(tmp_path / "out.mp4")).get(cv2.CAP_PROP_FRAME_COUNT) == 40
        code, _, err = run(capsys, "stream", str(tmp_path / "absent.mp4"), "--server", address)
        assert code == 2 and "cannot open" in err
    finally:
        assert stop_server_process(server) == 0


@pytest.mark.parametrize("kserve, raw, runs, per_request", [(False, False, 1, 1), (True, False, 1, 1),
                                                             (False, True, 2, 1), (True, False, 1, 5)])
def test_bench_streams_answers_every_frame(kserve: bool, raw: bool, runs: int, per_request: int,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "--streams", "3", "--frames-per-stream", "12", "--json", "--repeats", str(runs),
            "--frames-per-request", str(per_request)] + (["--kserve"] if kserve else []) + (["--raw"] if raw else [])
    code, out, _ = run(capsys, *argv)
    r = json.loads(out)
    sent = 36 * (runs + 1)  # the unpaced runs and one paced run
    assert code == 0 and r["frames_sent"] == sent and r["answered"] == sent and r["lost"] == 0 and r["errors"] == 0
    assert r["runs"] == runs and len(r["efficiency_runs"]) == runs and r["frames_per_request"] == per_request
    assert r["efficiency"] == pytest.approx(float(np.median(r["efficiency_runs"])), abs=0.001)
    assert r["protocol"] == ("kserve" if kserve else "trtserve.v1") and r["frames"] == ("raw" if raw else "jpeg")
    # where the CPU went: the server (started here), this client, the engine alone; the ceiling they allow
    assert min(r["server_cpu_ms_per_frame"], r["engine_cpu_ms_per_frame"], r["client_cpu_ms_per_frame"]) > 0
    assert r["fps"] > 0 and r["raw_backend_fps"] > 0 and 0 < r["efficiency"] and r["instances"] == 2
    assert r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"] and r["mean_batch"] >= 1
    if r["engine_device"] != "cpu":  # the ceiling only means something where the engine shares the cores
        assert r["cpu_bound_efficiency_ceiling"] is None
    elif runs == 1:  # (with more runs each figure is its own median: the relations hold per run)
        assert r["cpu_bound_efficiency_ceiling"] == pytest.approx(
            r["engine_cpu_ms_per_frame"] / (r["server_cpu_ms_per_frame"] + r["client_cpu_ms_per_frame"]), abs=0.002)
        assert r["raw_backend_fps"] == max(r["raw_one_call_fps"], r["raw_concurrent_fps"])
        # outside the engine: the server's CPU less its engine calls' (GetModel's engine_cpu_seconds), which the
        # engine threads' CPU holds along with normalizing and the head
        in_server = r["engine_in_server_cpu_ms_per_frame"]
        assert r["server_cpu_outside_engine_ms_per_frame"] == pytest.approx(
            r["server_cpu_ms_per_frame"] - in_server, abs=0.002)
        by_thread = r["server_cpu_ms_per_frame_by_thread"]
        assert set(by_thread) == {"engine", "runtime", "decode", "drift", "event_loop", "other"}
        assert sum(by_thread.values()) == pytest.approx(r["server_cpu_ms_per_frame"], abs=0.01)
        # /proc counts thread CPU in 10 ms ticks: two engine threads over 36 frames may be ~0.6 ms a frame off
        assert 0 < in_server <= by_thread["engine"] + by_thread["runtime"] + 0.6
    assert r["p99_bound_ms"] == pytest.approx(r["max_queue_delay_ms"] + 3 * r["batch_compute_ms"], abs=0.05)


def test_bench_refuses_raw_frames_over_kserve(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "bench", "--kserve", "--raw", "--frames-per-stream", "2")
    assert code == 2 and "--raw frames are benchmarked over trtserve.v1 only" in err
    assert "drop --raw, or --kserve / --http" in err


def minor_faults(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[7])  # minflt (man proc)


def test_steady_serving_does_not_fault_memory_in_per_batch(tmp_path: Path) -> None:
    """Normalizing with blobFromImage per frame + concatenate cost ~270 page faults per frame in the server."""
    import asyncio

    from trtserve.bench.streams import _native_load, _sample_frames
    from trtserve.serving.process import start_server_process, stop_server_process

    frames = _sample_frames(48, 90)
    process, address = start_server_process(ENGINES, "shapes", "fp32", tmp_path / "server.log")
    try:
        asyncio.run(_native_load(address, "shapes", 8, frames))  # warm-up: the heap grows to its working set
        before = minor_faults(process.pid)
        result = asyncio.run(_native_load(address, "shapes", 8, frames))
        after = minor_faults(process.pid)
    finally:
        stop_server_process(process)
    assert result["ok"] == 8 * len(frames)
    assert (after - before) / result["ok"] < 60


def test_bench_with_the_shadow_off_and_on(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "bench", "--shadow-rate", "1", "--repeats", "1", "--streams", "2",
                       "--frames-per-stream", "16", "--raw", "--json")
    r = json.loads(out)
    assert code == 0 and r["precision"] == "int8" and r["frames"] == "raw" and r["lost"] == 0
    assert r["fps_shadow_off"] > 0 and r["fps_shadow_on"] > 0 and len(r["shadow_throughput_ratios"]) == 1
    assert r["shadow_samples"] + r["shadow_skipped"] > 0 and r["drift_agreement_f1"] > 0.9
    code, _, err = run(capsys, "bench", "--shadow-rate", "1", "--precision", "fp32")
    assert code == 2 and "the shadow is the FP32 model" in err


def test_detect_refuses_a_threshold_out_of_range(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "scene.png"
    cv2.imwrite(str(image), render_scene(3, 1).image_bgr)
    code, _, err = run(capsys, "detect", str(image), "--score-threshold", "-0.1")
    assert code == 2 and "thresholds.score is -0.1; expected 0..1" in err


def test_bench_against_a_running_server(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from trtserve.serving.process import start_server_process, stop_server_process

    server, address = start_server_process(ENGINES, "shapes", "fp32", tmp_path / "server.log")
    try:
        code, out, _ = run(capsys, "bench", "--server", address, "--streams", "2", "--frames-per-stream", "8")
        assert code == 0 and "2 streams x 8 jpeg frames over trtserve.v1" in out and "lost 0" in out
        assert "CPU per frame: server (not started here), client" in out  # its CPU is not ours to read
        code, out, _ = run(capsys, "bench", "--server", address, "--streams", "2", "--frames-per-stream", "8",
                           "--json")
        r = json.loads(out)
        assert r["server_cpu_ms_per_frame"] is None and r["cpu_bound_efficiency_ceiling"] is None
        assert r["server_cpu_outside_engine_ms_per_frame"] is None
        assert r["answered"] == 32 and r["efficiency"] > 0
    finally:
        stop_server_process(server)


def test_bench_refuses_frames_per_request_where_a_message_holds_one_frame(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "bench", "--frames-per-request", "4", "--frames-per-stream", "2")
    assert code == 2 and "--frames-per-request applies to --kserve" in err
    code, _, err = run(capsys, "bench", "--kserve", "--frames-per-request", "0", "--frames-per-stream", "2")
    assert code == 2 and "expected at least 1" in err
