"""create_app(settings): the FastAPI application. The lifespan loads the registry's model set, opens and warms the
ONNX Runtime sessions and starts the micro-batchers; shutdown drains them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from service.admission import Admission
from service.audit import AuditTrail
from service.config import Settings, get_settings
from service.errors import install_error_handlers
from service.jobs.engines import start_job_engine
from service.jobs.store import JobStore
from service.logs import configure_logging
from service.metrics import ServiceMetrics
from service.middleware import RequestContextMiddleware
from service.openapi import install_contract
from service.rate_limit import RateLimiter
from service.registry_watch import RegistryWatcher
from service.routes import audit as audit_routes
from service.routes import health, jobs, models, predict
from service.security import KeyRing
from service.state import ModelManager

log = logging.getLogger("service.app")
WEB_DIR = Path(__file__).with_name("web")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings.log_level, settings.log_json)
    keyring = KeyRing.parse(settings.api_keys)  # a malformed XRAY_API_KEYS stops startup, not the first request
    metrics = ServiceMetrics(settings.prometheus_multiproc_dir)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.decode_pool = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="decode")
        manager = app.state.manager
        if not keyring.enabled:
            log.warning("no API keys configured (XRAY_API_KEYS): every endpoint is open")
        app.state.jobs = await asyncio.to_thread(JobStore.open, settings.job_database_url())  # migrates first
        audit = app.state.audit = AuditTrail(app.state.jobs.engine)
        audit_writer = asyncio.get_running_loop().create_task(audit.run())
        await manager.start()
        watcher = RegistryWatcher(manager, settings.registry_poll_s)
        watcher.start()
        engine = app.state.job_engine = await start_job_engine(settings, app.state.jobs, manager, app.state.decode_pool)
        try:
            yield
        finally:
            await watcher.stop(settings.drain_timeout_s)
            if engine is not None:
                await engine.stop(settings.drain_timeout_s)
            await manager.close()
            audit_writer.cancel()  # its last flush writes what the drained requests recorded
            await asyncio.gather(audit_writer, return_exceptions=True)
            app.state.decode_pool.shutdown(wait=True)
            app.state.jobs.close()

    app = FastAPI(
        title="X-ray abnormality detection",
        version="0.1.0",
        description="Scores chest radiographs (PNG, JPEG, DICOM) with the registry's models. Research use only.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.keyring = keyring
    app.state.metrics = metrics
    app.state.manager = ModelManager(settings, metrics)
    app.state.admission = Admission(settings.max_active_uploads)
    app.state.rate_limiter = None
    if settings.rate_limit_per_minute:
        app.state.rate_limiter = RateLimiter(settings.rate_limit_per_minute, settings.rate_limit_burst)
    app.state.job_engine = None  # the runner scoring jobs in this process, if any (service.jobs.engines)
    install_error_handlers(app)
    install_contract(app)
    app.add_middleware(
        RequestContextMiddleware,
        metrics=metrics,
        max_upload_bytes=settings.max_upload_bytes,
        path_limits={"/v1/jobs": settings.job_max_upload_bytes},
    )
    if settings.cors_origins:  # closed unless configured: the page is served from the API's own origin
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Location", "Retry-After"],
        )
    for router in (health.router, models.router, predict.router, jobs.router, audit_routes.router):
        app.include_router(router)

    app.mount("/ui", StaticFiles(directory=WEB_DIR), name="ui")

    @app.get("/", include_in_schema=False)
    async def home() -> FileResponse:  # the clinician UI (service/web/): static files driven by the API
        return FileResponse(WEB_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    return app


def app_factory() -> FastAPI:
    """Entry point for `uvicorn --factory service.app:app_factory` (each worker process builds its own app)."""
    return create_app()
