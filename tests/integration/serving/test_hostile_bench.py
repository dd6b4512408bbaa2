"""``trtserve bench hostile`` end to end, briefly: every bomb refused, every call answered (its figures are the
benchmark's business, not a test's)."""

from trtserve.bench import hostile


def test_the_hostile_bench_answers_every_call_and_refuses_every_bomb() -> None:
    report = hostile.run(None, "shapes", "fp32", seconds=1.0, repeats=1, flood_calls=(16,))
    i = report.interference
    assert i.bombs_sent > 0 and i.bombs_refused == i.bombs_sent
    assert i.good_p50_ms_alone > 0 and i.good_p50_ms_beside_bombs > 0
    (f,) = report.flood
    assert f.calls_per_s > 0 and f.lost == 0 and f.other_errors == 0 and f.refused > 0 and f.ok > 0
    assert set(report.as_dict()) == {"model", "precision", "interference", "flood"}
