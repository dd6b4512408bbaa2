"""Answering a stream in request order under both overload policies (serving/protocol.py), on a real event loop."""

import asyncio
from collections.abc import AsyncIterator

from trtserve.serving.protocol import answer_freshest, answer_in_order


async def requests(items: list[tuple[str, int]], gap_s: float = 0.0) -> AsyncIterator[tuple[str, int]]:
    for item in items:
        yield item
        await asyncio.sleep(gap_s)


def test_block_answers_in_request_order_with_bounded_concurrency() -> None:
    running, most = 0, 0

    async def answer(request: tuple[str, int]) -> str:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.01 * (5 - request[1]))  # later requests finish first
        running -= 1
        return f"{request[0]}{request[1]}"

    async def main() -> list[str]:
        return [a async for a in answer_in_order(requests([("a", i) for i in range(5)]), answer, 3)]

    assert asyncio.run(main()) == ["a0", "a1", "a2", "a3", "a4"]
    assert most == 3


def test_drop_oldest_keeps_the_freshest_waiting_frame_per_stream() -> None:
    started: list[tuple[str, int]] = []

    async def answer(request: tuple[str, int]) -> str:
        started.append(request)
        await asyncio.sleep(0.05)
        return f"ok {request[0]}{request[1]}"

    def dropped(request: tuple[str, int]) -> str:
        return f"dropped {request[0]}{request[1]}"

    async def main() -> list[str]:
        stream = requests([("a", 0), ("a", 1), ("b", 0), ("a", 2), ("a", 3)])
        return [a async for a in answer_freshest(stream, answer, lambda r: r[0], dropped, 1)]

    assert asyncio.run(main()) == ["ok a0", "dropped a1", "ok b0", "dropped a2", "ok a3"]
    assert started == [("a", 0), ("b", 0), ("a", 3)]


def test_drop_oldest_starts_nothing_once_the_client_has_gone() -> None:
    started: list[int] = []

    async def answer(request: tuple[str, int]) -> str:
        started.append(request[1])
        await asyncio.sleep(0.2)
        return str(request[1])

    async def main() -> None:
        answers = answer_freshest(requests([("a", i) for i in range(3)]), answer, lambda r: r[0], str, 2)
        reader = asyncio.ensure_future(answers.__anext__())
        await asyncio.sleep(0.05)  # frames 0 and 1 run, frame 2 waits
        reader.cancel()  # the client goes away before any answer
        await asyncio.sleep(0)
        await answers.aclose()
        await asyncio.sleep(0.3)  # long enough for a relaunched frame 2 to have started

    asyncio.run(main())
    assert started == [0, 1]


def test_drop_oldest_bounds_a_call_that_invents_a_stream_id_per_frame() -> None:
    """3,000 frames with 3,000 stream ids: without a per-call bound each would run at once."""
    running = most_running = 0
    held: set[int] = set()
    most_held = 0

    async def answer(request: tuple[str, int]) -> str:
        nonlocal running, most_running
        running += 1
        most_running = max(most_running, running)
        await asyncio.sleep(0.001)
        running -= 1
        held.discard(request[1])
        return "ok"

    def dropped(request: tuple[str, int]) -> str:
        held.discard(request[1])
        return "dropped"

    async def flood() -> AsyncIterator[tuple[str, int]]:
        nonlocal most_held
        for i in range(3000):
            held.add(i)
            most_held = max(most_held, len(held))
            yield (f"id-{i}", i)
            if i % 50 == 0:
                await asyncio.sleep(0)

    async def main() -> list[str]:
        return [a async for a in answer_freshest(flood(), answer, lambda r: r[0], dropped, 2, 16)]

    answers = asyncio.run(main())
    assert len(answers) == 3000 and "dropped" in answers and answers[-1] == "ok"
    assert most_running <= 16
    assert most_held <= 2 * 16 + 1  # running + waiting, and the one being read


def test_drop_oldest_per_call_bound_keeps_every_stream_served() -> None:
    """Two cameras in one call, a per-call bound of 2: neither starves, and each keeps its newest frame."""
    started: list[tuple[str, int]] = []

    async def answer(request: tuple[str, int]) -> str:
        started.append(request)
        await asyncio.sleep(0.02)
        return "ok"

    async def main() -> list[str]:
        stream = requests([(lane, i) for i in range(10) for lane in "ab"], gap_s=0.004)
        return [a async for a in answer_freshest(stream, answer, lambda r: r[0], lambda r: "dropped", 1, 2)]

    answers = asyncio.run(main())
    assert len(answers) == 20 and "dropped" in answers
    for lane in "ab":
        mine = [i for name, i in started if name == lane]
        assert len(mine) >= 3 and mine[-1] == 9  # served all along, and its newest frame last


def test_a_drain_that_lands_as_a_message_arrives_still_answers_that_message() -> None:
    """The drain cancels a reader waiting for the next request; a request that arrived in the same loop step must
    be read and answered, not lost between the transport and the handler."""
    from trtserve.serving.protocol import Drain, _Intake

    async def main() -> tuple[list[str], bool]:
        drain = Drain()
        intake = _Intake(drain)
        arrived: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        async def source() -> AsyncIterator[str]:
            yield "first"
            yield await arrived  # the transport's read, completed by the "network" below

        got: list[str] = []

        async def reader() -> None:
            async for request in intake.requests(source()):
                got.append(request)

        task = asyncio.create_task(reader())
        while not got:
            await asyncio.sleep(0)
        await asyncio.sleep(0.01)  # the reader now waits for the second message
        arrived.set_result("second")  # it arrives ...
        drain.start()  # ... and the drain cancels the wait in the same step
        await task
        return got, intake.drained

    got, drained = asyncio.run(main())
    assert got == ["first", "second"] and drained
