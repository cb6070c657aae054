"""Podman for the deploy tests: a containers.conf that lets rootful podman run here, a Python base image made
locally with debootstrap (no container registry is reachable), and bounded calls.

Podman keeps its default storage (/var/lib/containers/storage), so the base image made once is reused by later runs
and by other tests on the same machine; everything else a test creates it removes by name.
"""

from __future__ import annotations

import fcntl
import os
import resource
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

BASE_IMAGE = "localhost/xray-python-base:bookworm"
# what the base holds; a cached base image with another recipe label is rebuilt
BASE_PACKAGES = ("python3", "python3-venv")
BASE_RECIPE = "bookworm-minbase:" + ",".join(BASE_PACKAGES)
BASE_RECIPE_LABEL = "org.xray.base-recipe"
DEBIAN_MIRROR = os.environ.get("XRAY_DEBIAN_MIRROR", "http://deb.debian.org/debian")
TOOLS_HINT = "`make container-tools` installs podman, buildah, runc and debootstrap (as root, with apt)"


def write_containers_conf(directory: Path) -> Path:
    """A containers.conf for podman on this kind of machine: runc, and ulimits within what the host allows (podman's
    defaults ask for more open files than the hard limit, and runc then fails to start the container)."""
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nofile = 1_048_576 if nofile == resource.RLIM_INFINITY else min(nofile, 1_048_576)
    nproc = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    nproc = 32_768 if nproc == resource.RLIM_INFINITY else min(nproc, 32_768)
    path = directory / "containers.conf"
    path.write_text(
        "[containers]\n"
        f'default_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]\n'
        "[engine]\n"
        'runtime = "runc"\n'
        'cgroup_manager = "cgroupfs"\n'
        'events_logger = "file"\n'
    )
    return path


class Podman:
    """`podman ...` with this test's containers.conf, each call bounded in time."""

    def __init__(self, conf: Path) -> None:
        self.env = {**os.environ, "CONTAINERS_CONF": str(conf)}

    def run(
        self, args: Sequence[str], timeout: float = 60, check: bool = True, **kwargs
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["podman", *args], env=self.env, capture_output=True, text=True, timeout=timeout, **kwargs
        )
        if check and result.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} -> {result.returncode}: {result.stderr[-3000:]}")
        return result

    def shell(self, command: str, timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-o", "pipefail", "-c", command], env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def image_exists(self, name: str) -> bool:
        return self.run(["image", "exists", name], check=False).returncode == 0

    def label(self, image: str, label: str) -> str:
        result = self.run(["image", "inspect", "--format", f'{{{{index .Labels "{label}"}}}}', image], check=False)
        return result.stdout.strip() if result.returncode == 0 else ""


def podman_skip_reason() -> str | None:
    """Why podman cannot run here, or None."""
    if shutil.which("podman") is None:
        return f"podman is not installed: {TOOLS_HINT}"
    if os.geteuid() != 0:
        return "the container tests need root (debootstrap and chroot make the base image; podman runs rootful)"
    return None


def _chroot_env() -> dict[str, str]:
    return {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "DEBIAN_FRONTEND": "noninteractive",
        "LC_ALL": "C",
        "HOME": "/root",
    }


def ensure_base_image(podman: Podman, workdir: Path) -> float | None:
    """The Python base image (Debian bookworm minbase + python3, python3-venv), made with debootstrap and imported,
    unless it already exists with the same recipe. Returns the seconds it took to make, None when it was cached."""
    lock_path = Path(tempfile.gettempdir()) / "xray-python-base.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another test session may be making it right now
        if podman.label(BASE_IMAGE, BASE_RECIPE_LABEL) == BASE_RECIPE:
            return None
        if shutil.which("debootstrap") is None:
            pytest.skip(f"debootstrap is not installed and {BASE_IMAGE} does not exist: {TOOLS_HINT}")
        started = time.monotonic()
        rootfs = Path(tempfile.mkdtemp(prefix="xray-rootfs-", dir=workdir))
        try:
            _run(
                ["debootstrap", "--variant=minbase", "bookworm", str(rootfs), DEBIAN_MIRROR],
                timeout=900,
                what="debootstrap",
            )
            install = (
                "apt-get update -qq && apt-get install -y -qq --no-install-recommends "
                + " ".join(BASE_PACKAGES)
                + " >/dev/null && apt-get clean && rm -rf /var/lib/apt/lists/* /usr/share/doc/* /usr/share/man/*"
            )
            chroot = ["chroot", str(rootfs), "/bin/sh", "-c", install]
            _run(chroot, timeout=600, what="apt-get in the chroot", env=_chroot_env())
            if podman.image_exists(BASE_IMAGE):
                podman.run(["rmi", "--force", BASE_IMAGE], timeout=120)  # an older recipe
            changes = [
                "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "ENV LANG=C.UTF-8",
                f"LABEL {BASE_RECIPE_LABEL}={BASE_RECIPE}",
                'CMD ["python3"]',
            ]
            change_args = " ".join(f"--change '{change}'" for change in changes)
            imported = podman.shell(f"tar -C {rootfs} -c . | podman import {change_args} - {BASE_IMAGE}", timeout=300)
            assert imported.returncode == 0, f"podman import failed: {imported.stderr[-3000:]}"
        finally:
            shutil.rmtree(rootfs, ignore_errors=True)
        return time.monotonic() - started


def _run(command: list[str], timeout: float, what: str, env: dict[str, str] | None = None) -> None:
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    if result.returncode != 0:
        raise AssertionError(f"{what} failed ({result.returncode}): {(result.stdout + result.stderr)[-3000:]}")
