"""The model manager: which pipeline serves now, and atomic reloads.

A request takes the current pipeline and registers itself in one synchronous step, so a reload that swaps the
pointer afterwards can never close a pipeline a request is still using: the old pipeline is retired in the
background once its last request leaves (or after the drain timeout). Requests in flight finish on the old
sessions; new ones use the new.

A reload that fails (a half-written version, a corrupted or swapped ONNX file, a manifest that does not parse, an
alias to a missing version) keeps the current pipeline serving and is recorded as the manager's `problem` (shown on
/readyz, logged once per distinct problem) until a later reload succeeds.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from models.registry import Registry, utc_now
from service.config import Settings
from service.metrics import ServiceMetrics
from service.pipeline import Pipeline
from service.registry_watch import Fingerprint, registry_fingerprint
from service.schemas import RegistryProblem

log = logging.getLogger("service.state")


class NotReadyError(RuntimeError):
    pass


# Registry and engine errors name the model as "name@version" (or "name has no version N"); read it back from there
_REFS = (
    re.compile(r"(?P<model>[A-Za-z0-9][A-Za-z0-9_.-]*)@(?P<version>\d+)"),
    re.compile(r"(?P<model>[A-Za-z0-9][A-Za-z0-9_.-]*) has no version (?P<version>\d+)"),
    re.compile(r"(?P<model>[A-Za-z0-9][A-Za-z0-9_.-]*) has no alias"),
    re.compile(r"no model '(?P<model>[^']+)'"),
)
MAX_DETAIL_CHARS = 1000


def registry_problem(error: Exception, trigger: str, root: Path) -> RegistryProblem:
    """What failed and where. Paths are made relative to the registry: /readyz is unauthenticated, and need not show
    the machine's."""
    detail = str(error) or type(error).__name__
    for prefix in {f"{root.resolve()}{os.sep}", f"{root}{os.sep}"}:
        detail = detail.replace(prefix, "")
    model = version = None
    for pattern in _REFS:
        found = pattern.search(detail)
        if found:
            model = found["model"]
            version = int(found["version"]) if "version" in found.groupdict() else None
            break
    now = utc_now()
    return RegistryProblem(
        error=type(error).__name__,
        detail=detail[:MAX_DETAIL_CHARS],
        model=model,
        version=version,
        since=now,
        last_attempt=now,
        attempts=1,
        trigger=trigger,
    )


class ReloadRefusedError(RuntimeError):
    """The registry's set could not be loaded; the previous set (if any) serves on."""

    def __init__(self, problem: RegistryProblem, serving: list[str]) -> None:
        still = f"the previous set is still serving: {', '.join(serving)}" if serving else "no set is serving"
        super().__init__(f"the registry's models could not be loaded: {problem.error}: {problem.detail}; {still}")
        self.problem = problem


class ModelManager:
    def __init__(self, settings: Settings, metrics: ServiceMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.current: Pipeline | None = None
        self.load_error: str | None = None
        self.problem: RegistryProblem | None = None  # the last reload failed; cleared by the next good one
        self.reloads = 0
        self._attempted: Fingerprint | None = None  # the registry state last loaded or tried
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

    def _fingerprint(self) -> Fingerprint:
        return registry_fingerprint(self.settings.registry_dir, self.settings.model_alias)

    def serving(self) -> list[str]:
        """The refs of the models serving now, e.g. ["chest-classifier-int8@1", "chest-outlier-ae-int8@1"]."""
        if self.current is None:
            return []
        return [session.model.ref for session in self.current.sessions().values()]

    async def start(self) -> None:
        self._closed, self.load_error = False, None  # an app whose lifespan runs again (tests, embedding) reopens
        self._attempted = await asyncio.to_thread(self._fingerprint)
        try:
            self.current = await self._build()
        except Exception as error:
            self.load_error = f"{type(error).__name__}: {error}"
            raise
        self._publish()
        log.info("models loaded", extra={"models": self.current.describe()["models"]})

    async def reload(self, trigger: str = "api") -> tuple[dict, dict]:
        """Load the registry's current aliases, warm them, then swap. Returns (before, after) descriptions.

        ReloadRefusedError when the new set cannot be loaded: the current pipeline keeps serving."""
        async with self._reload_lock:
            return await self._reload(trigger)

    async def reload_if_changed(self) -> tuple[dict, dict] | None:
        """The watcher's reload: only when the registry differs from the state last loaded or tried, so a broken
        state is tried once, not in a loop, and a state an API reload already loaded is not loaded twice."""
        if self._closed or self.current is None:
            return None
        if await asyncio.to_thread(self._fingerprint) == self._attempted:  # the usual case, without the lock
            return None
        async with self._reload_lock:
            if self._closed or await asyncio.to_thread(self._fingerprint) == self._attempted:
                return None
            return await self._reload("watcher")

    async def _reload(self, trigger: str) -> tuple[dict, dict]:
        if self._closed:
            raise NotReadyError("the server is shutting down")
        self._attempted = await asyncio.to_thread(self._fingerprint)  # before loading: a change meanwhile is seen
        try:
            new = await self._build()
        except Exception as error:
            raise ReloadRefusedError(self._record(error, trigger), self.serving()) from error
        if self.problem is not None:
            log.info("registry problem cleared", extra={"registry_problem": self.problem.model_dump()})
            self.problem = None
        old, self.current = self.current, new
        self.reloads += 1
        self._publish()
        if old is not None:
            task = asyncio.get_running_loop().create_task(old.close(self.settings.drain_timeout_s))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
        log.info("models reloaded", extra={"models": new.describe()["models"], "trigger": trigger})
        return (old.describe() if old else {}), new.describe()

    def _record(self, error: Exception, trigger: str) -> RegistryProblem:
        """Keep the problem for /readyz; log it once per distinct problem, not once per attempt."""
        problem = registry_problem(error, trigger, self.settings.registry_dir)
        known = self.problem
        if known is not None and (known.error, known.detail) == (problem.error, problem.detail):
            known.attempts += 1
            known.last_attempt = problem.last_attempt
            known.trigger = trigger
            return known
        self.problem = problem
        log.warning(
            "registry reload refused; the last good set serves on",
            extra={"registry_problem": problem.model_dump(), "serving": self.serving()},
        )
        return problem

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
