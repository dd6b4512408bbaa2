"""The shadow's restart schedule: exponential, capped, reset after a healthy period (a pure function of events)."""

import pytest

from trtserve.monitoring.drift import DriftSummary, RestartBackoff, RestartSchedule
from trtserve.monitoring.shadow import _picklable


def test_a_crash_loop_backs_off_exponentially_up_to_the_cap() -> None:
    schedule = RestartSchedule(RestartBackoff())  # the defaults: 1 s doubling to 60 s, reset after 60 s up
    delays = [schedule.after_death(up_for_s=0.5) for _ in range(8)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]


def test_failed_starts_back_off_too_and_a_healthy_period_resets_the_delay() -> None:
    schedule = RestartSchedule(RestartBackoff(initial_s=0.1, max_s=1.0, reset_after_s=5.0))
    assert schedule.after_death(up_for_s=100.0) == 0.1
    assert [schedule.after_failed_start() for _ in range(5)] == pytest.approx([0.2, 0.4, 0.8, 1.0, 1.0])
    assert schedule.after_death(up_for_s=4.9) == 1.0  # not up long enough: still backing off
    assert schedule.after_death(up_for_s=5.0) == 0.1  # stayed up reset_after_s: from the start again
    assert schedule.after_death(up_for_s=0.0) == 0.2


@pytest.mark.parametrize("bad", [{"initial_s": 0.0}, {"initial_s": 2.0, "max_s": 1.0}, {"factor": 0.5},
                                 {"poll_s": 0.0}, {"reset_after_s": -1.0}])
def test_a_nonsensical_backoff_is_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="invalid shadow restart backoff"):
        RestartBackoff(**bad)


def test_the_summary_has_the_protos_fields() -> None:
    from dataclasses import fields

    from trtserve.v1 import detection_pb2 as pb

    assert [f.name for f in fields(DriftSummary)] == [f.name for f in pb.DriftSummary.DESCRIPTOR.fields]


def test_an_error_that_does_not_pickle_reaches_the_server_as_its_text() -> None:
    class LocalError(Exception):  # a local class does not pickle
        pass

    kept = ValueError("bad tensor")
    assert _picklable(kept) is kept
    replaced = _picklable(LocalError("boom"))
    assert type(replaced) is RuntimeError and str(replaced) == "LocalError: boom"
