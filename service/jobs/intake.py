"""A job's intake: an uploaded zip (streamed to disk, checked, unpacked under data_dir/uploads) or server-side paths,
turned into the items the store queues. Refusals are `SourceError`s (problem+json via service.errors)."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

from service.config import Settings
from service.jobs.sources import SourceItem, SourceLimits, extract_zip, folder_items, path_items
from service.jobs.store import NewItem
from service.schemas import JobRequest

UPLOADS = "uploads"


def source_limits(settings: Settings) -> SourceLimits:
    return SourceLimits(
        max_uncompressed_bytes=settings.job_max_uncompressed_bytes,
        max_entries=settings.job_max_entries,
        max_ratio=settings.job_max_zip_ratio,
        max_entry_bytes=settings.max_upload_bytes,  # an entry is scored like an upload: the same size limit
    )


def new_items(found: list[SourceItem]) -> list[NewItem]:
    return [NewItem(item.reference, str(item.path)) for item in found]


def new_workdir(settings: Settings) -> Path:
    workdir = settings.data_dir / UPLOADS / uuid.uuid4().hex
    workdir.mkdir(parents=True)
    return workdir


def unpack_upload(zip_path: Path, settings: Settings) -> list[NewItem]:
    """Unpack the uploaded zip beside it (blocking: call it from a thread), then drop the zip itself."""
    try:
        return new_items(extract_zip(zip_path, zip_path.parent / "files", source_limits(settings)))
    finally:
        zip_path.unlink(missing_ok=True)


def server_items(request: JobRequest, settings: Settings) -> tuple[str, str, list[NewItem]]:
    """(source kind, source name, items) for a folder or a list of paths under the allowed roots (blocking)."""
    roots = settings.allowed_source_roots
    if request.folder is not None:
        return "folder", request.folder, new_items(folder_items(request.folder, roots))
    paths = request.paths or []
    return "paths", f"{len(paths)} paths", new_items(path_items(paths, roots))


def remove_workdir(workdir: str | Path | None) -> None:
    if workdir:
        shutil.rmtree(workdir, ignore_errors=True)
