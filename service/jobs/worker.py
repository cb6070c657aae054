"""`xray worker`: the job runner as its own process, without HTTP. Start several (on several machines) against one
PostgreSQL database; SIGTERM or Ctrl-C stops claiming, lets the chunks in flight finish and commit, then exits."""

from __future__ import annotations

import asyncio
import logging
import signal
from concurrent.futures import ThreadPoolExecutor

from prometheus_client import start_http_server

from service.config import Settings
from service.jobs.engines import start_job_engine
from service.jobs.store import JobStore
from service.metrics import ServiceMetrics
from service.state import ModelManager

log = logging.getLogger("service.jobs.worker")


async def run_worker(settings: Settings) -> None:
    if settings.jobs_engine == "off":
        raise SystemExit("XRAY_JOBS_ENGINE=off: a worker with no engine would score nothing; use embedded or ray")
    if settings.database_url is None:
        log.warning("no XRAY_DATABASE_URL: the worker shares the SQLite file with processes on this machine only")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    store = await asyncio.to_thread(JobStore.open, settings.job_database_url())
    metrics = ServiceMetrics(settings.prometheus_multiproc_dir)
    if settings.worker_metrics_port:  # what its runner counts (results written, paused) for Prometheus to scrape
        start_http_server(settings.worker_metrics_port, addr=settings.host, registry=metrics.registry)
        log.info("worker metrics", extra={"port": settings.worker_metrics_port, "host": settings.host})
    manager = ModelManager(settings, metrics)
    pool = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="decode")
    engine = None
    try:
        await manager.start()
        engine = await start_job_engine(settings, store, manager, pool)
        log.info("worker ready", extra={"runner": engine.runner_id if engine else None})
        await stop.wait()
    finally:
        if engine is not None:
            await engine.stop(settings.drain_timeout_s)
        await manager.close()
        pool.shutdown(wait=True)
        store.close()
