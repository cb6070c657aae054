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
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from models.imaging import ImagingError
from service.batching import BatcherClosedError, QueueFullError
from service.jobs.outage import describe_database_error
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


# Exceptions with a fixed answer: (status, code). The ones carrying their own status (ProblemError, ImagingError,
# SourceError) are read from the exception; `classify` gives both, for the handlers and for the audit trail.
FIXED_ANSWERS: dict[type[Exception], tuple[int, str]] = {
    QueueFullError: (503, "queue_full"),
    OverloadedError: (503, "overloaded"),
    NotReadyError: (503, "not_ready"),
    BatcherClosedError: (503, "not_ready"),
    UnknownLabelError: (422, "unknown_label"),
    NoHeatmapsError: (409, "no_heatmaps"),
}
REJECTION_METRIC = {"queue_full", "overloaded"}  # counted in xray_rejected_total


def classify(error: BaseException) -> tuple[int, str]:
    """The status and problem code the service answers for `error` (500 internal_error when it is not mapped)."""
    if isinstance(error, ProblemError):
        return error.status, error.code
    if isinstance(error, ImagingError | SourceError):
        return error.http_status, error.code
    if isinstance(error, StarletteHTTPException):
        return error.status_code, {404: "not_found", 405: "method_not_allowed"}.get(
            error.status_code, f"http_{error.status_code}"
        )
    if isinstance(error, RequestValidationError):
        return 422, "invalid_request"
    if isinstance(error, OperationalError):
        return 503, "database_unavailable"
    for kind, answer in FIXED_ANSWERS.items():
        if isinstance(error, kind):
            return answer
    return 500, "internal_error"


async def _fixed(request: Request, error: Exception) -> JSONResponse:
    status, code = classify(error)
    if code in REJECTION_METRIC:
        request.app.state.metrics.rejected.labels(code).inc()
    return problem_response(status, code, str(error), headers=_retry_after(request) if status == 503 else None)


async def _database(request: Request, error: OperationalError) -> JSONResponse:
    # the driver's message may quote SQL and parameters: the answer says what is wrong in words, the log has the rest
    log.warning("job database unavailable", extra={"path": request.url.path, "error": str(error.orig)[:300]})
    detail = describe_database_error(error) + "; retry later"
    return problem_response(503, "database_unavailable", detail, headers=_retry_after(request))


async def _source(_: Request, error: SourceError) -> JSONResponse:
    return problem_response(error.http_status, error.code, error.detail)


async def _http(_: Request, error: StarletteHTTPException) -> JSONResponse:
    status, code = classify(error)
    return problem_response(status, code, str(error.detail), headers=getattr(error, "headers", None))


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
    for kind in FIXED_ANSWERS:
        app.add_exception_handler(kind, _fixed)
    app.add_exception_handler(SourceError, _source)
    app.add_exception_handler(OperationalError, _database)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(Exception, _unexpected)
