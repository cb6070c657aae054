"""One error shape for every 4xx/5xx: RFC 9457 `application/problem+json` with type, title, status, detail, code.

Every exception the service can raise is mapped here, in one place (TGI's pattern); routes just raise.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from models.imaging import ImagingError
from service.batching import BatcherClosedError, QueueFullError
from service.jobs.sources import SourceError
from service.pipeline import NoHeatmapsError, UnknownLabelError
from service.state import NotReadyError

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_TYPE_BASE = "https://xray-service.dev/problems/"
log = logging.getLogger("service.errors")


class ProblemError(Exception):
    """Raise from anywhere in the service to answer with a problem+json body."""

    def __init__(
        self, status: int, code: str, detail: str, *, title: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.title = title or HTTPStatus(status).phrase
        self.headers = headers or {}


class OverloadedError(RuntimeError):
    """More uploads are being read and decoded than the server admits (checked before the body is read)."""


def problem_body(status: int, code: str, detail: str, title: str | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "type": PROBLEM_TYPE_BASE + code,
        "title": title or HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "code": code,
        **extra,
    }


def problem_response(
    status: int,
    code: str,
    detail: str,
    *,
    title: str | None = None,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> JSONResponse:
    body = problem_body(status, code, detail, title, **(extra or {}))
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_MEDIA_TYPE)


def _retry_after(request: Request) -> dict[str, str]:
    return {"Retry-After": str(request.app.state.settings.retry_after_s)}


async def _problem(_: Request, error: ProblemError) -> JSONResponse:
    return problem_response(error.status, error.code, error.detail, title=error.title, headers=error.headers)


async def _imaging(_: Request, error: ImagingError) -> JSONResponse:
    # ImagingError messages describe the bytes (sizes, tags, syntaxes), never header values that could carry PHI.
    return problem_response(error.http_status, error.code, str(error))


async def _queue_full(request: Request, error: QueueFullError) -> JSONResponse:
    request.app.state.metrics.rejected.labels("queue_full").inc()
    return problem_response(503, "queue_full", str(error), headers=_retry_after(request))


async def _overloaded(request: Request, error: OverloadedError) -> JSONResponse:
    request.app.state.metrics.rejected.labels("overloaded").inc()
    return problem_response(503, "overloaded", str(error), headers=_retry_after(request))


async def _not_ready(request: Request, error: Exception) -> JSONResponse:
    return problem_response(503, "not_ready", str(error), headers=_retry_after(request))


async def _unknown_label(_: Request, error: UnknownLabelError) -> JSONResponse:
    return problem_response(422, "unknown_label", str(error))


async def _no_heatmaps(_: Request, error: NoHeatmapsError) -> JSONResponse:
    return problem_response(409, "no_heatmaps", str(error))


async def _source(_: Request, error: SourceError) -> JSONResponse:
    return problem_response(error.http_status, error.code, error.detail)


async def _http(_: Request, error: StarletteHTTPException) -> JSONResponse:
    code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, f"http_{error.status_code}")
    return problem_response(error.status_code, code, str(error.detail), headers=getattr(error, "headers", None))


async def _validation(_: Request, error: RequestValidationError) -> JSONResponse:
    problems = "; ".join(
        f"{'.'.join(str(p) for p in item.get('loc', ()))}: {item.get('msg', '')}" for item in error.errors()
    )
    return problem_response(422, "invalid_request", f"the request did not validate: {problems}")


async def _unexpected(request: Request, error: Exception) -> JSONResponse:
    # Starlette answers this one outside the request-id middleware: carry the id here so a 500 can be traced
    request_id = request.scope.get("state", {}).get("request_id", "")
    log.exception(
        "unhandled error",
        extra={"request_id": request_id, "path": request.url.path, "error_type": type(error).__name__},
    )
    return problem_response(
        500,
        "internal_error",
        "the server failed to handle the request; it has been logged",
        headers={"X-Request-ID": request_id} if request_id else None,
        extra={"request_id": request_id},
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ProblemError, _problem)
    app.add_exception_handler(ImagingError, _imaging)
    app.add_exception_handler(QueueFullError, _queue_full)
    app.add_exception_handler(OverloadedError, _overloaded)
    app.add_exception_handler(NotReadyError, _not_ready)
    app.add_exception_handler(BatcherClosedError, _not_ready)
    app.add_exception_handler(UnknownLabelError, _unknown_label)
    app.add_exception_handler(NoHeatmapsError, _no_heatmaps)
    app.add_exception_handler(SourceError, _source)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(Exception, _unexpected)
