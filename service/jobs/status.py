"""A job row as the API shows it: counts, throughput and ETA."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from service.jobs.tables import utcnow
from service.schemas import JobCounts, JobProgress, JobSource, JobStatus


def job_status(job: dict[str, Any], now: datetime | None = None, paused: str | None = None) -> JobStatus:
    """`paused`: the runner's current trouble, shown on unfinished jobs only."""
    now = now or utcnow()
    done = job["succeeded"] + job["failed"]
    remaining = job["total"] - done - job["skipped"]
    rate = eta = None
    if job["started_at"] is not None and done:
        elapsed = ((job["finished_at"] or now) - job["started_at"]).total_seconds()
        if elapsed > 0:
            rate = round(done / elapsed, 3)
            eta = round(remaining / rate, 1) if job["state"] in ("queued", "running") else 0.0
    return JobStatus(
        id=job["id"],
        state=job["state"],
        owner=job["owner"],
        source=JobSource(kind=job["source_kind"], name=job["source"]),
        alias=job["alias"],
        models=job["models"],
        counts=JobCounts(
            total=job["total"],
            done=done,
            succeeded=job["succeeded"],
            failed=job["failed"],
            skipped=job["skipped"],
            remaining=remaining,
        ),
        progress=JobProgress(images_per_s=rate, eta_s=eta),
        error=job["error"],
        paused=paused if job["state"] in ("queued", "running") else None,
        created_at=job["created_at"],
        started_at=job["started_at"],
        finished_at=job["finished_at"],
        results_url=f"/v1/jobs/{job['id']}/results",
    )
