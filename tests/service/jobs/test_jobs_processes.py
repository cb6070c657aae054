"""Jobs across real processes: `xray serve` / `xray worker` killed with SIGKILL halfway through a job and restarted
(SQLite and PostgreSQL), and two `xray serve` replicas sharing one PostgreSQL database and one job.

Every assertion about exactly-once reads the item rows themselves."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from service.jobs.intake import new_items
from service.jobs.sources import folder_items
from service.jobs.store import JobStore
from tests.conftest import PROJECT_ROOT, require_shared
from tests.service.processes import free_port, launch_xray, stop, wait_ready

COPIES = 3  # 600 real films: long enough on 2 cores to stop the scorer halfway


@pytest.fixture(scope="module")
def films(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 200 NIH test films, COPIES times under distinct names (one folder, one allowed root)."""
    source = require_shared("nih1000", "test")
    root = tmp_path_factory.mktemp("films")
    for copy in range(COPIES):
        target = root / f"copy{copy}"
        target.mkdir()
        for path in sorted(source.glob("*/*.png")):
            shutil.copyfile(path, target / f"{path.parent.name}-{path.name}")
    return root


def _env(tmp: Path, database_url: str, films: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "XRAY_REGISTRY_DIR": str(PROJECT_ROOT / "registry"),
        "XRAY_DATA_DIR": str(tmp / "data"),
        "XRAY_DATABASE_URL": database_url,
        "XRAY_ALLOWED_SOURCE_ROOTS": str(films),
        "XRAY_GPUS": "none",
        "XRAY_INTRA_OP_THREADS": "1",
        "XRAY_DECODE_THREADS": "1",
        "XRAY_JOB_CHUNK_SIZE": "32",  # a chunk is in flight far longer than the commit-to-claim gap between chunks
        "XRAY_JOB_POLL_S": "0.2",
        "XRAY_LOG_JSON": "true",
        **extra,
    }


def _start(command: str, env: dict[str, str], log: Path) -> tuple[subprocess.Popen, str | None]:
    if command == "serve":
        port = free_port()
        process = launch_xray(["serve", "--host", "127.0.0.1", "--port", str(port)], env, log)
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, process, log)
        return process, url
    return launch_xray(["worker"], env, log), None


def _wait_for(
    store: JobStore, job_id: str, done_at_least: int, timeout_s: float, log: Path, holding_claims: bool = False
) -> dict:
    """Until `done_at_least` items are done (and the job is over when that is all of them; with `holding_claims`,
    also while some items are claimed, so that a kill now leaves claims behind)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = store.get_job(job_id)
        finished = job["state"] not in ("queued", "running") or done_at_least < job["total"]
        claimed = not holding_claims or store.item_counts(job_id).get("running", 0) > 0
        if job["succeeded"] + job["failed"] >= done_at_least and finished and claimed:
            return job
        time.sleep(0.02)
    reached = job["succeeded"] + job["failed"]
    pytest.fail(f"job {job_id}: {reached} of {done_at_least} items in {timeout_s} s; {log.read_text()[-3000:]}")


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_a_job_survives_kill_9_halfway_with_every_item_scored_once(
    command: str, database_url: str, films: Path, tmp_path: Path
) -> None:
    env = _env(tmp_path, database_url, films, XRAY_JOB_LEASE_S="2")
    store = JobStore.open(database_url)
    log = tmp_path / f"{command}.log"
    process, url = _start(command, env, log)
    try:
        if url is not None:  # through the API, as a user would
            answer = httpx.post(f"{url}/v1/jobs", json={"folder": str(films)}, timeout=60)
            assert answer.status_code == 202, answer.text
            job_id = answer.json()["id"]
        else:
            found = new_items(folder_items(films, [films]))
            job_id = store.create_job(
                owner="anonymous",
                source_kind="folder",
                source=str(films),
                alias="production",
                models={},
                new_items=found,
            )
        total = 200 * COPIES
        before = _wait_for(store, job_id, 64, 120, log, holding_claims=True)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        halfway = store.get_job(job_id)
        assert 0 < halfway["succeeded"] < total, f"not stopped halfway: {halfway['succeeded']} of {total}"
        assert before["succeeded"] <= halfway["succeeded"]
        assert store.item_counts(job_id).get("running", 0) > 0  # it died holding claims
        process, url = _start(command, env, log)
        job = _wait_for(store, job_id, total, 180, log)
    finally:
        stop(process)
    rows = list(store.iter_items(job_id))
    assert len(rows) == total
    assert Counter(row["state"] for row in rows) == {"succeeded": total}
    assert all(row["result"] is not None and row["problem"] is None for row in rows)
    assert len({row["reference"] for row in rows}) == total  # none lost, none twice
    assert (job["state"], job["succeeded"], job["failed"]) == ("succeeded", total, 0)  # counters not double-counted
    retried = [row for row in rows if row["attempts"] > 1]
    assert retried and max(row["attempts"] for row in rows) == 2  # the dead runner's claims were taken over once
    store.close()


def test_two_replicas_share_one_postgresql_and_never_score_an_item_twice(
    postgres_url: str, films: Path, tmp_path: Path
) -> None:
    env = _env(tmp_path, postgres_url, films)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, url_a = _start("serve", env, tmp_path / "a" / "serve.log")
    try:
        second, url_b = _start("serve", env, tmp_path / "b" / "serve.log")
    except BaseException:
        stop(first)
        raise
    store = JobStore.open(postgres_url)
    try:
        answer = httpx.post(f"{url_a}/v1/jobs", json={"folder": str(films)}, timeout=60)
        assert answer.status_code == 202, answer.text
        job_id = answer.json()["id"]
        seen_on_b = httpx.get(f"{url_b}/v1/jobs/{job_id}", timeout=10)
        assert seen_on_b.status_code == 200 and seen_on_b.json()["source"]["name"] == str(films)
        assert job_id in {job["id"] for job in httpx.get(f"{url_b}/v1/jobs", timeout=10).json()["jobs"]}
        total = 200 * COPIES
        _wait_for(store, job_id, total, 240, tmp_path / "a" / "serve.log")
        final = httpx.get(f"{url_b}/v1/jobs/{job_id}", timeout=10).json()
    finally:
        stop(first)
        stop(second)
    rows = list(store.iter_items(job_id))
    assert len(rows) == total and {row["state"] for row in rows} == {"succeeded"}
    assert {row["attempts"] for row in rows} == {1}  # every item claimed, and so scored, exactly once
    with store.engine.connect() as connection:
        from sqlalchemy import func, select

        from service.jobs.tables import items

        by_runner = dict(
            connection.execute(
                select(items.c.runner, func.count()).where(items.c.job_id == job_id).group_by(items.c.runner)
            ).all()
        )
    assert len(by_runner) == 2 and min(by_runner.values()) >= 16, by_runner  # both replicas took part
    assert final["state"] == "succeeded" and final["counts"]["succeeded"] == total
    store.close()
