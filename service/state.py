"""The model manager: which pipeline serves now, and atomic reloads.

A request takes the current pipeline and registers itself in one synchronous step, so a reload that swaps the
pointer afterwards can never close a pipeline a request is still using: the old pipeline is retired in the
background once its last request leaves. Requests in flight finish on the old sessions; new ones use the new.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from service.config import Settings
from service.metrics import ServiceMetrics
from service.pipeline import Pipeline
from service.registry import Registry

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
            new = await self._build()
            old, self.current = self.current, new
            self.reloads += 1
            self._publish()
            if old is not None:
                task = asyncio.get_running_loop().create_task(old.close())
                self._retiring.add(task)
                task.add_done_callback(self._retiring.discard)
            log.info("models reloaded", extra={"models": new.describe()["models"]})
            return (old.describe() if old else {}), new.describe()

    def _publish(self) -> None:
        """The xray_model_loaded gauge names exactly the models serving now."""
        gauge = self.metrics.model_info
        gauge.clear()
        if self.current is None:
            return
        for role, session in self.current.sessions().items():
            model = session.model
            gauge.labels(role, model.name, str(model.version), model.manifest.precision, session.device).set(1)

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
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)
        if self.current is not None:
            await self.current.close()
            self.current = None
