"""Turn a batch job's source (an uploaded zip, a server-side folder, a list of server-side paths) into items to score.

Every refusal is a `SourceError` with a snake_case code and an HTTP status, raised before any work is queued.
Zips are checked as a whole from the central directory before a byte is extracted (size, entry count, ratio,
encryption, zip-slip, symlinks), then extracted by streaming with the real decompressed bytes counted. Server-side
paths must resolve (symlinks followed) inside one of the allowed source roots. Stdlib only: no torch, no fastapi.
"""

from __future__ import annotations

import os
import re
import stat
import zipfile
import zlib
from collections.abc import AsyncIterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

_CHUNK = 1024 * 1024
_RATIO_MIN_BYTES = 1024 * 1024  # small files compress absurdly well (a blank mask); only big ones can be bombs
_MAX_NAME_PART_BYTES = 255  # NAME_MAX on Linux ext4/xfs
_CD_BYTES_PER_ENTRY = 1024  # generous average for a central-directory record (46 bytes + name + extra + comment)
_DRIVE = re.compile(r"^[A-Za-z]:")


class SourceError(ValueError):
    """A source refused as a whole. `code` (snake_case) and `http_status` feed the API's problem+json answer."""

    def __init__(self, code: str, detail: str, http_status: int = 422) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.http_status = http_status


@dataclass(frozen=True)
class SourceLimits:
    max_uncompressed_bytes: int = 8 * 1024**3  # sum of entries' uncompressed sizes
    max_entries: int = 50_000  # entries in one zip (directories included)
    max_ratio: float = 200.0  # an entry's uncompressed/compressed ratio above this = zip bomb
    max_entry_bytes: int = 256 * 1024**2  # one entry's uncompressed size


@dataclass(frozen=True)
class SourceItem:
    reference: str  # what the user sees in results: the zip entry name or the absolute path of a server-side file
    path: Path  # the file the runner reads


async def save_stream(chunks: AsyncIterable[bytes], target: Path, max_bytes: int) -> int:
    """Write an upload's chunks to `target` as they arrive, never holding it in memory; over `max_bytes`, empty, or
    on any failure (the client went away) the partial file is deleted."""
    total = 0
    try:
        with open(target, "wb") as out:
            async for chunk in chunks:
                total += len(chunk)
                if total > max_bytes:
                    raise SourceError(
                        "upload_too_large", f"expected an upload of at most {max_bytes} bytes; got more", 413
                    )
                out.write(chunk)
        if total == 0:
            raise SourceError("empty_input", "expected a zip archive, got 0 bytes", 400)
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    return total


# ---------------------------------------------------------------------------------------------------------- zips


def _entry_parts(name: str) -> tuple[str, ...]:
    """The entry's path parts relative to the extraction folder; SourceError if the name could escape it."""
    posix = name.replace("\\", "/")  # a Windows-made zip's separators; also stops `..\evil` from slipping through
    if posix.startswith("/") or _DRIVE.match(posix):
        raise SourceError("zip_slip", f"entry {name!r} is an absolute path; expected a path relative to the zip", 422)
    parts = tuple(p for p in posix.split("/") if p not in ("", "."))
    if ".." in parts:
        raise SourceError("zip_slip", f"entry {name!r} contains '..'; expected a path inside the zip", 422)
    if not parts:
        raise SourceError("zip_bad_name", f"entry {name!r} names no file", 422)
    for part in parts:
        if len(part.encode("utf-8", "surrogateescape")) > _MAX_NAME_PART_BYTES:
            raise SourceError("zip_bad_name", f"entry {name!r} has a name part over {_MAX_NAME_PART_BYTES} bytes", 422)
    return parts


def _skipped(parts: tuple[str, ...]) -> bool:
    """macOS Finder's resource forks: `__MACOSX/...` and `._name` carry no image."""
    return parts[0] == "__MACOSX" or parts[-1].startswith("._")


def _precheck_end_record(fp: IO[bytes], limits: SourceLimits) -> None:
    """Refuse a huge central directory before zipfile parses it into ZipInfo objects (memory, not disk, is at risk).

    zipfile parses the whole directory by its byte size, not its declared count, so both are checked. Uses zipfile's
    private `_EndRecData` (stable since Python 2); if it ever disappears the post-open count check still applies.
    """
    end_record = getattr(zipfile, "_EndRecData", None)
    if end_record is None:
        return
    record = end_record(fp)
    fp.seek(0)
    if not record:
        raise SourceError("not_a_zip", "expected a zip archive; no end-of-central-directory record found", 422)
    count, cd_size = record[zipfile._ECD_ENTRIES_TOTAL], record[zipfile._ECD_SIZE]
    if count > limits.max_entries or cd_size > limits.max_entries * _CD_BYTES_PER_ENTRY:
        raise SourceError(
            "zip_too_many_entries",
            f"expected at most {limits.max_entries} entries; the zip declares {count} "
            f"in a {cd_size}-byte central directory",
            413,
        )


def _check_entry(info: zipfile.ZipInfo, limits: SourceLimits) -> tuple[str, ...]:
    parts = _entry_parts(info.filename)
    if stat.S_ISLNK(info.external_attr >> 16):
        raise SourceError("zip_slip", f"entry {info.filename!r} is a symlink entry; expected regular files", 422)
    if info.flag_bits & 0x1:
        raise SourceError("zip_encrypted", f"entry {info.filename!r} is encrypted; expected an unencrypted zip", 422)
    if info.file_size > limits.max_entry_bytes:
        raise SourceError(
            "zip_entry_too_large",
            f"expected entries of at most {limits.max_entry_bytes} bytes; {info.filename!r} is {info.file_size}",
            413,
        )
    ratio = info.file_size / max(info.compress_size, 1)
    if info.file_size > _RATIO_MIN_BYTES and ratio > limits.max_ratio:
        raise SourceError(
            "zip_bomb",
            f"expected a compression ratio of at most {limits.max_ratio:g}; {info.filename!r} declares {ratio:.0f}",
            413,
        )
    return parts


def _plan_extraction(
    zf: zipfile.ZipFile, target_dir: Path, limits: SourceLimits
) -> list[tuple[zipfile.ZipInfo, str, Path]]:
    """Check every entry from the central directory; return (info, reference, destination) for the files to extract."""
    infos = zf.infolist()
    if len(infos) > limits.max_entries:
        raise SourceError(
            "zip_too_many_entries", f"expected at most {limits.max_entries} entries; the zip has {len(infos)}", 413
        )
    real_target = Path(os.path.realpath(target_dir))
    plan: list[tuple[zipfile.ZipInfo, str, Path]] = []
    files: set[tuple[str, ...]] = set()
    parents: set[tuple[str, ...]] = set()
    declared_total = compressed_total = 0
    for info in infos:
        parts = _check_entry(info, limits)
        declared_total += info.file_size
        compressed_total += info.compress_size
        if info.filename.replace("\\", "/").endswith("/") or _skipped(parts):
            continue
        # realpath also catches a symlink already present in target_dir (a fresh folder has none).
        dest = Path(os.path.realpath(real_target.joinpath(*parts)))
        if not dest.is_relative_to(real_target):
            raise SourceError("zip_slip", f"entry {info.filename!r} resolves outside the extraction folder", 422)
        ancestors = {parts[:i] for i in range(1, len(parts))}
        if parts in files or parts in parents or ancestors & files:
            raise SourceError(
                "zip_duplicate_entry", f"entry {info.filename!r} clashes with another entry of the same path", 422
            )
        files.add(parts)
        parents |= ancestors
        plan.append((info, "/".join(parts), dest))
    if declared_total > limits.max_uncompressed_bytes:
        raise SourceError(
            "zip_too_large",
            f"expected at most {limits.max_uncompressed_bytes} bytes uncompressed; the zip declares {declared_total}",
            413,
        )
    # Many entries each under the per-entry ratio threshold can still make a bomb together.
    ratio = declared_total / max(compressed_total, 1)
    if declared_total > _RATIO_MIN_BYTES and ratio > limits.max_ratio:
        raise SourceError(
            "zip_bomb",
            f"expected a compression ratio of at most {limits.max_ratio:g}; the whole zip declares {ratio:.0f}",
            413,
        )
    return plan


# What reading a damaged archive raises: bad CRC, truncated data, an unknown method, a seek to a negative offset.
_ARCHIVE_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, ValueError, OSError)


def _extract_entry(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, dest: Path, budget: int, limits: SourceLimits, created: list[Path]
) -> int:
    """Stream one entry to `dest` (appended to `created` once made), counting real bytes (headers can lie).

    Only errors from reading the archive become `zip_corrupt`; a failing write (a full disk) stays a server error.
    """

    def corrupt(exc: BaseException) -> SourceError:
        return SourceError("zip_corrupt", f"entry {info.filename!r} could not be read: {exc}", 422)

    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        src = zf.open(info)
    except _ARCHIVE_ERRORS as exc:
        raise corrupt(exc) from exc
    written = 0
    with src, open(dest, "xb") as out:  # "x": never overwrite, never follow a planted link
        created.append(dest)
        while True:
            try:
                chunk = src.read(_CHUNK)
            except _ARCHIVE_ERRORS as exc:
                raise corrupt(exc) from exc
            if not chunk:
                break
            written += len(chunk)
            if written > info.file_size:
                raise SourceError(
                    "zip_bomb", f"entry {info.filename!r} decompresses past its declared {info.file_size} bytes", 413
                )
            if written > budget:
                raise SourceError(
                    "zip_too_large",
                    f"expected at most {limits.max_uncompressed_bytes} bytes uncompressed; extraction went past it",
                    413,
                )
            out.write(chunk)
    if written != info.file_size:  # zipfile stops at the declared size but not short of it when the CRC agrees
        raise SourceError(
            "zip_corrupt", f"entry {info.filename!r} declares {info.file_size} bytes but holds {written}", 422
        )
    return written


def extract_zip(zip_path: Path, target_dir: Path, limits: SourceLimits) -> list[SourceItem]:
    """Check the zip as a whole, then extract its files under `target_dir`; one item per file, in the zip's order.

    Directory entries, `__MACOSX/` and `._*` resource forks are skipped; every other file is an item whatever its
    extension (the runner reports unreadable ones per item). A zip with no such file is refused as `empty_source`.
    On a refusal during extraction the files written so far are removed.
    """
    with open(zip_path, "rb") as fp:
        try:
            _precheck_end_record(fp, limits)
            zf = zipfile.ZipFile(fp)
        except SourceError:
            raise
        except (zipfile.BadZipFile, EOFError, NotImplementedError, ValueError, OSError) as exc:  # garbled directory
            raise SourceError("not_a_zip", f"expected a zip archive; {exc}", 422) from exc
        with zf:
            plan = _plan_extraction(zf, target_dir, limits)
            if not plan:
                raise SourceError("empty_source", "expected at least one file in the zip; found none", 422)
            target_dir.mkdir(parents=True, exist_ok=True)
            created: list[Path] = []
            budget = limits.max_uncompressed_bytes
            try:
                for info, _, dest in plan:
                    budget -= _extract_entry(zf, info, dest, budget, limits, created)
            except BaseException:
                for path in created:
                    path.unlink(missing_ok=True)
                raise
    return [SourceItem(reference, dest) for _, reference, dest in plan]


# ---------------------------------------------------------------------------------------------- server-side paths


def resolve_under_roots(path: str | Path, roots: Sequence[Path]) -> Path:
    """The real path (symlinks followed) of `path`, which must lie inside the real path of one of `roots`.

    Containment is checked before existence, so a 404 never tells whether a file outside the roots exists.
    """
    if not roots:
        raise SourceError(
            "server_paths_disabled",
            "server-side paths are disabled on this server; set XRAY_ALLOWED_SOURCE_ROOTS to allow them",
            403,
        )
    allowed = ", ".join(str(r) for r in roots)
    given = os.fspath(path)
    if not given or not os.path.isabs(given):
        raise SourceError("path_not_allowed", f"expected an absolute path under one of: {allowed}; got {given!r}", 422)
    try:
        real = Path(os.path.realpath(given))
    except (ValueError, OSError) as exc:  # an embedded NUL byte, a symlink loop on some platforms
        raise SourceError("path_not_allowed", f"path {given!r} cannot be resolved: {exc}", 422) from exc
    if not any(real.is_relative_to(os.path.realpath(root)) for root in roots):
        raise SourceError("path_not_allowed", f"expected a path under one of: {allowed}; {given!r} is not", 403)
    if not real.exists():
        raise SourceError("path_not_found", f"path {given!r} does not exist", 404)
    return real


def _walk(given: str, real_folder: Path, roots: Sequence[Path]) -> Iterator[SourceItem]:
    """Regular files under `real_folder`, sorted, dot-entries skipped; references keep the folder as the user named it.

    Symlinked files are re-checked against the roots and left out when they escape (or dangle); symlinked
    directories are not descended into (os.walk followlinks=False), which also rules out loops.
    """
    shown = os.path.normpath(given)
    for dirpath, dirnames, filenames in os.walk(real_folder, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = os.path.relpath(dirpath, real_folder)
        shown_dir = shown if rel == "." else os.path.join(shown, rel)
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            full = Path(dirpath, name)
            if full.is_symlink():
                try:
                    full = resolve_under_roots(full, roots)
                except SourceError:
                    continue
            try:
                if not stat.S_ISREG(full.stat().st_mode):  # FIFOs, sockets, devices would hang or mislead the runner
                    continue
            except OSError:
                continue
            yield SourceItem(os.path.join(shown_dir, name), full)


def _collect(
    paths: Sequence[str | Path], roots: Sequence[Path], max_items: int, *, folders_only: bool = False
) -> list[SourceItem]:
    items: list[SourceItem] = []
    seen: set[Path] = set()

    def add(item: SourceItem) -> None:
        if item.path in seen:
            return
        seen.add(item.path)
        items.append(item)
        if len(items) > max_items:
            raise SourceError("too_many_items", f"expected at most {max_items} files; the source has more", 413)

    for given in paths:
        real = resolve_under_roots(given, roots)
        if real.is_dir():
            for item in _walk(os.fspath(given), real, roots):
                add(item)
        elif folders_only:
            raise SourceError("not_a_directory", f"expected a directory; {os.fspath(given)!r} is not one", 422)
        elif real.is_file():
            add(SourceItem(os.path.normpath(given), real))
        else:
            raise SourceError(
                "not_a_file", f"expected a regular file or directory; {os.fspath(given)!r} is neither", 422
            )
    if not items:
        raise SourceError("empty_source", "expected at least one file to score; found none", 422)
    return items


def folder_items(folder: str | Path, roots: Sequence[Path], *, max_items: int = 1_000_000) -> list[SourceItem]:
    """Every regular file under `folder` (recursively, sorted, dot-files and dot-directories skipped).

    `reference` is the file's absolute path under the folder as given; `path` is its real path. Symlinked files
    whose target lies outside every root (or is missing) are silently left out; symlinked directories are not walked.
    """
    return _collect([folder], roots, max_items, folders_only=True)


def path_items(paths: Sequence[str], roots: Sequence[Path], *, max_items: int = 1_000_000) -> list[SourceItem]:
    """One item per path, in order; a directory expands as in `folder_items`; duplicates (same real file) dropped."""
    return _collect(paths, roots, max_items)
