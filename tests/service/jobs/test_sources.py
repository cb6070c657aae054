"""Batch job sources: zip checks (slip, symlinks, bombs, counts, lies), server-side roots, folders and path lists.

Real zips built with zipfile in tmp_path; headers are patched byte-wise where zipfile will not write a bad one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import pytest

from service.jobs.sources import (
    SourceError,
    SourceItem,
    SourceLimits,
    extract_zip,
    folder_items,
    path_items,
    resolve_under_roots,
    save_stream,
)
from tests.conftest import PROJECT_ROOT

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
DICOM = b"\0" * 128 + b"DICM" + bytes(range(200))
NO_EXT = b"raw bytes, no extension"
TEXT = b"notes about the scans\n"


def make_zip(
    path: Path, entries: list[tuple[str | zipfile.ZipInfo, bytes]], method: int = zipfile.ZIP_DEFLATED
) -> Path:
    with zipfile.ZipFile(path, "w", compression=method) as zf:
        for name, data in entries:
            zf.writestr(name, data)
    return path


def patch_central(path: Path, offset: int, fmt: str, value: int, entry: int = 0) -> None:
    """Overwrite one field of the `entry`-th central-directory record (zipfile reads sizes and flags from there)."""
    data = bytearray(path.read_bytes())
    start = -1
    for _ in range(entry + 1):
        start = data.index(b"PK\x01\x02", start + 1)
    struct.pack_into(fmt, data, start + offset, value)
    path.write_bytes(bytes(data))


def files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if not p.is_dir()] if folder.exists() else []


def refused(code: str, status: int, call, *args, **kwargs) -> SourceError:
    with pytest.raises(SourceError) as info:
        call(*args, **kwargs)
    assert (info.value.code, info.value.http_status) == (code, status), info.value.detail
    return info.value


# ---------------------------------------------------------------------------------------------------------- zips


def test_zip_items_keep_order_and_bytes_and_skip_macos_forks(tmp_path: Path) -> None:
    entries = [
        (zipfile.ZipInfo("scans/"), b""),
        ("scans/chest/a.png", PNG),
        ("__MACOSX/scans/chest/._a.png", b"fork"),
        ("scans/ct/b.dcm", DICOM),
        ("scans/chest/._a.png", b"fork"),
        ("scans/noext", NO_EXT),
        ("readme.txt", TEXT),
    ]
    zip_path = make_zip(tmp_path / "in.zip", entries)
    out = tmp_path / "out"
    items = extract_zip(zip_path, out, SourceLimits())
    assert [i.reference for i in items] == ["scans/chest/a.png", "scans/ct/b.dcm", "scans/noext", "readme.txt"]
    assert [i.path.read_bytes() for i in items] == [PNG, DICOM, NO_EXT, TEXT]
    assert all(i.path.is_relative_to(out.resolve()) for i in items)
    assert sorted(files_under(out)) == sorted(i.path for i in items)  # no forks, nothing else written


def test_zip_with_only_forks_is_empty(tmp_path: Path) -> None:
    zip_path = make_zip(tmp_path / "in.zip", [("__MACOSX/._a.png", b"x"), ("._b.png", b"y")])
    refused("empty_source", 422, extract_zip, zip_path, tmp_path / "out", SourceLimits())


@pytest.mark.parametrize(
    "name", ["../evil.png", "scans/../../evil.png", "scans/../evil.png", "..\\evil.png", "C:/evil.png", "C:evil.png"]
)
def test_zip_slip_refuses_whole_zip(tmp_path: Path, name: str) -> None:
    zip_path = make_zip(tmp_path / "in.zip", [("good.png", PNG), (name, PNG)])
    out = tmp_path / "deep" / "out"
    error = refused("zip_slip", 422, extract_zip, zip_path, out, SourceLimits())
    assert repr(name) in error.detail
    assert files_under(tmp_path / "deep") == []
    assert not (tmp_path / "evil.png").exists() and not (tmp_path / "deep" / "evil.png").exists()


@pytest.mark.parametrize("absolute", ["/tmp/evil.png", "abs"])
def test_zip_slip_absolute_name(tmp_path: Path, absolute: str) -> None:
    name = str(tmp_path / "abs-evil.png") if absolute == "abs" else absolute
    before = os.path.exists(name) and os.stat(name).st_mtime_ns
    # a ZipInfo keeps the leading "/" (writestr with a plain name, and ZipFile.write, would strip it)
    zip_path = make_zip(tmp_path / "in.zip", [("good.png", PNG), (zipfile.ZipInfo(name), PNG)])
    assert zipfile.ZipFile(zip_path).namelist()[1] == name
    out = tmp_path / "out"
    refused("zip_slip", 422, extract_zip, zip_path, out, SourceLimits())
    assert files_under(out) == []
    assert (os.path.exists(name) and os.stat(name).st_mtime_ns) == before


def test_zip_symlink_entry_refused(tmp_path: Path) -> None:
    link = zipfile.ZipInfo("scans/link.png")
    link.create_system = 3
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    zip_path = make_zip(tmp_path / "in.zip", [("scans/a.png", PNG), (link, b"/etc/passwd")])
    error = refused("zip_slip", 422, extract_zip, zip_path, tmp_path / "out", SourceLimits())
    assert "symlink" in error.detail and "scans/link.png" in error.detail
    assert files_under(tmp_path / "out") == []


def test_zip_bomb_by_ratio(tmp_path: Path) -> None:
    zip_path = make_zip(tmp_path / "in.zip", [("a.png", PNG), ("bomb.png", b"\0" * (50 * 1024**2))])
    assert zip_path.stat().st_size < 1024**2
    error = refused("zip_bomb", 413, extract_zip, zip_path, tmp_path / "out", SourceLimits(max_ratio=100))
    assert "bomb.png" in error.detail
    assert files_under(tmp_path / "out") == []


def test_zip_bomb_spread_over_small_entries(tmp_path: Path) -> None:
    zip_path = make_zip(tmp_path / "in.zip", [(f"{i}.png", b"\0" * (600 * 1024)) for i in range(20)])
    error = refused("zip_bomb", 413, extract_zip, zip_path, tmp_path / "out", SourceLimits(max_ratio=100))
    assert "whole zip" in error.detail
    assert files_under(tmp_path / "out") == []


def test_small_entry_with_high_ratio_is_fine(tmp_path: Path) -> None:
    zip_path = make_zip(tmp_path / "in.zip", [("blank.png", b"\0" * (512 * 1024))])
    (item,) = extract_zip(zip_path, tmp_path / "out", SourceLimits(max_ratio=100))
    assert item.path.stat().st_size == 512 * 1024


def test_zip_total_uncompressed_over_limit(tmp_path: Path) -> None:
    zip_path = make_zip(tmp_path / "in.zip", [("a.png", os.urandom(600)), ("b.png", os.urandom(600))])
    limits = SourceLimits(max_uncompressed_bytes=1000)
    error = refused("zip_too_large", 413, extract_zip, zip_path, tmp_path / "out", limits)
    assert "declares 1200" in error.detail  # refused from the central directory, before extraction
    assert files_under(tmp_path / "out") == []


def test_zip_entry_over_limit(tmp_path: Path) -> None:
    zip_path = make_zip(tmp_path / "in.zip", [("a.png", os.urandom(200))])
    error = refused(
        "zip_entry_too_large", 413, extract_zip, zip_path, tmp_path / "out", SourceLimits(max_entry_bytes=100)
    )
    assert "a.png" in error.detail and "100" in error.detail


def test_zip_with_too_many_entries_refused_with_default_limits(tmp_path: Path) -> None:
    zip_path = tmp_path / "many.zip"
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_STORED) as zf:
        for i in range(100_000):
            zf.writestr(f"{i}", b"")
    error = refused("zip_too_many_entries", 413, extract_zip, zip_path, tmp_path / "out", SourceLimits())
    assert "50000" in error.detail
    assert files_under(tmp_path / "out") == []

    # An end record lying about the count (zipfile parses the directory by its byte size) is caught after opening.
    data = bytearray(zip_path.read_bytes())
    zip64_end = data.rindex(b"PK\x06\x06")
    assert struct.unpack_from("<QQ", data, zip64_end + 24) == (100_000, 100_000)
    struct.pack_into("<QQ", data, zip64_end + 24, 10, 10)
    zip_path.write_bytes(bytes(data))
    error = refused("zip_too_many_entries", 413, extract_zip, zip_path, tmp_path / "out", SourceLimits())
    assert "has 100000" in error.detail


def test_zip_with_an_oversized_central_directory_refused(tmp_path: Path) -> None:
    names = ["dir/" * 275 + "a.png", "dir/" * 275 + "b.png"]  # 2 entries, ~2.3 KB of directory
    zip_path = make_zip(tmp_path / "in.zip", [(n, PNG) for n in names])
    error = refused("zip_too_many_entries", 413, extract_zip, zip_path, tmp_path / "out", SourceLimits(max_entries=2))
    assert "central directory" in error.detail
    assert len(extract_zip(zip_path, tmp_path / "out", SourceLimits(max_entries=3))) == 2


def test_encrypted_entry_refused(tmp_path: Path) -> None:
    zip_path = make_zip(tmp_path / "in.zip", [("a.png", PNG)])
    flags = zipfile.ZipFile(zip_path).infolist()[0].flag_bits
    patch_central(zip_path, 8, "<H", flags | 0x1)  # zipfile cannot write encrypted zips; set the flag it reads
    refused("zip_encrypted", 422, extract_zip, zip_path, tmp_path / "out", SourceLimits())


@pytest.mark.parametrize("names", [["a.png", "a.png"], ["a", "a/b.png"], ["a/b.png", "a"], ["a.png", "./a.png"]])
def test_clashing_entries_refused(tmp_path: Path, names: list[str]) -> None:
    with pytest.warns(UserWarning) if names[0] == names[1] else contextlib.nullcontext():
        zip_path = make_zip(tmp_path / "in.zip", [(n, PNG) for n in names])
    refused("zip_duplicate_entry", 422, extract_zip, zip_path, tmp_path / "out", SourceLimits())
    assert files_under(tmp_path / "out") == []


def test_header_lying_about_size_never_writes_more_than_declared(tmp_path: Path) -> None:
    real = os.urandom(4000)
    zip_path = make_zip(tmp_path / "in.zip", [("good.png", PNG), ("liar.png", real)])
    patch_central(zip_path, 24, "<I", 100, entry=1)  # uncompressed size: claims 100 bytes, holds 4000
    out = tmp_path / "out"
    refused("zip_corrupt", 422, extract_zip, zip_path, out, SourceLimits())  # CRC no longer matches
    assert files_under(out) == []  # good.png, already extracted, is removed with the refusal

    patch_central(zip_path, 16, "<I", zlib.crc32(real[:100]), entry=1)  # make the CRC agree with the lie
    items = extract_zip(zip_path, tmp_path / "out2", SourceLimits())
    assert items[1].path.read_bytes() == real[:100]


def test_header_claiming_more_than_it_holds_is_corrupt(tmp_path: Path) -> None:
    zip_path = make_zip(tmp_path / "in.zip", [("a.png", os.urandom(4000))], method=zipfile.ZIP_STORED)
    patch_central(zip_path, 24, "<I", 8000)
    refused("zip_corrupt", 422, extract_zip, zip_path, tmp_path / "out", SourceLimits())


@pytest.mark.parametrize("kind", ["text", "empty", "truncated", "png"])
def test_not_a_zip(tmp_path: Path, kind: str) -> None:
    good = make_zip(tmp_path / "good.zip", [("a.png", os.urandom(5000))]).read_bytes()
    data = {"text": b"hello, not a zip", "empty": b"", "truncated": good[: len(good) // 2], "png": PNG}[kind]
    (tmp_path / "in.zip").write_bytes(data)
    refused("not_a_zip", 422, extract_zip, tmp_path / "in.zip", tmp_path / "out", SourceLimits())


async def _chunks(*parts: bytes):
    for part in parts:
        yield part


def test_save_stream_writes_chunks(tmp_path: Path) -> None:
    target = tmp_path / "upload.zip"
    assert asyncio.run(save_stream(_chunks(b"ab", b"", b"cde"), target, max_bytes=5)) == 5
    assert target.read_bytes() == b"abcde"


def test_save_stream_over_limit_or_empty_deletes_partial_file(tmp_path: Path) -> None:
    target = tmp_path / "upload.zip"
    written: list[bool] = []

    async def chunks():
        for _ in range(10):
            written.append(target.exists())
            yield b"x" * 100

    refused("upload_too_large", 413, lambda: asyncio.run(save_stream(chunks(), target, 450)))
    assert written[-1] and len(written) == 5
    assert not target.exists()
    refused("empty_input", 400, lambda: asyncio.run(save_stream(_chunks(b""), target, 450)))
    assert not target.exists()


def test_save_stream_failing_source_deletes_partial_file(tmp_path: Path) -> None:
    async def chunks():
        yield b"x" * 100
        raise ConnectionError("client went away")

    with pytest.raises(ConnectionError):
        asyncio.run(save_stream(chunks(), tmp_path / "upload.zip", 1000))
    assert not (tmp_path / "upload.zip").exists()


# ---------------------------------------------------------------------------------------------- server-side paths


@pytest.fixture()
def tree(tmp_path: Path) -> dict[str, Path]:
    """root/ (allowed) with a scan tree, and a secret beside the root that must stay out of reach."""
    base = tmp_path.resolve()  # items carry real paths; keep expectations comparable where /tmp is a link
    root, outside = base / "root", base / "outside"
    (root / "tree" / "sub").mkdir(parents=True)
    (root / "tree" / ".git").mkdir()
    (root / "other").mkdir()
    for name in ("zz", "aa", "mm"):  # more siblings than one, so the walk's order is really checked
        (root / "tree" / name).mkdir()
        (root / "tree" / name / "e.png").write_bytes(PNG)
    outside.mkdir()
    (outside / "secret.png").write_bytes(b"secret")
    (root / "tree" / "a.png").write_bytes(PNG)
    (root / "tree" / ".hidden.png").write_bytes(PNG)
    (root / "tree" / ".git" / "x.png").write_bytes(PNG)
    (root / "tree" / "sub" / "b.dcm").write_bytes(DICOM)
    (root / "tree" / "sub" / "c").write_bytes(NO_EXT)
    (root / "other" / "d.png").write_bytes(PNG)
    (root / "tree" / "link_in.png").symlink_to(root / "other" / "d.png")
    (root / "tree" / "link_out.png").symlink_to(outside / "secret.png")
    (root / "tree" / "dangling.png").symlink_to(root / "missing.png")
    (root / "tree" / "linked_dir").symlink_to(outside, target_is_directory=True)
    os.mkfifo(root / "tree" / "pipe")
    (root / "empty").mkdir()
    return {"root": root, "outside": outside, "tree": root / "tree"}


def test_resolve_under_roots_accepts_path_inside(tree: dict[str, Path]) -> None:
    path = tree["tree"] / "sub" / "b.dcm"
    assert resolve_under_roots(str(path), [tree["root"]]) == path.resolve()


def test_resolve_under_roots_follows_a_symlinked_root(tree: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "root_link").symlink_to(tree["root"], target_is_directory=True)
    path = tmp_path / "root_link" / "tree" / "a.png"
    assert resolve_under_roots(path, [tmp_path / "root_link"]) == (tree["tree"] / "a.png").resolve()


def test_resolve_under_roots_refuses_dotdot_traversal(tree: dict[str, Path]) -> None:
    escaping = f"{tree['root']}/../outside/secret.png"
    error = refused("path_not_allowed", 403, resolve_under_roots, escaping, [tree["root"]])
    assert escaping in error.detail and "secret" not in error.detail.replace(escaping, "")
    refused("path_not_allowed", 403, resolve_under_roots, f"{tree['root']}/../../../../etc/passwd", [tree["root"]])


def test_resolve_under_roots_refuses_relative_path(tree: dict[str, Path]) -> None:
    error = refused("path_not_allowed", 422, resolve_under_roots, "tree/a.png", [tree["root"]])
    assert "expected an absolute path" in error.detail
    refused("path_not_allowed", 422, resolve_under_roots, "", [tree["root"]])


def test_resolve_under_roots_refuses_symlink_out_of_root(tree: dict[str, Path]) -> None:
    refused("path_not_allowed", 403, resolve_under_roots, tree["tree"] / "link_out.png", [tree["root"]])


def test_resolve_under_roots_without_roots_is_disabled(tree: dict[str, Path]) -> None:
    error = refused("server_paths_disabled", 403, resolve_under_roots, tree["tree"] / "a.png", [])
    assert "XRAY_ALLOWED_SOURCE_ROOTS" in error.detail


def test_resolve_under_roots_missing_path(tree: dict[str, Path]) -> None:
    missing = tree["root"] / "nope.png"
    assert str(missing) in refused("path_not_found", 404, resolve_under_roots, missing, [tree["root"]]).detail
    # outside the roots a missing file answers like a present one: no probing for what exists elsewhere
    refused("path_not_allowed", 403, resolve_under_roots, tree["outside"] / "nope.png", [tree["root"]])


def test_resolve_under_roots_refuses_a_sibling_sharing_the_prefix(tree: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "root2").mkdir()
    (tmp_path / "root2" / "x.png").write_bytes(PNG)
    refused("path_not_allowed", 403, resolve_under_roots, tmp_path / "root2" / "x.png", [tree["root"]])


def test_folder_items_walks_sorted_skipping_dots_and_escaping_links(tree: dict[str, Path]) -> None:
    items = folder_items(str(tree["tree"]), [tree["root"]])
    t = tree["tree"]
    assert items == [
        SourceItem(str(t / "a.png"), t / "a.png"),
        SourceItem(str(t / "link_in.png"), (tree["root"] / "other" / "d.png").resolve()),
        SourceItem(str(t / "aa" / "e.png"), t / "aa" / "e.png"),
        SourceItem(str(t / "mm" / "e.png"), t / "mm" / "e.png"),
        SourceItem(str(t / "sub" / "b.dcm"), t / "sub" / "b.dcm"),
        SourceItem(str(t / "sub" / "c"), t / "sub" / "c"),
        SourceItem(str(t / "zz" / "e.png"), t / "zz" / "e.png"),
    ]
    assert all(item.path.read_bytes() != b"secret" for item in items)


def test_folder_items_reference_keeps_the_folder_as_given(tree: dict[str, Path]) -> None:
    given = f"{tree['root']}/other/../tree/sub"
    items = folder_items(given, [tree["root"]])
    assert [i.reference for i in items] == [str(tree["tree"] / "sub" / "b.dcm"), str(tree["tree"] / "sub" / "c")]


def test_folder_items_refusals(tree: dict[str, Path]) -> None:
    roots = [tree["root"]]
    refused("not_a_directory", 422, folder_items, tree["tree"] / "a.png", roots)
    refused("empty_source", 422, folder_items, tree["root"] / "empty", roots)
    refused("too_many_items", 413, folder_items, tree["tree"], roots, max_items=6)
    assert len(folder_items(tree["tree"], roots, max_items=7)) == 7
    refused("path_not_allowed", 403, folder_items, tree["tree"] / "linked_dir", roots)
    refused("path_not_found", 404, folder_items, tree["root"] / "gone", roots)
    refused("server_paths_disabled", 403, folder_items, tree["tree"], [])


def test_path_items_dedupes_and_expands_directories(tree: dict[str, Path]) -> None:
    t, roots = tree["tree"], [tree["root"]]
    given = [str(t / "sub" / "c"), str(t / "sub"), str(t / "sub" / "c"), str(t / "a.png"), str(t / "link_in.png")]
    items = path_items(given, roots)
    assert [i.reference for i in items] == [
        str(t / "sub" / "c"),
        str(t / "sub" / "b.dcm"),
        str(t / "a.png"),
        str(t / "link_in.png"),
    ]
    assert items[3].path == (tree["root"] / "other" / "d.png").resolve()
    # the symlink and its target are one file: the second spelling is dropped
    assert [
        i.reference for i in path_items([str(t / "link_in.png"), str(tree["root"] / "other" / "d.png")], roots)
    ] == [str(t / "link_in.png")]


def test_path_items_refusals_name_the_path(tree: dict[str, Path]) -> None:
    roots = [tree["root"]]
    refused("empty_source", 422, path_items, [], roots)
    refused("empty_source", 422, path_items, [str(tree["root"] / "empty")], roots)
    missing = str(tree["root"] / "nope.png")
    assert missing in refused("path_not_found", 404, path_items, [str(tree["tree"] / "a.png"), missing], roots).detail
    escaping = str(tree["tree"] / "link_out.png")
    assert escaping in refused("path_not_allowed", 403, path_items, [escaping], roots).detail
    refused("not_a_file", 422, path_items, [str(tree["tree"] / "pipe")], roots)
    refused("too_many_items", 413, path_items, [str(tree["tree"])], roots, max_items=2)


def test_sources_import_neither_torch_nor_fastapi() -> None:
    code = (
        "import sys, service.jobs.sources; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'fastapi', 'training')]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=PROJECT_ROOT)
