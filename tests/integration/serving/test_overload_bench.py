"""``trtserve bench overload`` end to end, briefly, on a server with instances auto, normalization in the model and
uvloop: every frame answered under both stream policies and unary (its figures are the benchmark's business)."""

import pytest

from trtserve.bench import overload


def test_the_overload_bench_loses_no_frame_under_either_policy() -> None:
    pytest.importorskip("uvloop")
    report = overload.run(None, "shapes", "fp32", streams=2, seconds=1.0, factors=(2.0,),
                          server_args=("--instances", "auto", "--normalize-in-model", "--event-loop", "uvloop"))
    assert report.peak_fps > 0 and report.lost == 0
    assert [(p.mode, p.offered_x_peak) for p in report.phases] == [("block", 2.0), ("drop_oldest", 2.0),
                                                                   ("unary", 2.0)]
    for phase in report.phases:
        assert phase.sent > 0 and phase.lost == 0 and phase.other_errors == 0 and phase.goodput_fps > 0
        by_thread = phase.server_cpu_ms_per_ok_by_thread  # the server was started here: read per thread
        assert by_thread is not None
        assert set(by_thread) == {"engine", "runtime", "decode", "drift", "event_loop", "other"}
        client_ms = phase.client_cpu_ms_per_ok
        assert by_thread["engine"] > 0 and client_ms is not None and client_ms > 0  # 1 s of frames: many ticks
    assert set(report.as_dict()) == {"model", "precision", "streams", "peak_fps", "phases", "lost"}
