"""``head: auto`` on exports whose output dims are all symbolic: the shapes of one real batch decide."""

import pytest

from trtserve.config import HeadSpec
from trtserve.errors import ModelLoadError
from trtserve.heads.factory import make_head

SPEC = HeadSpec("auto", 0.25, 0.5, 100, False)


def test_symbolic_outputs_are_resolved_by_the_probe_and_only_then() -> None:
    calls = []

    def probe(shape: tuple[int, ...]):
        def run() -> list[tuple[int, ...]]:
            calls.append(shape)
            return [shape]
        return run

    assert make_head(SPEC, 80, [(None, None, None)], probe=probe((1, 84, 8400))).type == "yolov8"
    assert make_head(SPEC, 80, [(None, None, None)], probe=probe((1, 25200, 85))).type == "yolov5"
    assert make_head(SPEC, 80, [(None, None, None)], probe=probe((1, 300, 6))).type == "end2end"
    assert len(calls) == 3
    assert make_head(SPEC, 80, [(None, 84, 8400)], probe=probe((1, 84, 8400))).type == "yolov8"
    assert len(calls) == 3  # the declared shapes were enough: no batch run


def test_probe_that_fits_nothing_says_what_it_saw() -> None:
    with pytest.raises(ModelLoadError, match=r"output shapes \[\(None, None, None\)\] \(one batch gave \[\(1, 9, 9\)\]"
                                             r"\) with 3 classes \(matching head types: none\)"):
        make_head(SPEC, 3, [(None, None, None)], probe=lambda: [(1, 9, 9)])
