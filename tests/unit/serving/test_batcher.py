import asyncio
import time

import pytest

from trtserve.errors import BackendError, ConfigError, DeadlineExceededError, NotServingError, QueueFullError
from trtserve.serving.batcher import DynamicBatcher


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def recorder(fail_on: object = None, delay_s: float = 0.0):  # type: ignore[no-untyped-def]
    seen: list[list[object]] = []

    async def run_batch(items: list[object]) -> list[object]:
        seen.append(list(items))
        if delay_s:
            await asyncio.sleep(delay_s)
        if fail_on is not None and fail_on in items:
            raise RuntimeError("boom")
        return [f"r{i}" for i in items]

    return run_batch, seen


def test_uneven_load_is_split_into_full_batches_and_results_go_back_per_item() -> None:
    async def main() -> None:
        fn, seen = recorder()
        b = DynamicBatcher(fn, max_batch_size=8, max_queue_delay_ms=50, max_queue_size=100)
        await b.start()
        results = await asyncio.gather(*(b.submit(i) for i in range(19)))
        await b.stop()
        assert results == [f"r{i}" for i in range(19)]
        assert sorted(len(s) for s in seen) == [3, 8, 8]
        assert b.stats.mean_batch_size == pytest.approx(19 / 3)
    run(main())


def test_a_partial_batch_leaves_after_the_queue_delay() -> None:
    async def main() -> None:
        fn, seen = recorder()
        b = DynamicBatcher(fn, max_batch_size=8, max_queue_delay_ms=30, max_queue_size=100)
        await b.start()
        t0 = time.monotonic()
        assert await asyncio.gather(b.submit(1), b.submit(2)) == ["r1", "r2"]
        assert time.monotonic() - t0 >= 0.025  # it waited for company, then went
        assert seen == [[1, 2]]
        await b.stop()
    run(main())


def test_full_queue_is_rejected_at_once() -> None:
    async def main() -> None:
        fn, _ = recorder(delay_s=0.05)
        b = DynamicBatcher(fn, max_batch_size=1, max_queue_delay_ms=0, max_queue_size=2, instances=1)
        await b.start()
        tasks = [asyncio.create_task(b.submit(0))]
        await asyncio.sleep(0.01)  # item 0 is running
        tasks += [asyncio.create_task(b.submit(i)) for i in (1, 2)]
        await asyncio.sleep(0.001)  # items 1 and 2 fill the queue
        with pytest.raises(QueueFullError, match="queue full"):
            await b.submit(99)
        assert await asyncio.gather(*tasks) == ["r0", "r1", "r2"]
        await b.stop()
    run(main())


def test_an_exception_fails_only_its_batch() -> None:
    async def main() -> None:
        fn, _ = recorder(fail_on="bad")
        b = DynamicBatcher(fn, max_batch_size=2, max_queue_delay_ms=5, max_queue_size=10)
        await b.start()
        results = await asyncio.gather(b.submit("a"), b.submit("bad"), b.submit("c"), b.submit("d"),
                                       return_exceptions=True)
        await b.stop()
        assert isinstance(results[0], BackendError) and isinstance(results[1], BackendError)
        assert results[2:] == ["rc", "rd"]
        assert b.stats.failed_batches == 1
    run(main())


def test_a_wrong_result_count_is_an_error_not_a_shifted_answer() -> None:
    async def main() -> None:
        async def short(items: list[int]) -> list[int]:
            return items[:-1]

        b = DynamicBatcher(short, max_batch_size=4, max_queue_delay_ms=5, max_queue_size=10)
        await b.start()
        results = await asyncio.gather(b.submit(1), b.submit(2), return_exceptions=True)
        await b.stop()
        assert all(isinstance(r, BackendError) and "returned 1 results" in str(r) for r in results)
    run(main())


def test_expired_and_abandoned_items_never_reach_the_engine() -> None:
    async def main() -> None:
        fn, seen = recorder()
        b = DynamicBatcher(fn, max_batch_size=8, max_queue_delay_ms=20, max_queue_size=10)
        await b.start()
        expired = asyncio.create_task(b.submit("late", deadline_s=time.monotonic() + 0.001))
        abandoned = asyncio.create_task(b.submit("gone"))
        kept = asyncio.create_task(b.submit("kept"))
        await asyncio.sleep(0.002)
        abandoned.cancel()
        assert await kept == "rkept"
        with pytest.raises(DeadlineExceededError):
            await expired
        await b.stop()
        assert seen == [["kept"]]
        assert (b.stats.expired, b.stats.cancelled) == (1, 1)
    run(main())


def test_stop_drains_then_refuses() -> None:
    async def main() -> None:
        fn, _ = recorder(delay_s=0.02)
        b = DynamicBatcher(fn, max_batch_size=4, max_queue_delay_ms=100, max_queue_size=10)
        with pytest.raises(NotServingError):
            await b.submit(0)
        await b.start()
        task = asyncio.create_task(b.submit(1))
        await asyncio.sleep(0)
        await b.stop(drain=True)
        assert await task == "r1"
        with pytest.raises(NotServingError):
            await b.submit(2)
    run(main())


def test_preferred_sizes_and_bad_settings() -> None:
    async def noop(items: list[int]) -> list[int]:
        return items

    b = DynamicBatcher(noop, max_batch_size=8, max_queue_delay_ms=1, max_queue_size=10, preferred_batch_sizes=[4, 2])
    assert [b._batch_size(n) for n in (1, 3, 5, 9)] == [1, 2, 4, 8]
    with pytest.raises(ConfigError, match=r"outside 1\.\.8"):
        DynamicBatcher(noop, max_batch_size=8, max_queue_delay_ms=1, max_queue_size=10, preferred_batch_sizes=[16])


def test_a_failing_backend_tells_the_client_an_incident_id_never_its_internals(
        caplog: pytest.LogCaptureFixture) -> None:

    async def broken(items: list[int]) -> list[int]:
        raise RuntimeError("/usr/lib/libnvinfer.so.10: cudaErrorIllegalAddress")

    async def main() -> BaseException:
        batcher: DynamicBatcher[int, int] = DynamicBatcher(broken, 4, 1.0, 8)
        await batcher.start()
        try:
            return (await asyncio.gather(batcher.submit(1), return_exceptions=True))[0]
        finally:
            await batcher.stop()

    error = asyncio.run(main())
    assert isinstance(error, BackendError)
    assert "libnvinfer" not in str(error) and "RuntimeError" not in str(error)
    incident = str(error).split("incident ")[1].split(";")[0]
    assert any(incident in r.getMessage() and r.exc_info for r in caplog.records)
