"""The registry watcher: reload when the registry changes under a running server, without reloading in a loop.

Each poll takes a cheap fingerprint of what the serving alias resolves to (model_set.json, each model's aliased
version, that version's manifest bytes and its model.onnx stat; every version of an unaliased model such as an int8
variant, which is chosen by its manifest). The ONNX files are only stat-ed, never hashed: hashing every poll would
cost as much as a reload. When the fingerprint differs from the one the manager last tried to load, the manager
reloads; a failed reload keeps the last good set serving and records the problem, and the same broken state is not
tried again until the registry changes once more.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from collections.abc import Hashable
from pathlib import Path
from typing import TYPE_CHECKING

from models.registry import ALIASES_FILE, MANIFEST_FILE, MODEL_FILE, MODEL_SET_FILE

if TYPE_CHECKING:
    from service.state import ModelManager

log = logging.getLogger("service.registry_watch")

Fingerprint = tuple[Hashable, ...]


def _stat(path: Path) -> tuple[int, int, int, int] | None:
    """Inode, size, mtime and ctime: an atomic replace changes the inode, an in-place write the times."""
    try:
        info = path.stat()
    except OSError:
        return None
    return (info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def _digest(path: Path) -> str | None:
    """The bytes of a small JSON file, hashed (exact even when two writes fall in the same clock tick)."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _aliased_version(aliases_file: Path, alias: str) -> int | str | None:
    """The version `alias` points at; the file's digest when it does not parse (the reload will say why)."""
    try:
        data = json.loads(aliases_file.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return f"unreadable:{_digest(aliases_file)}"
    aliases = data.get("aliases") if isinstance(data, dict) else None
    if not isinstance(aliases, dict):
        return f"malformed:{_digest(aliases_file)}"
    version = aliases.get(alias)
    return version if isinstance(version, int) or version is None else repr(version)


def _version_key(version_dir: Path) -> Fingerprint:
    return (version_dir.name, _digest(version_dir / MANIFEST_FILE), _stat(version_dir / MODEL_FILE))


def registry_fingerprint(root: Path, alias: str) -> Fingerprint:
    """What the serving alias resolves to, cheaply (a few stats and small reads). Never raises."""
    try:
        model_dirs = sorted(path for path in root.iterdir() if path.is_dir() and not path.name.startswith("."))
    except OSError as error:
        return (("unreadable", type(error).__name__),)
    entries: list[Hashable] = [_digest(root / MODEL_SET_FILE)]
    for model_dir in model_dirs:
        version = _aliased_version(model_dir / ALIASES_FILE, alias)
        try:
            if isinstance(version, int):
                watched = [model_dir / str(version)]
            else:  # not aliased (an int8 variant, a new model): any version of it may be picked, by its manifest
                watched = sorted(p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())
        except OSError:
            watched = []
        entries.append((model_dir.name, version, tuple(_version_key(path) for path in watched)))
    return tuple(entries)


class RegistryWatcher:
    """A background task that polls the registry every `poll_s` seconds and asks the manager to reload on a change."""

    def __init__(self, manager: ModelManager, poll_s: float) -> None:
        self.manager = manager
        self.poll_s = poll_s
        self._stop = asyncio.Event()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        if self.poll_s > 0 and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="registry-watch")

    async def stop(self, timeout_s: float) -> None:
        """Let a reload in progress finish (its pipeline is then closed with the manager); cancel after timeout_s."""
        if self._task is None:
            return
        self._stop.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = None

    async def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.poll_s)
            if self._stop.is_set():
                return
            try:
                await self.manager.reload_if_changed()
            except Exception:  # noqa: BLE001 - recorded and logged by the manager; the watcher must live on
                log.debug("watcher reload failed", exc_info=True)
