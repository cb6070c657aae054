"""The serve-cpu image, built and run with podman: offline from the wheelhouse, on a Python base made here with
debootstrap (no container registry is reachable), started with --init, a real DICOM predicted through it, then stopped
with SIGTERM.

Skipped, with the reason, only where podman cannot run (not installed, not root, no usable runtime). Prints the build
time and image size; with XRAY_CONTAINER_REPORT=path also writes them there as JSON.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import PROJECT_ROOT, require_shared
from tests.deploy.containers import (
    BASE_IMAGE,
    Podman,
    ensure_base_image,
    podman_skip_reason,
    write_containers_conf,
)
from tests.service.processes import free_port

pytestmark = pytest.mark.timeout(1800)

SUFFIX = f"{os.getpid()}"
IMAGE = f"localhost/xray-service-test:serve-cpu-{SUFFIX}"
CONTAINER = f"xray-test-serve-cpu-{SUFFIX}"
DATA_VOLUME = f"xray-test-data-{SUFFIX}"
SERVICE_UID = "10001"
READY_TIMEOUT_S = 120
BUILD_TIMEOUT_S = 900
DICOM = ("dicom", "CR-MONO1-10-chest.dcm")

REPORT: dict[str, object] = {}


def _write_report() -> None:
    path = os.environ.get("XRAY_CONTAINER_REPORT")
    if path:
        Path(path).write_text(json.dumps(REPORT, indent=2) + "\n")


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Podman:
    reason = podman_skip_reason()
    if reason:
        pytest.skip(reason)
    podman = Podman(write_containers_conf(tmp_path_factory.mktemp("podman")))
    info = podman.run(["info", "--format", "{{.Host.OCIRuntime.Name}} {{.Store.GraphDriverName}}"], check=False)
    if info.returncode != 0:
        pytest.skip(f"podman cannot run here: `podman info` failed: {info.stderr.strip()[-500:]}")
    REPORT["podman"] = podman.run(["--version"]).stdout.strip()
    REPORT["runtime_and_storage"] = info.stdout.strip()
    return podman


@pytest.fixture(scope="module")
def base_image(podman: Podman, tmp_path_factory: pytest.TempPathFactory) -> str:
    seconds = ensure_base_image(podman, tmp_path_factory.mktemp("rootfs"))
    REPORT["base_image"] = BASE_IMAGE
    REPORT["base_image_created_s"] = None if seconds is None else round(seconds, 1)  # None: it was cached
    smoke = podman.run(["run", "--rm", "--network", "none", BASE_IMAGE, "python3", "-c", "pass"], check=False)
    if smoke.returncode != 0:
        pytest.skip(f"podman cannot run containers here: {smoke.stderr.strip()[-800:]}")
    return BASE_IMAGE


@pytest.fixture(scope="module")
def image(podman: Podman, base_image: str):
    """serve-cpu built with no network: wheels from wheelhouse/ (made by `make wheelhouse` on this connected host)."""
    started = time.monotonic()
    made = subprocess.run(
        ["make", "--no-print-directory", "wheelhouse"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=900
    )
    assert made.returncode == 0, f"make wheelhouse failed: {(made.stdout + made.stderr)[-3000:]}"
    REPORT["wheelhouse_s"] = round(time.monotonic() - started, 1)

    build = [
        "build",
        "--layers=false",  # no intermediate images left behind
        "--format=docker",  # the OCI format has no HEALTHCHECK
        "--pull=never",
        "--network=none",  # the air-gapped build: pip must find everything in the wheelhouse
        "--target=serve-cpu",
        f"--build-arg=BASE_IMAGE={base_image}",
        f"--tag={IMAGE}",
        f"--file={PROJECT_ROOT / 'Dockerfile'}",
        str(PROJECT_ROOT),
    ]
    try:
        started = time.monotonic()
        built = podman.run(build, timeout=BUILD_TIMEOUT_S, check=False)
        isolation = "oci"
        if built.returncode != 0:  # where the OCI runtime cannot run the build's RUN steps, chroot isolation may
            first = built.stderr[-2000:]
            started = time.monotonic()
            built = podman.run([*build[:1], "--isolation=chroot", *build[1:]], timeout=BUILD_TIMEOUT_S, check=False)
            isolation = "chroot"
            assert built.returncode == 0, f"podman build failed:\n{first}\nisolation=chroot:\n{built.stderr[-3000:]}"
        REPORT["build_s"] = round(time.monotonic() - started, 1)
        REPORT["build_isolation"] = isolation
        size = int(podman.run(["image", "inspect", "--format", "{{.Size}}", IMAGE]).stdout.strip())
        REPORT["image"] = IMAGE
        REPORT["image_size_bytes"] = size
        REPORT["image_size_mb"] = round(size / 1e6, 1)
        yield IMAGE
    finally:
        podman.run(["rmi", "--force", IMAGE], timeout=120, check=False)
        _write_report()


@pytest.fixture(scope="module")
def container(podman: Podman, image: str, tmp_path_factory: pytest.TempPathFactory):
    """The image started as documented: --init, the registry mounted read-only, the data dir on a named volume."""
    registry = tmp_path_factory.mktemp("mounted") / "registry"
    shutil.copytree(PROJECT_ROOT / "registry", registry)
    port = free_port()
    started = time.monotonic()
    try:
        podman.run(
            [
                "run",
                "--init",
                "--detach",
                f"--name={CONTAINER}",
                f"--publish=127.0.0.1:{port}:8000",
                f"--volume={registry}:/app/registry:ro",
                f"--volume={DATA_VOLUME}:/var/lib/xray",
                image,
            ],
            timeout=120,
        )
        url = f"http://127.0.0.1:{port}"
        _wait_ready(podman, url)
        REPORT["ready_s"] = round(time.monotonic() - started, 1)
        yield url
    finally:
        podman.run(["rm", "--force", "--volumes", "--time=5", CONTAINER], timeout=120, check=False)
        podman.run(["volume", "rm", "--force", DATA_VOLUME], timeout=60, check=False)


def _wait_ready(podman: Podman, url: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        state = podman.run(["inspect", "--format", "{{.State.Status}}", CONTAINER], check=False).stdout.strip()
        if state not in ("running", "created", "configured"):
            pytest.fail(f"the container is {state}: {_logs(podman)[-3000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    pytest.fail(f"not ready within {READY_TIMEOUT_S} s: {_logs(podman)[-3000:]}")


def _logs(podman: Podman) -> str:
    logs = podman.run(["logs", CONTAINER], check=False, timeout=60)
    return logs.stdout + logs.stderr


def _exec(podman: Podman, *command: str) -> subprocess.CompletedProcess[str]:
    return podman.run(["exec", CONTAINER, *command], check=False, timeout=60)


def test_the_image_is_configured_for_deployment(podman: Podman, image: str) -> None:
    inspect = json.loads(podman.run(["image", "inspect", image]).stdout)[0]
    config = inspect["Config"]
    assert config["User"] == f"{SERVICE_UID}:{SERVICE_UID}"
    assert config["Entrypoint"] == ["xray"] and config["Cmd"] == ["serve"]  # exec form: the server gets the signals
    assert config["StopSignal"] == "SIGTERM"
    assert config["WorkingDir"] == "/app"
    assert "8000/tcp" in config["ExposedPorts"]
    assert "/var/lib/xray" in config["Volumes"]
    healthcheck = inspect.get("Healthcheck") or config.get("Healthcheck")  # podman's place, Docker's place
    assert healthcheck and "/readyz" in " ".join(healthcheck["Test"])
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["XRAY_REGISTRY_DIR"] == "/app/registry" and env["XRAY_DATA_DIR"] == "/var/lib/xray"
    # no secrets baked in: no key or password variables, no .env in the image
    assert not [name for name in env if any(word in name for word in ("KEY", "PASSWORD", "SECRET", "TOKEN"))]


def test_the_image_serves_a_real_dicom(container: str) -> None:
    dicom = require_shared(*DICOM)
    response = httpx.post(
        f"{container}/v1/predict",
        content=dicom.read_bytes(),
        headers={"content-type": "application/dicom"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["image"]["modality"] == "CR"
    assert body["findings"], body
    assert all(0.0 <= finding["probability"] <= 1.0 for finding in body["findings"])
    assert all(model["device"] == "cpu" for model in body["models"].values())


def test_it_runs_as_a_non_root_user_with_a_read_only_registry(podman: Podman, container: str) -> None:
    uid = _exec(podman, "id", "-u")
    assert uid.returncode == 0 and uid.stdout.strip() == SERVICE_UID, uid
    # the mount is read-only (EROFS), not merely owned by root (EACCES)
    write = _exec(podman, "python", "-c", "open('/app/registry/probe', 'w')")
    assert write.returncode != 0 and "Read-only file system" in write.stderr, write
    # the data volume is the service user's: the job database lives there
    data = _exec(podman, "python", "-c", "import os; print(sorted(os.listdir('/var/lib/xray')))")
    assert data.returncode == 0 and "jobs.sqlite" in data.stdout, data
    no_torch = _exec(podman, "python", "-c", "import importlib.util as u; print(u.find_spec('torch'))")
    assert no_torch.stdout.strip() == "None", no_torch


def test_the_healthcheck_passes(podman: Podman, container: str) -> None:
    check = podman.run(["healthcheck", "run", CONTAINER], check=False, timeout=60)
    assert check.returncode == 0, check


def test_sigterm_stops_it_gracefully(podman: Podman, container: str, capsys: pytest.CaptureFixture[str]) -> None:
    started = time.monotonic()
    podman.run(["stop", "--time=30", CONTAINER], timeout=90)  # SIGTERM; SIGKILL only after 30 s
    REPORT["stop_s"] = round(time.monotonic() - started, 1)
    exit_code = int(podman.run(["inspect", "--format", "{{.State.ExitCode}}", CONTAINER]).stdout.strip())
    REPORT["exit_code"] = exit_code
    logs = _logs(podman)
    base = REPORT.get("base_image_created_s")
    with capsys.disabled():
        print(
            f"\n[container] build {REPORT.get('build_s')} s ({REPORT.get('build_isolation')} isolation), "
            f"image {REPORT.get('image_size_mb')} MB, base image {'cached' if base is None else f'made in {base} s'}, "
            f"wheelhouse {REPORT.get('wheelhouse_s')} s, ready {REPORT.get('ready_s')} s, stop {REPORT['stop_s']} s, "
            f"exit {exit_code}"
        )
    assert "Application shutdown complete" in logs and "Finished server process" in logs, logs[-3000:]
    assert REPORT["stop_s"] < 30, "the server did not stop on SIGTERM; podman killed it"
    assert exit_code == 0, f"exit code {exit_code} after a graceful stop: {logs[-1500:]}"
