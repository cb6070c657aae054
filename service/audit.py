"""The audit trail: one append-only row per prediction and per job action, in the job store's database.

Who (the key's id, never the key), what (action, endpoint, HTTP status, problem code), with which models (name,
version, sha256), on which image (the SOP Instance UID's sha256 prefix, never the UID) and what the service said
(reliability, outlier verdict, positive findings). No patient field reaches a row: the request path only hands
over what is listed here.

Rows are buffered in memory and written in batches by a background task, so a prediction never waits on the
database; a reader (GET /v1/audit) flushes first and so sees every answer already given. When the database is
unreachable the buffer keeps the rows (up to `max_buffered`; past that new rows are dropped, counted and logged).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from fastapi import Request
from sqlalchemy import Engine, func, select

from service.errors import classify
from service.jobs.store import writing
from service.jobs.tables import audit, utcnow

log = logging.getLogger("service.audit")
FLUSH_EVERY_S = 1.0


@dataclass
class AuditEntry:
    """Filled by the route while it works; the HTTP status and problem code are set on the way out."""

    action: str
    status: int = 200
    problem: str | None = None
    job_id: str | None = None
    models: dict[str, Any] | None = None
    sop_uid_hash: str | None = None
    verdicts: dict[str, Any] | None = None

    def prediction(self, result: dict[str, Any]) -> None:
        """Take what the audit keeps from a prediction (the /v1/predict answer)."""
        self.models = {
            role: {key: ref[key] for key in ("name", "version", "sha256")} for role, ref in result["models"].items()
        }
        self.sop_uid_hash = result["image"].get("sop_instance_uid_hash")
        self.verdicts = {
            "reliability": result["reliability"]["status"],
            "outlier": result["outlier"]["verdict"],
            "abnormal": result["abnormal"]["positive"],
            "positive": [finding["label"] for finding in result["findings"] if finding["positive"]],
        }

    def job(self, job: dict[str, Any]) -> None:
        self.job_id = job["id"]
        self.models = {
            role: {key: ref.get(key) for key in ("name", "version", "sha256")} for role, ref in job["models"].items()
        }
        self.verdicts = {"state": job["state"], "items": job["total"]}


@dataclass
class AuditTrail:
    engine: Engine
    max_buffered: int = 100_000
    dropped: int = 0
    _buffer: deque[dict[str, Any]] = field(default_factory=deque)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def record(self, request: Request, entry: AuditEntry) -> None:
        principal = getattr(request.state, "principal", None)
        route = request.scope.get("route")
        if len(self._buffer) >= self.max_buffered:  # the newest row is dropped: the oldest may be being written now
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.error("audit rows dropped: the database has not taken them", extra={"dropped": self.dropped})
            return
        self._buffer.append(
            {
                "at": utcnow(),
                "key_id": principal.id if principal is not None else "unauthenticated",
                "action": entry.action,
                "endpoint": f"{request.method} {getattr(route, 'path', request.url.path)}"[:128],
                "status": entry.status,
                "problem": entry.problem,
                "request_id": request.state.request_id,
                "job_id": entry.job_id,
                "models": entry.models,
                "sop_uid_hash": entry.sop_uid_hash,
                "verdicts": entry.verdicts,
            }
        )

    async def flush(self) -> int:
        """Write what is buffered; rows stay buffered (in order) when the database refuses them."""
        async with self._lock:
            rows = list(self._buffer)
            if not rows:
                return 0
            await asyncio.to_thread(self._insert, rows)
            for _ in rows:
                self._buffer.popleft()
            return len(rows)

    def _insert(self, rows: list[dict[str, Any]]) -> None:
        with writing(self.engine) as connection:
            connection.execute(audit.insert(), rows)

    async def run(self) -> None:
        """The background writer: flush every FLUSH_EVERY_S until cancelled (then once more)."""
        try:
            while True:
                await asyncio.sleep(FLUSH_EVERY_S)
                try:
                    await self.flush()
                except Exception as error:  # noqa: BLE001 - the database is away: keep the rows, retry next tick
                    log.warning("audit rows not written yet", extra={"error": type(error).__name__})
        finally:
            try:
                await self.flush()
            except Exception as error:  # noqa: BLE001 - shutting down: say what was lost
                log.error("audit rows lost at shutdown", extra={"rows": len(self._buffer), "error": str(error)})

    def query(
        self,
        *,
        since: datetime | None,
        until: datetime | None,
        key_id: str | None,
        limit: int,
        offset: int,
    ) -> tuple[list[dict[str, Any]], int]:
        """Newest first, filtered by time (since inclusive, until exclusive) and key id."""
        where = []
        if since is not None:
            where.append(audit.c.at >= since)
        if until is not None:
            where.append(audit.c.at < until)
        if key_id is not None:
            where.append(audit.c.key_id == key_id)
        with self.engine.connect() as connection:
            total = connection.execute(select(func.count()).select_from(audit).where(*where)).scalar_one()
            rows = connection.execute(
                select(audit).where(*where).order_by(audit.c.id.desc()).limit(limit).offset(offset)
            ).mappings()
            return [dict(row) for row in rows], int(total)


@asynccontextmanager
async def audited(request: Request, action: str) -> AsyncIterator[AuditEntry]:
    """Record one audit row for the work inside, with the status the client will be answered."""
    entry = AuditEntry(action)
    try:
        yield entry
    except Exception as error:
        entry.status, entry.problem = classify(error)
        raise
    except BaseException:  # cancelled: the client went away before an answer
        entry.status, entry.problem = 499, "client_closed_request"
        raise
    finally:
        request.app.state.audit.record(request, entry)
