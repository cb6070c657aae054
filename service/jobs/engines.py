"""Which runner scores job items in this process: the embedded one, Ray Data, or none (XRAY_JOBS_ENGINE)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from service.config import Settings
from service.jobs.outage import DatabaseTrouble
from service.jobs.runner import JobRunner
from service.jobs.store import JobStore
from service.state import ModelManager


class JobEngine(Protocol):
    runner_id: str
    trouble: DatabaseTrouble  # what keeps it from writing results now, if anything

    async def register(self) -> None: ...

    def start(self) -> None: ...

    def wake(self) -> None: ...

    async def stop(self, timeout_s: float) -> None: ...


def make_job_engine(
    settings: Settings, store: JobStore, manager: ModelManager, pool: ThreadPoolExecutor
) -> JobEngine | None:
    if settings.jobs_engine == "off":
        return None
    if settings.jobs_engine == "ray":
        from service.jobs.ray_engine import RayJobRunner  # ray is an optional extra

        return RayJobRunner(store, settings)
    return JobRunner(store, manager, settings, pool)


async def start_job_engine(
    settings: Settings, store: JobStore, manager: ModelManager, pool: ThreadPoolExecutor
) -> JobEngine | None:
    engine = make_job_engine(settings, store, manager, pool)
    if engine is not None:
        await engine.register()
        engine.start()
    return engine
