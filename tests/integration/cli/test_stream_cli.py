"""``trtserve stream``: JSON Lines per frame with --json, --realtime pacing at the source's rate, FFmpeg's own
lines about a broken source rate-limited instead of printed raw, and --address as a second spelling of --server."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trtserve.bench.demo import sample_video
from trtserve.cli import main
from trtserve.cli.serve import paced
from trtserve.vision.video import Video

from ...conftest import ENGINES, ROOT


def test_paced_keeps_the_sources_schedule() -> None:
    now = [100.0]
    waits: list[float] = []

    def sleep(s: float) -> None:
        waits.append(round(s, 6))
        now[0] += s

    got = []
    for f in paced(iter(range(7)), 10.0, clock=lambda: now[0], sleep=sleep):  # type: ignore[arg-type]
        got.append(f)
        if f == 2:
            now[0] += 0.35  # slow on frame 2 (now +0.55): frames 3..5 (due +0.3..+0.5) are late, given at once
    assert got == list(range(7))
    assert waits == [0.1, 0.1, 0.05]  # frames 1, 2 on time; frame 6 due at +0.6: the schedule did not drift


def test_json_lines_per_frame_and_realtime_pacing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from trtserve.serving.process import start_server_process, stop_server_process

    video = sample_video(tmp_path)
    fps = Video(video).fps
    frames = 12
    server, address = start_server_process(ENGINES, "shapes", "fp32", tmp_path / "server.log")
    try:
        t0 = time.monotonic()
        code = main(["--repository", str(ENGINES), "stream", str(video), "--address", address, "--frames",
                     str(frames), "--json", "--realtime"])
        elapsed = time.monotonic() - t0
        out, err = capsys.readouterr()
    finally:
        assert stop_server_process(server) == 0
    lines = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and len(lines) == frames + 1, err
    assert [f["frame"] for f in lines[:-1]] == list(range(frames))
    assert all(f["server_ms"] > 0 and isinstance(f["detections"], list) for f in lines[:-1])
    assert sum(len(f["detections"]) for f in lines[:-1]) > 0
    assert {"label", "class_id", "score", "box_xyxy"} <= set(next(d for f in lines[:-1] for d in f["detections"]))
    assert lines[-1]["summary"]["frames"] == frames and lines[-1]["summary"]["errors"] == 0
    assert elapsed >= (frames - 1) / fps  # paced at the file's own rate, not as fast as answered


@pytest.mark.parametrize("command", [["stream", "--server", "127.0.0.1:1"], ["detect", "--repository", str(ENGINES)]])
def test_ffmpeg_lines_about_a_broken_source_are_not_printed_raw(tmp_path: Path, command: list[str]) -> None:
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40)  # an mp4 header, no movie
    result = subprocess.run([sys.executable, "-m", "trtserve.cli", command[0], str(broken), *command[1:]],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    if command[0] == "stream":  # the whole command fails; detect fails that input alone, on stdout
        assert lines[-1].startswith("trtserve: error: ") and "video file" in lines[-1]
    else:
        assert result.stdout.startswith(f"{broken}: error: cannot open")
    assert not any(line.startswith("[") for line in lines), result.stderr  # e.g. "[mov,mp4,... @ 0x..] moov atom"
    native = [line for line in lines if "trtserve.native" in line]
    assert native and all("native decoder: [" in line for line in native)  # said once, through the filter


def test_address_is_the_same_option_as_server_everywhere() -> None:
    from trtserve.cli.parser import build_parser

    parser = build_parser()
    for argv, dest in ((["stream", "0"], "server"), (["models"], "server"), (["bench"], "server"),
                       (["recalibrate", "shapes"], "server"), (["health"], "address")):
        for spelling in ("--server", "--address"):
            assert getattr(parser.parse_args([*argv, spelling, "h:9"]), dest) == "h:9", (argv, spelling)
