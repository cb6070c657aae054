"""Batch jobs: POST /v1/jobs (a zip upload, or server-side paths), GET /v1/jobs, GET /v1/jobs/{id},
GET /v1/jobs/{id}/results (CSV or JSON lines, streamed), DELETE /v1/jobs/{id} (cancel).

A user key sees only its own jobs (another's answer 404, as if absent); an admin key sees all."""

from __future__ import annotations

import asyncio
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import ValidationError
from starlette.concurrency import iterate_in_threadpool

from service.audit import audited
from service.dependencies import ManagerDep, PrincipalDep, SettingsDep, form_file, multipart_form
from service.errors import ProblemError
from service.jobs.intake import new_workdir, remove_workdir, server_items, unpack_upload
from service.jobs.results import stream_rows
from service.jobs.runner import ItemProblem, read_file
from service.jobs.sources import save_stream
from service.jobs.status import job_status
from service.jobs.store import JobNotFoundError, JobStore
from service.pipeline import encode_overlays
from service.schemas import MAX_ROW_INDEX, JobList, JobRequest, JobStatus, PredictionView, problems

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
ZIP_TYPES = ("application/zip", "application/x-zip-compressed")
RESULT_TYPES = {"csv": "text/csv; charset=utf-8", "jsonl": "application/x-ndjson"}
SUBMIT_DOC = {
    "requestBody": {
        "required": True,
        "description": "a zip of images (multipart field `file`, or the raw body as application/zip), or JSON naming "
        "a folder or paths under XRAY_ALLOWED_SOURCE_ROOTS",
        "content": {
            "application/json": {"schema": JobRequest.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary"}},
                    "required": ["file"],
                }
            },
            **{media: {"schema": {"type": "string", "format": "binary"}} for media in ZIP_TYPES},
        },
    }
}


def _store(request: Request) -> JobStore:
    return request.app.state.jobs


def _status(request: Request, job: dict) -> JobStatus:
    """The job as the API shows it, with this process's runner's trouble (a full disk, a lost database) if any."""
    engine = request.app.state.job_engine
    return job_status(job, paused=engine.trouble.problem if engine is not None else None)


async def _visible_job(request: Request, principal, job_id: str) -> dict:
    try:
        job = await asyncio.to_thread(_store(request).get_job, job_id)
    except JobNotFoundError:
        job = None
    if job is None or not principal.may_see(job["owner"]):
        raise ProblemError(404, "job_not_found", f"no job {job_id!r} visible to this API key")
    return job


async def _uploaded_items(request: Request, media: str, settings) -> tuple[str, str, list]:
    """Stream the zip to a fresh folder under data_dir, then check and unpack it there."""
    workdir = new_workdir(settings)
    zip_path = workdir / "upload.zip"
    name = "upload.zip"
    try:
        if media == "multipart/form-data":
            async with multipart_form(request) as form:
                upload = form_file(form)
                name = upload.filename or name

                async def chunks():
                    while chunk := await upload.read(1 << 20):
                        yield chunk

                await save_stream(chunks(), zip_path, settings.job_max_upload_bytes)
        else:
            await save_stream(request.stream(), zip_path, settings.job_max_upload_bytes)
        found = await asyncio.to_thread(unpack_upload, zip_path, settings)
    except BaseException:
        remove_workdir(workdir)
        raise
    return str(workdir), name, found


@router.post(
    "",
    status_code=202,
    summary="submit a batch scoring job",
    openapi_extra=SUBMIT_DOC,
    response_model=JobStatus,
    responses=problems(400, 403, 404, 413, 415, 422, 503),
)
async def submit_job(
    request: Request, response: Response, principal: PrincipalDep, settings: SettingsDep, manager: ManagerDep
) -> JobStatus:
    async with audited(request, "job.submit") as entry:
        job_id = await _create_job(request, principal, settings, manager)
        job = await asyncio.to_thread(_store(request).get_job, job_id)
        entry.job(job)
        entry.status = 202
    if request.app.state.job_engine is not None:
        request.app.state.job_engine.wake()
    response.headers["Location"] = f"/v1/jobs/{job_id}"
    return _status(request, job)


async def _create_job(request: Request, principal, settings, manager) -> str:
    """The job's items from the body (JSON paths, or a zip), then its rows; an unpacked zip is removed on failure."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    workdir = None
    if media == "application/json":
        try:
            body = JobRequest.model_validate_json(await request.body())
        except ValidationError as error:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in error.errors())
            raise ProblemError(422, "invalid_request", f"the job request did not validate: {problems}") from error
        kind, name, found = await asyncio.to_thread(server_items, body, settings)
    elif media == "multipart/form-data" or media in ZIP_TYPES:
        kind = "zip"
        workdir, name, found = await _uploaded_items(request, media, settings)
    else:
        raise ProblemError(
            415,
            "unsupported_media_type",
            f"expected application/json, multipart/form-data or application/zip; got {media or 'no Content-Type'}",
        )
    try:
        async with manager.acquire() as pipeline:
            models = pipeline.describe()["models"]
        job_id = await asyncio.to_thread(
            _store(request).create_job,
            owner=principal.id,
            source_kind=kind,
            source=name,
            alias=settings.model_alias,
            models=models,
            new_items=found,
            workdir=workdir,
        )
    except BaseException:
        remove_workdir(workdir)
        raise
    return job_id


@router.get("", summary="jobs, newest first (a user key: its own; an admin key: all)", response_model=JobList)
async def list_jobs(
    request: Request,
    principal: PrincipalDep,
    limit: Annotated[int, Query(ge=1, le=500, description="jobs per page")] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_ROW_INDEX, description="jobs to skip")] = 0,
) -> JobList:
    owner = None if principal.scope == "admin" else principal.id
    rows, total = await asyncio.to_thread(_store(request).list_jobs, owner, limit=limit, offset=offset)
    return JobList(jobs=[_status(request, row) for row in rows], total=total, limit=limit, offset=offset)


@router.get(
    "/{job_id}", summary="a job's state, counts, images/s and ETA", response_model=JobStatus, responses=problems(404)
)
async def get_job(request: Request, principal: PrincipalDep, job_id: str) -> JobStatus:
    return _status(request, await _visible_job(request, principal, job_id))


@router.get(
    "/{job_id}/results",
    summary="one row per item: CSV (a column per label) or JSON lines (the full prediction)",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/csv": {}, "application/x-ndjson": {}}}, **problems(404)},
)
async def job_results(
    request: Request,
    principal: PrincipalDep,
    job_id: str,
    format: Annotated[Literal["csv", "jsonl"], Query(description="csv or jsonl")] = "jsonl",  # noqa: A002
) -> StreamingResponse:
    job = await _visible_job(request, principal, job_id)
    labels = list(job["models"].get("classifier", {}).get("labels", []))
    lines = stream_rows(_store(request).iter_items(job_id), format, labels)
    return StreamingResponse(
        iterate_in_threadpool(lines),
        media_type=RESULT_TYPES[format],
        headers={"Content-Disposition": f'attachment; filename="job-{job_id}.{format}"'},
    )


@router.get(
    "/{job_id}/items/{position}/view",
    summary="one item's film scored again for the viewer, as /v1/predict/view answers (while the file exists)",
    response_model=PredictionView,
    response_model_exclude_unset=True,
    responses=problems(404, 410, 413, 415, 422, 503),
)
async def item_view(
    request: Request,
    principal: PrincipalDep,
    settings: SettingsDep,
    manager: ManagerDep,
    job_id: str,
    position: Annotated[int, Path(ge=0, le=MAX_ROW_INDEX, description="the item's place in its job, from 0")],
) -> dict:
    await _visible_job(request, principal, job_id)
    item = await asyncio.to_thread(_store(request).get_item, job_id, position)
    if item is None:
        raise ProblemError(404, "item_not_found", f"job {job_id!r} has no item at position {position}")
    try:
        data = await asyncio.to_thread(read_file, item["path"], settings.max_upload_bytes)
    except FileNotFoundError as error:
        raise ProblemError(
            410, "film_gone", "the film is no longer on the server (an uploaded zip is removed when its job is over)"
        ) from error
    except ItemProblem as error:
        raise ProblemError(413, error.code, error.detail) from error
    async with audited(request, "job.item_view") as entry:
        entry.job_id = job_id
        async with request.app.state.admission.slot(), manager.acquire() as pipeline:
            result, layers = await pipeline.predict(data, request.app.state.decode_pool, layers=True)
        entry.prediction(result)
    return {"request_id": request.state.request_id, **result, "heat_layers": encode_overlays(layers)}


@router.delete(
    "/{job_id}",
    summary="cancel: queued items are skipped, items being scored finish",
    response_model=JobStatus,
    responses=problems(404),
)
async def cancel_job(request: Request, principal: PrincipalDep, job_id: str) -> JobStatus:
    await _visible_job(request, principal, job_id)
    async with audited(request, "job.cancel") as entry:
        job = await asyncio.to_thread(_store(request).cancel, job_id)
        entry.job(job)
    return _status(request, job)
