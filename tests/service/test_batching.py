"""The micro-batcher: batches form under concurrency, the queue bound answers at once, close drains."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from service.batching import BatcherClosedError, MicroBatcher, QueueFullError


def _doubler(
    sizes: list[int],
    delay: float = 0.0,
    gate: threading.Event | None = None,
    entered: threading.Event | None = None,
):
    def run(batch: np.ndarray) -> dict[str, np.ndarray]:
        if entered is not None:
            entered.set()
        if gate is not None:
            gate.wait(5)
        time.sleep(delay)
        sizes.append(len(batch))
        return {"y": batch.reshape(len(batch), -1).sum(axis=1) * 2}

    return run


def _image(value: float) -> np.ndarray:
    return np.full((1, 2, 2), value, dtype=np.float32)


def test_concurrent_requests_share_batches_and_get_their_own_answers() -> None:
    """While the session is busy with the first batch, the other requests queue; once it is free they leave in full
    batches of 8 (ordering, not timing: the gate holds the session until everything is queued)."""

    async def main() -> tuple[list[float], list[int]]:
        sizes: list[int] = []
        gate, entered = threading.Event(), threading.Event()
        batcher = MicroBatcher(
            "m", _doubler(sizes, gate=gate, entered=entered), max_batch_size=8, max_delay_s=0.005, max_queue=100
        )
        batcher.start()
        pending = asyncio.gather(*(batcher.submit(_image(i)) for i in range(40)))
        while not entered.is_set():
            await asyncio.sleep(0.001)  # the first batch is in the session, every other request queued behind it
        assert batcher.depth >= 40 - 8  # at most one batch left the queue
        gate.set()
        results = await pending
        await batcher.close()
        return [float(r["y"]) for r in results], sizes

    results, sizes = asyncio.run(main())
    assert results == [8.0 * i for i in range(40)]  # 4 pixels of value i, doubled, in request order
    assert sum(sizes) == 40 and max(sizes) == 8
    assert all(size == 8 for size in sizes[1:-1]), sizes  # after the first, only the last batch may be short


def test_a_lone_request_is_sent_alone_once_the_delay_is_over() -> None:
    async def main() -> list[int]:
        sizes: list[int] = []
        batcher = MicroBatcher("m", _doubler(sizes), max_batch_size=64, max_delay_s=0.02, max_queue=10)
        batcher.start()
        result = await batcher.submit(_image(1))
        await batcher.close()
        assert float(result["y"]) == 8.0
        return sizes

    assert asyncio.run(main()) == [1]  # it did not wait for a batch of 64 that never comes


def test_full_queue_refuses_at_once() -> None:
    async def main() -> None:
        gate, entered = threading.Event(), threading.Event()
        sizes: list[int] = []
        batcher = MicroBatcher(
            "m", _doubler(sizes, gate=gate, entered=entered), max_batch_size=1, max_delay_s=0.0, max_queue=3
        )
        batcher.start()
        first = asyncio.ensure_future(batcher.submit(_image(0)))
        while not entered.is_set():
            await asyncio.sleep(0.01)  # until the collector took it and blocks in the session
        waiting = [asyncio.ensure_future(batcher.submit(_image(i))) for i in range(1, 4)]
        await asyncio.sleep(0.01)
        refused = batcher.submit(_image(9))
        with pytest.raises(QueueFullError, match="3 images are already waiting"):
            refused.send(None)  # raised on the coroutine's first step: the refusal never waits
        gate.set()
        assert [float(r["y"]) for r in await asyncio.gather(first, *waiting)] == [0.0, 8.0, 16.0, 24.0]
        await batcher.close()

    asyncio.run(main())


def test_close_finishes_queued_work_then_refuses() -> None:
    async def main() -> None:
        batcher = MicroBatcher("m", _doubler([], 0.01), max_batch_size=2, max_delay_s=0.0, max_queue=50)
        batcher.start()
        pending = [asyncio.ensure_future(batcher.submit(_image(i))) for i in range(10)]
        await asyncio.sleep(0)
        await batcher.close()
        assert all(task.done() and not task.exception() for task in pending)
        with pytest.raises(BatcherClosedError):
            await batcher.submit(_image(0))

    asyncio.run(main())


def test_a_failing_batch_fails_its_requests_and_the_batcher_lives_on() -> None:
    calls = {"n": 0}

    def flaky(batch: np.ndarray) -> dict[str, np.ndarray]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("session exploded")
        return {"y": np.ones(len(batch))}

    async def main() -> None:
        batcher = MicroBatcher("m", flaky, max_batch_size=4, max_delay_s=0.0, max_queue=10)
        batcher.start()
        with pytest.raises(RuntimeError, match="exploded"):
            await batcher.submit(_image(0))
        assert float((await batcher.submit(_image(0)))["y"]) == 1.0
        await batcher.close()

    asyncio.run(main())


def test_observer_sees_every_batch() -> None:
    seen: list[int] = []

    async def main() -> None:
        batcher = MicroBatcher(
            "m",
            _doubler([], 0.005),
            max_batch_size=4,
            max_delay_s=0.002,
            max_queue=50,
            observe=lambda size, seconds: seen.append(size),
        )
        batcher.start()
        await asyncio.gather(*(batcher.submit(_image(i)) for i in range(12)))
        await batcher.close()

    asyncio.run(main())
    assert sum(seen) == 12


def test_invalid_configuration_is_refused() -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        MicroBatcher("m", _doubler([]), max_batch_size=0, max_delay_s=0.0, max_queue=1)
