"""The Ray engine on a local Ray instance (2 CPUs) scores a folder of real films exactly as the embedded runner does
(within 1e-6), committing through the same token-checked store."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.jobs.intake import new_items
from service.jobs.sources import folder_items
from service.jobs.store import JobStore
from tests.conftest import require_shared
from tests.service.conftest import service_settings

pytest.importorskip("ray", reason="the Ray engine is the optional extra `ray` (make test installs it)")


def _numbers(result: dict) -> dict[str, float]:
    """Every probability and outlier score of a prediction, by name."""
    found = {f"p:{row['label']}": row["probability"] for row in [result["abnormal"], *result["findings"]]}
    found["outlier"] = result["outlier"]["score"]
    found.update({f"outlier:{k}": v["score"] for k, v in result["outlier"]["components"].items() if "score" in v})
    return found


def _verdicts(result: dict) -> dict:
    return {
        "positive": {row["label"]: row["positive"] for row in result["findings"]},
        "outlier": result["outlier"]["verdict"],
        "models": {role: (m["name"], m["version"], m["sha256"]) for role, m in result["models"].items()},
        "image": result["image"],
    }


def _embedded_results(folder: Path) -> dict[str, dict]:
    settings = service_settings(allowed_source_roots=[folder], job_chunk_size=16, job_poll_s=0.1)
    with TestClient(create_app(settings)) as client:
        job = client.post("/v1/jobs", json={"folder": str(folder)}).json()
        deadline = time.monotonic() + 120
        while client.get(f"/v1/jobs/{job['id']}").json()["state"] != "succeeded":
            assert time.monotonic() < deadline, "the embedded runner did not finish"
            time.sleep(0.1)
        store: JobStore = client.app.state.jobs
        return {row["reference"]: row["result"] for row in store.iter_items(job["id"])}


def _ray_results(folder: Path, tmp_path: Path) -> tuple[dict[str, dict], dict]:
    from service.jobs.ray_engine import RayJobRunner

    settings = service_settings(
        jobs_engine="ray", ray_num_cpus=2, ray_actors=2, job_chunk_size=16, job_poll_s=0.1, data_dir=tmp_path
    )
    store = JobStore.open(settings.job_database_url())
    job_id = store.create_job(
        owner="anonymous",
        source_kind="folder",
        source=str(folder),
        alias=settings.model_alias,
        models={},
        new_items=new_items(folder_items(folder, [folder])),
    )
    runner = RayJobRunner(store, settings)

    async def run() -> None:
        await runner.register()
        runner.start()
        try:
            deadline = time.monotonic() + 300
            while store.get_job(job_id)["state"] != "succeeded":
                assert time.monotonic() < deadline, "the Ray engine did not finish"
                await asyncio.sleep(0.2)
        finally:
            await runner.stop(60)

    asyncio.run(run())
    rows = list(store.iter_items(job_id))
    results = {row["reference"]: row["result"] for row in rows}
    job = store.get_job(job_id)
    store.close()
    assert {row["attempts"] for row in rows} == {1}
    return results, job


def test_the_ray_engine_matches_the_embedded_runner_on_real_films(tmp_path: Path) -> None:
    folder = Path(os.path.realpath(require_shared("nih1000", "test")))
    embedded = _embedded_results(folder)
    scored_by_ray, job = _ray_results(folder, tmp_path)
    assert (job["state"], job["succeeded"], job["failed"]) == ("succeeded", 200, 0)
    assert set(scored_by_ray) == set(embedded) and len(embedded) == 200
    worst = 0.0
    for reference, expected in embedded.items():
        got = scored_by_ray[reference]
        assert _verdicts(got) == _verdicts(expected), reference
        ours, theirs = _numbers(got), _numbers(expected)
        assert ours.keys() == theirs.keys()
        worst = max(worst, *(abs(ours[k] - theirs[k]) for k in ours if ours[k] is not None))
    assert worst <= 1e-6, f"largest difference {worst}"
