"""Faults under a running batch job, injected for real: PostgreSQL restarted (a server of its own, started here) and
the job database's disk filled (SQLite on a small tmpfs). The job pauses with a clear reason, nothing half-written is
reported as done, and once the database is back every item is scored and written exactly once."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from tests.service.conftest import phantom_png, service_settings
from tests.service.processes import free_port

ITEMS = 240
DEADLINE_S = 120


def _wait(check: Callable[[], bool], what: str, timeout_s: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


@pytest.fixture
def films(tmp_path: Path) -> Path:
    """ITEMS films in a folder (one 1024 px phantom, copied: decoding them keeps the runner busy for seconds)."""
    folder = tmp_path / "films"
    folder.mkdir()
    data = phantom_png(seed=4, size=1024)
    for i in range(ITEMS):
        (folder / f"film-{i:04d}.png").write_bytes(data)
    return folder


def _submit(client: TestClient, folder: Path) -> str:
    answer = client.post("/v1/jobs", json={"folder": str(folder)})
    assert answer.status_code == 202, answer.text
    return answer.json()["id"]


def _exactly_once(client: TestClient, job_id: str) -> None:
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["state"] == "succeeded", job
    assert job["counts"]["succeeded"] == ITEMS and job["paused"] is None
    rows = [json.loads(line) for line in client.get(f"/v1/jobs/{job_id}/results").text.splitlines()]
    assert sorted(row["position"] for row in rows) == list(range(ITEMS))
    assert all(row["state"] == "succeeded" for row in rows)
    store = client.app.state.jobs
    assert store.item_counts(job_id) == {"succeeded": ITEMS}  # the job's counters agree with its item rows
    attempts = Counter(item["attempts"] for item in store.iter_items(job_id))
    # the runner counts the rows its commits wrote (a result written twice would count twice); the job can be seen
    # finished a moment before the runner adds its last chunk
    runner = client.app.state.job_engine
    _wait(lambda: runner.scored >= ITEMS, "the runner's count of written results", timeout_s=10)
    print(f"claims per item: {dict(attempts)}; rows the runner's commits wrote: {runner.scored}")
    assert runner.scored == ITEMS


# -- PostgreSQL restarted in the middle of a job -----------------------------------------------------------------
@pytest.fixture
def own_postgres() -> Iterator[tuple[str, Callable[[], None], Callable[[], None]]]:
    """A PostgreSQL server of this test's own (initdb as the `postgres` user), so it can be stopped and started."""
    if shutil.which("initdb") is None or shutil.which("pg_ctl") is None:
        pytest.skip("PostgreSQL's initdb/pg_ctl are not on PATH: cannot start a server to restart")
    if os.geteuid() != 0 or shutil.which("runuser") is None:
        pytest.skip("initdb must run as the postgres user: this test needs root and runuser")
    home = Path(tempfile.mkdtemp(prefix="xray-pg-", dir="/tmp"))
    shutil.chown(home, "postgres")
    data, port = home / "data", free_port()
    options = f"-p {port} -k {home} -c listen_addresses=127.0.0.1 -c fsync=off"

    def as_postgres(*args: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *args], check=True, capture_output=True, timeout=60)

    def start() -> None:
        as_postgres("pg_ctl", "-D", str(data), "-o", options, "-l", str(home / "log"), "-w", "-t", "30", "start")

    def stop() -> None:
        as_postgres("pg_ctl", "-D", str(data), "-m", "fast", "-w", "-t", "30", "stop")

    as_postgres("initdb", "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync")
    start()
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres", start, stop
    finally:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", "pg_ctl", "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(home, ignore_errors=True)


def test_a_postgresql_restart_pauses_the_job_which_then_completes_exactly_once(own_postgres, films: Path) -> None:
    url, start, stop = own_postgres
    settings = service_settings(
        database_url=url, allowed_source_roots=[films.parent], job_chunk_size=8, job_lease_s=6, job_poll_s=0.2
    )
    with TestClient(create_app(settings)) as client:
        job_id = _submit(client, films)
        _wait(lambda: client.get(f"/v1/jobs/{job_id}").json()["counts"]["succeeded"] >= 8, "the first results")
        stop()
        try:
            during = client.get(f"/v1/jobs/{job_id}")
            assert during.status_code == 503, during.text  # not a 500: the database is away, the server is not
            assert during.json()["code"] == "database_unavailable" and "Retry-After" in during.headers
            assert "SELECT" not in during.text  # no SQL in the answer
            _wait(lambda: client.app.state.job_engine.trouble.problem is not None, "the runner to notice")
            time.sleep(1.0)  # the runner keeps retrying against a stopped server
        finally:
            start()
        _wait(lambda: client.get(f"/v1/jobs/{job_id}").json()["state"] == "succeeded", "the job to complete")
        _exactly_once(client, job_id)


# -- the job database's disk full while results are written ------------------------------------------------------
@pytest.fixture
def small_disk() -> Iterator[Path]:
    """A 16 MiB tmpfs (needs root and mount; skipped where a container forbids it)."""
    mount_point = Path(tempfile.mkdtemp(prefix="xray-small-disk-"))
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        mount_point.rmdir()
        pytest.skip(f"cannot mount a small tmpfs to fill (needs root): {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)
        mount_point.rmdir()


def _fill(disk: Path) -> Path:
    """Write a file until the disk says ENOSPC; deleting it frees the space again."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as out:
        for size in (1 << 20, 1 << 12, 1):
            block = b"\0" * size
            while True:
                try:
                    out.write(block)
                except OSError as error:
                    assert error.errno == errno.ENOSPC
                    break
    return filler


def test_a_full_disk_pauses_the_job_with_a_clear_reason_and_nothing_half_written(small_disk: Path, films) -> None:
    settings = service_settings(
        data_dir=small_disk, allowed_source_roots=[films.parent], job_chunk_size=8, job_poll_s=0.2
    )
    with TestClient(create_app(settings)) as client:
        job_id = _submit(client, films)
        _wait(lambda: client.get(f"/v1/jobs/{job_id}").json()["counts"]["succeeded"] >= 8, "the first results")
        filler = _fill(small_disk)
        _wait(lambda: client.get(f"/v1/jobs/{job_id}").json()["paused"] is not None, "the job to pause")
        paused = client.get(f"/v1/jobs/{job_id}").json()
        assert "disk is full" in paused["paused"] and paused["state"] == "running"
        assert "xray_job_runner_paused 1.0" in client.get("/metrics").text  # what an alert rule watches
        time.sleep(1.5)  # paused means paused: no count moves while nothing can be written
        still = client.get(f"/v1/jobs/{job_id}").json()
        assert still["counts"] == paused["counts"] and still["state"] == "running"
        rows = [json.loads(line) for line in client.get(f"/v1/jobs/{job_id}/results").text.splitlines()]
        done = [row for row in rows if row["state"] == "succeeded"]
        assert len(done) == still["counts"]["succeeded"]  # what is reported done is exactly what was written
        assert all(row["result"] is not None for row in done)
        filler.unlink()
        _wait(lambda: client.get(f"/v1/jobs/{job_id}").json()["state"] == "succeeded", "the job to resume")
        _exactly_once(client, job_id)
        metrics = client.get("/metrics").text
        assert "xray_job_runner_paused 0.0" in metrics and 'xray_jobs{state="succeeded"} 1.0' in metrics
        assert f"xray_job_items_written_total {float(ITEMS)}" in metrics and "xray_job_items_open 0.0" in metrics
