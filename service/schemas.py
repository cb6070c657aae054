"""Pydantic request/response models: the API contract OpenAPI shows (clients generate code from it)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class JobRequest(BaseModel):
    """A job over files the server can read: one folder, or a list of files and folders, under one of
    XRAY_ALLOWED_SOURCE_ROOTS. (An upload instead: POST the zip as multipart field `file` or as application/zip.)"""

    folder: str | None = Field(default=None, description="absolute path of a folder; every file in it, recursively")
    paths: list[str] | None = Field(default=None, description="absolute paths of files or folders", max_length=100_000)

    @model_validator(mode="after")
    def _one_source(self) -> JobRequest:
        if (self.folder is None) == (self.paths is None):
            raise ValueError("expected exactly one of 'folder' or 'paths'")
        return self


class JobCounts(BaseModel):
    total: int = Field(description="items in the job")
    done: int = Field(description="items finished: scored, or refused with a per-item problem")
    succeeded: int = Field(description="items scored")
    failed: int = Field(description="items refused with a problem (not an image, unreadable, ...)")
    skipped: int = Field(description="items not scored because the job was cancelled")
    remaining: int = Field(description="items queued or being scored")


class JobProgress(BaseModel):
    images_per_s: float | None = Field(description="items finished per second since the job started")
    eta_s: float | None = Field(description="seconds left at that rate (null until the rate is known)")


class JobSource(BaseModel):
    kind: Literal["zip", "folder", "paths"]
    name: str = Field(description="the zip's file name, the folder, or how many paths were given")


class JobStatus(BaseModel):
    id: str
    state: JobState
    owner: str = Field(description="the submitting API key's id (a hash prefix), or 'anonymous'")
    source: JobSource
    alias: str = Field(description="the registry alias the job is scored with")
    models: dict[str, Any] = Field(description="the models serving that alias when the job was submitted")
    counts: JobCounts
    progress: JobProgress
    error: str | None = None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    results_url: str


class JobList(BaseModel):
    jobs: list[JobStatus]
    total: int
    limit: int
    offset: int
