"""Async micro-batcher: many concurrent requests -> few session runs.

Requests put one preprocessed image each on a bounded queue and await a future. One collector task per model
takes the first waiting image, gathers more until `max_batch_size` or `max_delay` has passed, and runs the batch in
a dedicated thread (ONNX Runtime releases the GIL), so the event loop keeps accepting uploads. While a batch runs,
the next one accumulates, so batches grow by themselves under load. A full queue refuses at once
(`QueueFullError` -> 503 + Retry-After) instead of letting latency grow without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

log = logging.getLogger("service.batching")

RunBatch = Callable[[np.ndarray], dict[str, np.ndarray]]
BatchObserver = Callable[[int, float], None]  # (batch size, seconds in the session)


class QueueFullError(RuntimeError):
    def __init__(self, name: str, depth: int) -> None:
        super().__init__(f"{name}: {depth} images are already waiting for inference; retry shortly")
        self.depth = depth


class BatcherClosedError(RuntimeError):
    pass


@dataclass
class _Item:
    x: np.ndarray  # (1, S, S) float32
    future: asyncio.Future


class MicroBatcher:
    def __init__(
        self,
        name: str,
        run_batch: RunBatch,
        *,
        max_batch_size: int,
        max_delay_s: float,
        max_queue: int,
        observe: BatchObserver | None = None,
    ) -> None:
        if max_batch_size < 1 or max_queue < 1 or max_delay_s < 0:
            raise ValueError(
                f"expected max_batch_size >= 1, max_queue >= 1, max_delay_s >= 0; "
                f"got {max_batch_size}, {max_queue}, {max_delay_s}"
            )
        self.name = name
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self._queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=max_queue)
        self._observe = observe
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"infer-{name}")
        self._task: asyncio.Task | None = None
        self._closing = False

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._collect(), name=f"batcher-{self.name}")

    async def submit(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Queue one (1, S, S) image; returns its outputs with the batch axis removed."""
        if self._closing or self._task is None:
            raise BatcherClosedError(f"{self.name}: the batcher is not running")
        future = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait(_Item(x, future))
        except asyncio.QueueFull:
            raise QueueFullError(self.name, self._queue.qsize()) from None
        return await future

    async def close(self) -> None:
        """Stop taking new images, finish every queued one, then stop the collector and its thread."""
        self._closing = True
        if self._task is not None:
            await self._queue.join()
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._executor.shutdown(wait=True)

    async def _gather(self) -> list[_Item]:
        items = [await self._queue.get()]
        deadline = time.monotonic() + self.max_delay_s
        while len(items) < self.max_batch_size:
            try:
                items.append(self._queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                items.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return items

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = await self._gather()
            try:
                live = [item for item in items if not item.future.done()]  # a cancelled request needs no run
                if live:
                    batch = np.stack([item.x for item in live])  # (N, 1, S, S)
                    start = time.perf_counter()
                    outputs = await loop.run_in_executor(self._executor, self._run_batch, batch)
                    if self._observe is not None:
                        self._observe(len(live), time.perf_counter() - start)
                    for i, item in enumerate(live):
                        if not item.future.done():
                            item.future.set_result({name: value[i] for name, value in outputs.items()})
            except asyncio.CancelledError:
                for item in items:
                    if not item.future.done():
                        item.future.set_exception(BatcherClosedError(f"{self.name}: the batcher stopped"))
                raise
            except Exception as error:  # noqa: BLE001 - one bad batch fails its requests, not the batcher
                log.exception("batch inference failed", extra={"model": self.name, "batch": len(items)})
                for item in items:
                    if not item.future.done():
                        item.future.set_exception(error)
            finally:
                for _ in items:
                    self._queue.task_done()
