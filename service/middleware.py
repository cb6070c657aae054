"""Pure-ASGI middleware: request ids, upload size limits, security headers, access log line and HTTP metrics.

The size limit is enforced twice: a declared Content-Length over the limit is refused before any byte is read,
and a body without one (chunked) is counted as it streams, so nobody can push an unbounded upload.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import PROBLEM_MEDIA_TYPE, ProblemError, problem_body
from service.metrics import ServiceMetrics

log = logging.getLogger("service.access")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


# The clinician page needs nothing but its own files and data: URLs for the PNGs the API returns. FastAPI's /docs
# pages load Swagger UI from a CDN with inline script, so they get only the framing and sniffing rules.
PAGE_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
DOCS_POLICY = "frame-ancestors 'none'"
DOCS_PATHS = ("/docs", "/redoc")


def security_headers(path: str, content_type: str) -> list[tuple[bytes, bytes]]:
    headers = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer")]
    if content_type.startswith("text/html"):
        policy = DOCS_POLICY if path.startswith(DOCS_PATHS) else PAGE_POLICY
        headers += [(b"content-security-policy", policy.encode()), (b"x-frame-options", b"DENY")]
    return headers


def too_large(limit: int, got: str) -> ProblemError:
    return ProblemError(413, "upload_too_large", f"expected an upload of at most {limit} bytes, got {got}")


class RequestContextMiddleware:
    def __init__(
        self, app: ASGIApp, metrics: ServiceMetrics, max_upload_bytes: int, path_limits: dict[str, int] | None = None
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.max_upload_bytes = max_upload_bytes
        self.path_limits = path_limits or {}  # e.g. job zips may be larger than single images

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        offered = headers.get("x-request-id", "")
        request_id = offered if _REQUEST_ID.match(offered) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        status = {"code": 500}
        received = {"bytes": 0}
        limit = self.path_limits.get(scope["path"], self.max_upload_bytes)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                headers = list(message.get("headers", []))
                content_type = next((v.decode("latin-1") for k, v in headers if k.lower() == b"content-type"), "")
                message["headers"] = [
                    *headers,
                    (b"x-request-id", request_id.encode("ascii")),
                    *security_headers(scope["path"], content_type),
                ]
            await send(message)

        async def counted_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                received["bytes"] += len(message.get("body", b""))
                if received["bytes"] > limit:
                    raise too_large(limit, f"more than that (the body was still streaming at {received['bytes']})")
            return message

        try:
            declared = headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                await self._refuse(send_with_id, too_large(limit, f"Content-Length {declared}"), request_id)
            else:
                await self.app(scope, counted_receive, send_with_id)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            seconds = time.perf_counter() - start
            self.metrics.requests.labels(template, scope["method"], str(status["code"])).inc()
            self.metrics.latency.labels(template).observe(seconds)
            log.info(
                "request",
                extra={
                    "request_id": request_id,
                    "method": scope["method"],
                    "route": template,
                    "status": status["code"],
                    "duration_ms": round(seconds * 1e3, 2),
                    "bytes_in": received["bytes"],
                },
            )

    @staticmethod
    async def _refuse(send: Send, error: ProblemError, request_id: str) -> None:
        body = json.dumps(problem_body(error.status, error.code, error.detail, error.title)).encode()
        await send(
            {
                "type": "http.response.start",
                "status": error.status,
                "headers": [
                    (b"content-type", PROBLEM_MEDIA_TYPE.encode()),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
