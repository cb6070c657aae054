"""`xray worker` with XRAY_WORKER_METRICS_PORT serves Prometheus metrics of its own runner (results it wrote, paused),
which the API replicas cannot report for it."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import pytest

from service.jobs.store import JobStore, NewItem
from tests.conftest import PROJECT_ROOT
from tests.service.conftest import phantom_png
from tests.service.processes import free_port, launch_xray, stop

ITEMS = 12
DEADLINE_S = 90


def _metric(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def test_a_worker_serves_the_metrics_of_its_runner(tmp_path: Path) -> None:
    films = tmp_path / "films"
    films.mkdir()
    for i in range(ITEMS):
        (films / f"film{i}.png").write_bytes(phantom_png(seed=i))
    url = f"sqlite:///{tmp_path / 'jobs.sqlite'}"
    port = free_port()
    env = {
        **os.environ,
        "XRAY_REGISTRY_DIR": str(PROJECT_ROOT / "registry"),
        "XRAY_DATA_DIR": str(tmp_path / "data"),
        "XRAY_DATABASE_URL": url,
        "XRAY_GPUS": "none",
        "XRAY_INTRA_OP_THREADS": "1",
        "XRAY_JOB_POLL_S": "0.2",
        "XRAY_HOST": "127.0.0.1",
        "XRAY_WORKER_METRICS_PORT": str(port),
    }
    store = JobStore.open(url)
    worker = launch_xray(["worker"], env, tmp_path / "worker.log")
    try:
        store.create_job(
            owner="anonymous",
            source_kind="folder",
            source=str(films),
            alias="production",
            models={},
            new_items=[NewItem(path.name, str(path)) for path in sorted(films.iterdir())],
        )
        deadline, written = time.monotonic() + DEADLINE_S, None
        while time.monotonic() < deadline:
            if worker.poll() is not None:
                pytest.fail(f"the worker exited: {(tmp_path / 'worker.log').read_text()[-3000:]}")
            try:
                text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
            except httpx.TransportError:
                text = ""
            written = _metric(text, "xray_job_items_written_total")
            if written == ITEMS:
                break
            time.sleep(0.2)
        assert written == ITEMS, f"the worker's metrics say {written} results written"
        assert _metric(text, "xray_job_runner_paused") == 0.0
    finally:
        stop(worker)
        store.close()
