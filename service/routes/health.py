"""Liveness, readiness (a real zero image through every session) and Prometheus metrics."""

from __future__ import annotations

import asyncio
import time
from typing import Literal

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field
from sqlalchemy.exc import OperationalError

from service.batching import QueueFullError
from service.dependencies import ManagerDep, SettingsDep
from service.errors import problem_response
from service.jobs.tables import JOB_STATES
from service.schemas import RegistryProblem, SessionInfo, problems

router = APIRouter(tags=["health"])
PROBE_REUSE_S = 1.0


class Alive(BaseModel):
    status: Literal["alive"]


class Ready(BaseModel):
    status: Literal["ready"]
    alias: str
    models: dict[str, SessionInfo] = Field(description="by role: classifier, autoencoder")
    registry_problem: RegistryProblem | None = Field(
        default=None,
        description="present when the registry changed but its new set could not be loaded: the models above "
        "(the last good set) serve on",
    )


READY_DOC = {"model": Ready, "description": "ready"}


@router.get("/healthz", summary="the process is alive", response_model=Alive)
@router.get("/v2/health/live", summary="the process is alive (KServe v2 path)", response_model=Alive)
async def healthz() -> dict:
    return {"status": "alive"}


@router.get(
    "/readyz",
    summary="models loaded, and a zero image just ran through each session",
    response_model=None,
    responses={200: READY_DOC, **problems(503)},
)
@router.get(
    "/v2/health/ready",
    summary="ready (KServe v2 path)",
    response_model=None,
    responses={200: READY_DOC, **problems(503)},
)
async def readyz(request: Request, manager: ManagerDep, settings: SettingsDep) -> Response | dict:
    """Unauthenticated, so a success is reused for PROBE_REUSE_S: probes cannot be used to fill the queues."""
    pipeline = manager.current
    if pipeline is None:
        return problem_response(503, "not_ready", manager.load_error or "the models are still loading")
    last = getattr(request.app.state, "last_ready_probe", None)
    if last is None or last[0] is not pipeline or time.monotonic() - last[1] > PROBE_REUSE_S:
        try:
            async with manager.acquire() as pipeline:
                await asyncio.wait_for(pipeline.probe(), settings.ready_timeout_s)
        except QueueFullError:
            return problem_response(503, "queue_full", "ready, but every inference queue slot is taken")
        except TimeoutError:
            return problem_response(
                503,
                "not_ready",
                f"a zero image did not come back from the sessions within {settings.ready_timeout_s} s",
            )
        except Exception as error:  # noqa: BLE001 - a failing session means not ready, not a crashed probe
            return problem_response(503, "not_ready", f"a zero image failed in the sessions: {type(error).__name__}")
        request.app.state.last_ready_probe = (pipeline, time.monotonic())
    ready = {"status": "ready", **pipeline.describe()}
    if manager.problem is not None:
        ready["registry_problem"] = manager.problem
    return ready


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    service_metrics = request.app.state.metrics
    manager = request.app.state.manager
    if manager.current is not None:
        for ref, depth in manager.current.queue_depths().items():
            service_metrics.queue_depth.labels(ref).set(depth)
    await _job_metrics(request, service_metrics)
    return Response(service_metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


async def _job_metrics(request: Request, service_metrics) -> None:
    """The job store's counts (the runner sets its own paused gauge); a database that is away leaves the last ones."""
    try:
        by_state, open_items = await asyncio.to_thread(request.app.state.jobs.state_counts)
    except OperationalError:
        return
    for state in JOB_STATES:
        service_metrics.jobs.labels(state).set(by_state.get(state, 0))
    service_metrics.job_items_open.set(open_items)
