"""The job runner: claims items from the store a chunk at a time, scores them on the service's own path and commits
each chunk's results in one transaction.

Scoring is `Pipeline.predict`, the code `/v1/predict` runs: the chunk's files are read and decoded in the decode
thread pool while earlier images are already in the micro-batched ONNX sessions, and three chunks are in flight so
that a commit never leaves the sessions idle. A heartbeat task keeps the leases of claimed items; when this process
dies they expire and another runner (or this one, restarted) takes them over.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from sqlalchemy.exc import DBAPIError

from models.imaging import ImagingError
from service.batching import BatcherClosedError, QueueFullError
from service.config import Settings
from service.jobs.intake import remove_workdir
from service.jobs.outage import DatabaseTrouble, retry_delay
from service.jobs.store import ClaimedItem, JobStore, Outcome, new_runner_id
from service.pipeline import Pipeline
from service.state import ModelManager, NotReadyError

log = logging.getLogger("service.jobs.runner")
CHUNKS_IN_FLIGHT = 3
HELPER_POLL_FACTOR = 10  # idle loops other than the first look for work this much less often (or when woken)
HOUSEKEEPING_S = 10.0  # an idle runner's sweep for finished jobs and their uploads
RETRY_BUSY_S = 0.05  # the inference queue is full (HTTP traffic shares it): wait, then submit again


def read_file(path: str, limit: int) -> bytes:
    """A job item's bytes; a file over the upload limit is an item problem, like an upload over it is a 413."""
    file = Path(path)
    size = file.stat().st_size
    if size > limit:
        detail = f"expected a file of at most {limit} bytes (XRAY_MAX_UPLOAD_BYTES), got {size}"
        raise ItemProblem("file_too_large", detail)
    return file.read_bytes()


class ItemProblem(Exception):
    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def item_problem(error: BaseException) -> dict[str, str]:
    """The problem recorded for an item that could not be scored (the job itself goes on)."""
    if isinstance(error, ItemProblem):
        return {"code": error.code, "detail": error.detail}
    if isinstance(error, ImagingError):
        return {"code": error.code, "detail": str(error)}
    if isinstance(error, FileNotFoundError):
        return {"code": "file_not_found", "detail": "the file is gone (moved or deleted after the job was submitted)"}
    if isinstance(error, OSError):
        return {"code": "unreadable", "detail": f"the file could not be read: {error.strerror or type(error).__name__}"}
    return {"code": "scoring_error", "detail": f"{type(error).__name__}: {error}"}


async def score_file(
    pipeline: Pipeline, path: str, pool: ThreadPoolExecutor, limit: int
) -> tuple[dict[str, Any] | None, dict[str, str] | None]:
    """(the prediction /v1/predict would give for the file's bytes, None), or (None, the item's problem)."""
    loop = asyncio.get_running_loop()
    try:
        data = await loop.run_in_executor(pool, read_file, path, limit)
        while True:
            try:
                result, _ = await pipeline.predict(data, pool)
                return result, None
            except QueueFullError:
                await asyncio.sleep(RETRY_BUSY_S)
    except (BatcherClosedError, asyncio.CancelledError):
        raise  # the pipeline was retired under us: not the item's fault; the claim's lease brings it back
    except Exception as error:  # noqa: BLE001 - one bad file must not stop its job
        return None, item_problem(error)


async def score_item(
    pipeline: Pipeline, item: ClaimedItem, pool: ThreadPoolExecutor, limit: int, slots: asyncio.Semaphore
) -> Outcome:
    async with slots:
        result, problem = await score_file(pipeline, item.path, pool, limit)
    return Outcome(item.id, item.token, result=result, problem=problem)


def remove_finished_uploads(store: JobStore) -> None:
    """Unpacked zips are needed only until their job is over; the results live in the database."""
    for workdir in store.take_finished_workdirs():
        remove_workdir(workdir)


class JobRunner:
    """The embedded runner of `xray serve` and `xray worker`."""

    engine_name = "embedded"

    def __init__(self, store: JobStore, manager: ModelManager, settings: Settings, pool: ThreadPoolExecutor) -> None:
        self.store = store
        self.manager = manager
        self.settings = settings
        self.pool = pool
        self.runner_id = new_runner_id()
        self.scored = 0
        self.trouble = DatabaseTrouble(self.runner_id, manager.metrics.job_runner_paused.set)
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._next_housekeeping = 0.0
        self._tasks: list[asyncio.Task] = []
        # images in the pipeline at once, across chunks: enough to fill batches, and at most half the inference
        # queue, so the runner never crowds out /v1/predict nor spins on a full queue
        self._slots = asyncio.Semaphore(max(1, min(64, settings.max_queue // 2)))

    async def _db(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(call, *args, **kwargs)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._heartbeats(), name="jobs-heartbeat")]
        self._tasks += [loop.create_task(self._work(i), name=f"jobs-chunk-{i}") for i in range(CHUNKS_IN_FLIGHT)]
        log.info("job runner started", extra={"runner": self.runner_id, "engine": self.engine_name})

    async def register(self) -> None:
        await self._db(self.store.register_runner, self.runner_id, self.engine_name)

    async def stop(self, timeout_s: float) -> None:
        """Stop claiming; chunks being scored finish (within `timeout_s`) and commit."""
        self._stopping.set()
        if self._tasks:
            heartbeat, workers = self._tasks[0], self._tasks[1:]
            _, unfinished = await asyncio.wait(workers, timeout=timeout_s)
            for task in (*unfinished, heartbeat):
                task.cancel()  # unfinished chunks' claims expire and return to the queue
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._db(self.store.remove_runner, self.runner_id)
        log.info("job runner stopped", extra={"runner": self.runner_id, "scored": self.scored})

    async def _heartbeats(self) -> None:
        interval = self.settings.job_lease_s / 3
        while True:
            try:
                await self._db(self.store.heartbeat, self.runner_id, self.settings.job_lease_s)
            except DBAPIError as error:
                self.trouble.failed(error)
            except Exception:  # noqa: BLE001 - a database hiccup must not kill the runner; the next beat retries
                log.exception("job heartbeat failed", extra={"runner": self.runner_id})
            await asyncio.sleep(interval)

    def wake(self) -> None:
        """Idle chunk loops look for work now instead of at their next poll (a job was submitted, or one loop
        found work: the others join at once, so a small job is not scored a chunk at a time)."""
        self._wake.set()
        self._wake.clear()  # the loops waiting now are already woken; later pauses wait again

    async def _pause(self, seconds: float) -> None:
        waits = [asyncio.ensure_future(self._stopping.wait()), asyncio.ensure_future(self._wake.wait())]
        await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        for waiting in waits:
            waiting.cancel()

    async def _work(self, index: int) -> None:
        """Loop 0 polls the store when idle; the others sleep until it (or a submission) wakes them, so an idle
        runner costs one claim query per poll, not one per loop."""
        poll = self.settings.job_poll_s
        while not self._stopping.is_set():
            try:
                scored = await self.run_chunk(housekeeping=index == 0)
                self.trouble.recovered()
            except NotReadyError:
                scored = 0  # the models are loading or reloading
            except DBAPIError as error:  # the database is away or full: said once, retried at the next poll
                self.trouble.failed(error)
                scored = 0
            except Exception:  # noqa: BLE001 - logged; the claimed items come back when their lease expires
                log.exception("job chunk failed", extra={"runner": self.runner_id})
                scored = 0
            if not scored:
                await self._pause(poll if index == 0 else HELPER_POLL_FACTOR * poll)

    async def run_chunk(self, housekeeping: bool = True) -> int:
        """Claim, score and commit one chunk; returns how many items it scored (0: nothing was queued, and then,
        with `housekeeping`, finish jobs whose last commit raced and remove finished uploads, now and then)."""
        async with self.manager.acquire() as pipeline:
            claimed = await self._db(
                self.store.claim,
                self.runner_id,
                alias=self.settings.model_alias,
                limit=self.settings.job_chunk_size,
                lease_s=self.settings.job_lease_s,
                max_attempts=self.settings.job_max_attempts,
            )
            if not claimed:
                if housekeeping and time.monotonic() >= self._next_housekeeping:
                    self._next_housekeeping = time.monotonic() + HOUSEKEEPING_S
                    await self._db(self.store.finish_jobs)  # a safety net for jobs whose last commit raced
                    await self._db(remove_finished_uploads, self.store)
                return 0
            self.wake()
            limit = self.settings.max_upload_bytes
            scoring = (score_item(pipeline, item, self.pool, limit, self._slots) for item in claimed)
            outcomes = await asyncio.gather(*scoring)
        written = await self._commit(outcomes)  # not `scored += await ...`: that reads `scored` before the wait
        self.scored += written
        self.manager.metrics.job_items_written.inc(written)
        return len(claimed)

    async def _commit(self, outcomes: list[Outcome]) -> int:
        """Write a chunk's results. While the database refuses (restarting, disk full) keep them and retry with a
        backoff; give up only when stopping (the items' leases then bring them back to the queue)."""
        attempt = 0
        while True:
            try:
                written = await self._db(self.store.complete, outcomes)
            except DBAPIError as error:
                self.trouble.failed(error)
                if self._stopping.is_set():
                    raise
                await self._pause(retry_delay(attempt))
                attempt += 1
                continue
            self.trouble.recovered()
            return written
