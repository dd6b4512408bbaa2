"""``trtserve bench transport`` briefly: the bare servicer answers every frame at each rate, and its CPU per frame is
read per thread from /proc (its figures are the benchmark's business)."""

import subprocess
import sys

import pytest

from trtserve.bench import transport
from trtserve.errors import UsageError

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the server's threads in /proc")


def test_the_transport_bench_answers_every_frame_and_measures_the_server() -> None:
    report = transport.run(rates_fps=(100, 400), streams=2, seconds=1.0)
    assert [r.offered_fps for r in report.rates] == [100, 400] and report.frame_bytes > 10_000
    for rate in report.rates:
        assert rate.frames == rate.offered_fps and rate.lost == 0  # 1 s at the rate
    # the servicer's process worked for the frames (CPU time comes in 10 ms ticks: summed over both rates)
    assert sum(r.event_loop_ms_per_frame * r.frames for r in report.rates) > 0


def test_the_transport_bench_refuses_a_rate_of_zero() -> None:
    with pytest.raises(UsageError, match="rates above 0"):
        transport.run(rates_fps=(0,))


def test_the_cli_prints_one_line_per_rate() -> None:
    out = subprocess.run([sys.executable, "-m", "trtserve.cli", "bench", "transport", "--rates", "40", "--streams",
                          "2", "--seconds", "0.5"], capture_output=True, text=True, timeout=120, check=True).stdout
    assert "40 frames/s offered" in out and "lost 0" in out
