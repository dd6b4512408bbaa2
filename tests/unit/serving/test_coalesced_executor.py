import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from trtserve.errors import InvalidFrameError
from trtserve.serving.coalesced_executor import CoalescedExecutor


def test_each_call_gets_its_own_result_or_error() -> None:
    def work(x: int) -> int:
        if x % 5 == 0:
            raise InvalidFrameError(f"frame {x} is bad")
        return x * x

    async def main() -> None:
        with ThreadPoolExecutor(2) as pool:
            co = CoalescedExecutor(pool)
            results = await asyncio.gather(*(co.run(work, i) for i in range(23)), return_exceptions=True)
            for i, r in enumerate(results):
                if i % 5 == 0:
                    assert isinstance(r, InvalidFrameError) and str(r) == f"frame {i} is bad"
                else:
                    assert r == i * i
            assert await co.run(work, 3) == 9  # a later, lone call

    asyncio.run(main())


def test_calls_of_one_burst_share_jobs_but_still_use_every_worker() -> None:
    threads: set[str] = set()
    both_running = threading.Barrier(2, timeout=5)
    submitted = []

    class CountingPool(ThreadPoolExecutor):
        def submit(self, fn, /, *args, **kwargs):  # type: ignore[no-untyped-def, override]
            submitted.append(len(args[0]))
            return super().submit(fn, *args, **kwargs)

    def work(x: int) -> int:
        threads.add(threading.current_thread().name)
        if x < 2:
            both_running.wait()  # the first item of each job: the two jobs run at once, on two threads
        return x

    async def main() -> None:
        with CountingPool(2) as pool:
            co = CoalescedExecutor(pool)
            assert await asyncio.gather(*(co.run(work, i) for i in range(8))) == list(range(8))

    asyncio.run(main())
    assert submitted == [4, 4] and len(threads) == 2


def test_a_call_cancelled_before_it_runs_is_skipped() -> None:
    ran: list[int] = []
    gate = threading.Event()

    def work(x: int) -> int:
        if x == 0:
            gate.wait(5)
        ran.append(x)
        return x

    async def main() -> None:
        with ThreadPoolExecutor(1) as pool:
            co = CoalescedExecutor(pool)
            first = asyncio.create_task(co.run(work, 0))
            second = asyncio.create_task(co.run(work, 1))
            await asyncio.sleep(0.05)  # both dispatched to the one worker, which waits inside call 0
            second.cancel()
            await asyncio.sleep(0)
            gate.set()
            assert await first == 0
            with pytest.raises(asyncio.CancelledError):
                await second
            await asyncio.sleep(0.05)

    asyncio.run(main())
    assert ran == [0]


def test_a_shut_down_pool_fails_the_calls_instead_of_hanging() -> None:
    async def main() -> None:
        pool = ThreadPoolExecutor(2)
        pool.shutdown()
        co = CoalescedExecutor(pool)
        t0 = time.monotonic()
        with pytest.raises(RuntimeError):
            await asyncio.wait_for(co.run(lambda x: x, 1), 5)
        assert time.monotonic() - t0 < 1

    asyncio.run(main())
