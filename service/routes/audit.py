"""GET /v1/audit: the audit trail (service.audit), admin only, newest first, filtered by time and key id."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request

from service.dependencies import AdminDep
from service.errors import ProblemError
from service.schemas import MAX_ROW_INDEX, AuditPage, AuditRecord, problems

router = APIRouter(prefix="/v1/audit", tags=["audit"], dependencies=[AdminDep])


@router.get(
    "",
    summary="the audit trail: one record per prediction and job action (admin key only)",
    response_model=AuditPage,
    responses=problems(403, 422, 503),
)
async def list_audit(
    request: Request,
    since: Annotated[datetime | None, Query(description="records at or after this time (ISO 8601, with zone)")] = None,
    until: Annotated[datetime | None, Query(description="records before this time (ISO 8601, with zone)")] = None,
    key_id: Annotated[str | None, Query(max_length=64, description="one key's records, e.g. key-0123abcd...")] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="records per page")] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_ROW_INDEX, description="records to skip")] = 0,
) -> AuditPage:
    for name, moment in (("since", since), ("until", until)):
        if moment is not None and moment.tzinfo is None:
            raise ProblemError(
                422, "invalid_request", f"expected {name} with a time zone (e.g. 2026-12-03T10:00:00Z), got {moment}"
            )
    trail = request.app.state.audit
    await trail.flush()  # every answer already given is in the table before it is read (503 if it cannot be)
    rows, total = await asyncio.to_thread(
        trail.query, since=since, until=until, key_id=key_id, limit=limit, offset=offset
    )
    return AuditPage(records=[AuditRecord(**row) for row in rows], total=total, limit=limit, offset=offset)
