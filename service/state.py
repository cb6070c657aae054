"""The model manager: which pipeline serves now, and atomic reloads.

A request takes the current pipeline and registers itself in one synchronous step, so a reload that swaps the
pointer afterwards can never close a pipeline a request is still using: the old pipeline is retired in the
background once its last request leaves (or after the drain timeout). Requests in flight finish on the old
sessions; new ones use the new.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from models.registry import Registry
from service.config import Settings
from service.metrics import ServiceMetrics
from service.pipeline import Pipeline

log = logging.getLogger("service.state")


class NotReadyError(RuntimeError):
    pass


class ModelManager:
    def __init__(self, settings: Settings, metrics: ServiceMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.current: Pipeline | None = None
        self.load_error: str | None = None
        self.reloads = 0
        self._reload_lock = asyncio.Lock()
        self._retiring: set[asyncio.Task] = set()
        self._published: set[tuple[str, ...]] = set()
        self._closed = False

    async def _build(self) -> Pipeline:
        registry = Registry(self.settings.registry_dir)
        model_set = await asyncio.to_thread(registry.model_set, self.settings.model_alias)
        pipeline = await asyncio.to_thread(Pipeline.load, model_set, self.settings, self.metrics)
        pipeline.start()
        return pipeline

    async def start(self) -> None:
        try:
            self.current = await self._build()
        except Exception as error:
            self.load_error = f"{type(error).__name__}: {error}"
            raise
        self._publish()
        log.info("models loaded", extra={"models": self.current.describe()["models"]})

    async def reload(self) -> tuple[dict, dict]:
        """Load the registry's current aliases, warm them, then swap. Returns (before, after) descriptions."""
        async with self._reload_lock:
            if self._closed:
                raise NotReadyError("the server is shutting down")
            new = await self._build()
            old, self.current = self.current, new
            self.reloads += 1
            self._publish()
            if old is not None:
                task = asyncio.get_running_loop().create_task(old.close(self.settings.drain_timeout_s))
                self._retiring.add(task)
                task.add_done_callback(self._retiring.discard)
            log.info("models reloaded", extra={"models": new.describe()["models"]})
            return (old.describe() if old else {}), new.describe()

    def _publish(self) -> None:
        """xray_model_loaded is 1 for the models serving now and 0 for those retired (0, not removed: with several
        worker processes the series live in shared files that a removal would not reach)."""
        gauge = self.metrics.model_info
        now: set[tuple[str, ...]] = set()
        if self.current is not None:
            for role, session in self.current.sessions().items():
                model = session.model
                now.add((role, model.name, str(model.version), model.manifest.precision, session.device))
        for labels in self._published - now:
            gauge.labels(*labels).set(0)
            self.metrics.queue_depth.labels(f"{labels[1]}@{labels[2]}").set(0)
        for labels in now:
            gauge.labels(*labels).set(1)
        self._published |= now

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[Pipeline]:
        pipeline = self.current
        if pipeline is None:
            raise NotReadyError(self.load_error or "the models are still loading")
        pipeline.enter()  # same step as reading `current`: no await in between
        try:
            yield pipeline
        finally:
            pipeline.leave()

    async def close(self) -> None:
        async with self._reload_lock:  # a reload in progress finishes first, so its pipeline is closed too
            self._closed = True
            if self._retiring:
                await asyncio.gather(*self._retiring, return_exceptions=True)
            if self.current is not None:
                await self.current.close(self.settings.drain_timeout_s)
                self.current = None
