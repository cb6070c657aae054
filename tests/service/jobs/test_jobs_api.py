"""The jobs API in-process (TestClient, embedded runner, SQLite): results equal /v1/predict's, zip and folder
sources, CSV/JSONL, ownership, cancellation, hostile sources refused with the server still up."""

from __future__ import annotations

import io
import json
import os
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.security import new_key
from tests.conftest import require_shared
from tests.service.conftest import phantom_png, service_settings

USER_A, ENTRY_A = new_key("user")
USER_B, ENTRY_B = new_key("user")
ADMIN, ENTRY_ADMIN = new_key("admin")


def _wait(client: TestClient, job_id: str, key: str = ADMIN, timeout_s: float = 120) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}", headers={"X-API-Key": key}).json()
        if job["state"] not in ("queued", "running") and job["counts"]["remaining"] == 0:
            return job  # a cancelled job's items in flight still finish
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} still {job['state']} after {timeout_s} s: {job['counts']}")


def _zip(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _comparable(prediction: dict) -> dict:
    return {key: value for key, value in prediction.items() if key not in ("request_id", "timings_ms")}


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("allowed")
    outside = tmp_path_factory.mktemp("outside")
    (outside / "secret.png").write_bytes(phantom_png(seed=9))
    folder = root / "films"
    folder.mkdir()
    for i in range(6):
        (folder / f"film{i}.png").write_bytes(phantom_png(seed=i))
    (folder / "notes.txt").write_text("not an image")
    os.symlink(outside / "secret.png", root / "escape.png")
    return {"root": root, "folder": folder, "outside": outside}


@pytest.fixture(scope="module")
def client(roots: dict[str, Path]) -> Iterator[TestClient]:
    settings = service_settings(
        api_keys=[ENTRY_A, ENTRY_B, ENTRY_ADMIN],
        allowed_source_roots=[roots["root"], require_nih_root()],
        job_chunk_size=8,
        job_poll_s=0.1,
        job_max_entries=1000,
    )
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def require_nih_root() -> Path:
    return Path(os.path.realpath(require_shared("nih1000", "test")))


def test_a_folder_jobs_results_equal_predict_for_the_same_bytes(client: TestClient) -> None:
    folder = require_nih_root()
    answer = client.post("/v1/jobs", json={"folder": str(folder)}, headers={"X-API-Key": USER_A})
    assert answer.status_code == 202, answer.text
    assert answer.headers["location"] == f"/v1/jobs/{answer.json()['id']}"
    job = _wait(client, answer.json()["id"], USER_A)
    assert job["state"] == "succeeded"
    assert job["counts"] == {"total": 200, "done": 200, "succeeded": 200, "failed": 0, "skipped": 0, "remaining": 0}
    assert job["progress"]["images_per_s"] > 0 and job["progress"]["eta_s"] == 0
    assert job["models"]["classifier"]["name"].startswith("chest-classifier")
    lines = client.get(f"/v1/jobs/{job['id']}/results?format=jsonl", headers={"X-API-Key": USER_A})
    assert lines.headers["content-type"].startswith("application/x-ndjson")
    rows = [json.loads(line) for line in lines.text.splitlines()]
    assert [row["position"] for row in rows] == list(range(200))
    assert len({row["reference"] for row in rows}) == 200
    viewed = client.get(f"/v1/jobs/{job['id']}/items/0/view", headers={"X-API-Key": USER_A}).json()
    assert viewed["findings"] == rows[0]["result"]["findings"] and viewed["film"]["width"] >= 256
    assert set(viewed["heat_layers"]) == set(job["models"]["classifier"]["labels"])
    assert client.get(f"/v1/jobs/{job['id']}/items/999/view", headers={"X-API-Key": USER_A}).status_code == 404
    assert client.get(f"/v1/jobs/{job['id']}/items/0/view", headers={"X-API-Key": USER_B}).status_code == 404
    for row in rows[::40]:
        data = Path(row["reference"]).read_bytes()
        predicted = client.post(
            "/v1/predict", content=data, headers={"Content-Type": "image/png", "X-API-Key": USER_A}
        ).json()
        assert _comparable(row["result"]) == _comparable(predicted)


def test_a_zip_job_scores_images_and_reports_non_images_per_item(client: TestClient) -> None:
    dicom = require_shared("dicom", "siim_cr_chest_jpeg_baseline.dcm").read_bytes()
    entries = {
        "a/film.png": phantom_png(seed=1),
        "a/b/scan_without_extension": dicom,  # DICOM recognised by its content, not its name
        "readme.txt": b"these are films",
        "__MACOSX/a/._film.png": b"resource fork",
    }
    answer = client.post(
        "/v1/jobs", files={"file": ("films.zip", _zip(entries), "application/zip")}, headers={"X-API-Key": USER_A}
    )
    assert answer.status_code == 202, answer.text
    assert answer.json()["source"] == {"kind": "zip", "name": "films.zip"}
    job = _wait(client, answer.json()["id"], USER_A)
    assert (job["state"], job["counts"]["succeeded"], job["counts"]["failed"]) == ("succeeded", 2, 1)
    lines = client.get(job["results_url"], headers={"X-API-Key": USER_A}).text.splitlines()
    rows = {row["reference"]: row for row in map(json.loads, lines)}
    assert set(rows) == {"a/film.png", "a/b/scan_without_extension", "readme.txt"}
    assert rows["a/b/scan_without_extension"]["result"]["image"]["format"] == "dicom"
    assert rows["readme.txt"]["state"] == "failed" and rows["readme.txt"]["problem"]["code"] == "not_an_image"
    table = client.get(f"{job['results_url']}?format=csv", headers={"X-API-Key": USER_A})
    assert table.headers["content-type"].startswith("text/csv")
    header, *lines = table.text.splitlines()
    labels = job["models"]["classifier"]["labels"]
    assert header.split(",")[:3] == ["position", "reference", "state"]
    assert all(f"p_{label}" in header.split(",") for label in labels) and "outlier_verdict" in header
    assert len(lines) == 3 and any(",not_an_image," in line for line in lines)
    uploads = client.app.state.settings.data_dir / "uploads"
    deadline = time.monotonic() + 30
    while any((path / "files" / "a" / "film.png").exists() for path in uploads.iterdir()):
        assert time.monotonic() < deadline, "the finished job's unpacked files were not removed"
        time.sleep(0.1)
    gone = client.get(f"/v1/jobs/{job['id']}/items/0/view", headers={"X-API-Key": USER_A})
    assert (gone.status_code, gone.json()["code"]) == (410, "film_gone")
    raw = client.post(
        "/v1/jobs", content=_zip({"x.png": phantom_png(seed=3)}), headers={"Content-Type": "application/zip"}
    )
    assert raw.status_code == 401  # keys are configured: no key, no job


def test_a_user_sees_only_their_own_jobs_and_an_admin_sees_all(client: TestClient, roots: dict[str, Path]) -> None:
    mine = client.post("/v1/jobs", json={"folder": str(roots["folder"])}, headers={"X-API-Key": USER_B}).json()
    assert client.get(f"/v1/jobs/{mine['id']}", headers={"X-API-Key": USER_A}).status_code == 404
    assert client.get(f"/v1/jobs/{mine['id']}/results", headers={"X-API-Key": USER_A}).status_code == 404
    assert client.delete(f"/v1/jobs/{mine['id']}", headers={"X-API-Key": USER_A}).status_code == 404
    listed = client.get("/v1/jobs", headers={"X-API-Key": USER_B}).json()
    assert [job["id"] for job in listed["jobs"]] == [mine["id"]] and listed["total"] == 1
    everyone = client.get("/v1/jobs?limit=1", headers={"X-API-Key": ADMIN}).json()
    assert everyone["total"] >= 2 and len(everyone["jobs"]) == 1
    job = _wait(client, mine["id"], USER_B)
    assert (job["counts"]["succeeded"], job["counts"]["failed"]) == (6, 1)  # notes.txt is not an image


def test_cancelling_skips_what_is_queued(client: TestClient, roots: dict[str, Path]) -> None:
    paths = [str(roots["folder"] / f"film{i % 6}.png") for i in range(6)] * 1
    job = client.post("/v1/jobs", json={"paths": paths}, headers={"X-API-Key": USER_A}).json()
    cancelled = client.delete(f"/v1/jobs/{job['id']}", headers={"X-API-Key": USER_A}).json()
    assert cancelled["state"] == "cancelled"
    done = _wait(client, job["id"], USER_A)
    counts = done["counts"]
    assert counts["succeeded"] + counts["skipped"] == 6 and counts["remaining"] == 0, done


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"folder": "/etc"}, 403, "path_not_allowed"),
        ({"folder": "relative/path"}, 422, "path_not_allowed"),
        ({"paths": ["{root}/../outside/secret.png"]}, 403, "path_not_allowed"),
        ({"paths": ["{root}/escape.png"]}, 403, "path_not_allowed"),  # a symlink out of the root
        ({"paths": ["{root}/missing.png"]}, 404, "path_not_found"),
        ({"folder": "/x", "paths": ["/y"]}, 422, "invalid_request"),
        ({}, 422, "invalid_request"),
    ],
)
def test_server_paths_outside_the_roots_are_refused(
    client: TestClient, roots: dict[str, Path], body: dict, status: int, code: str
) -> None:
    filled = json.loads(json.dumps(body).replace("{root}", str(roots["root"])))
    answer = client.post("/v1/jobs", json=filled, headers={"X-API-Key": USER_A})
    assert (answer.status_code, answer.json()["code"]) == (status, code), answer.text
    assert answer.headers["content-type"] == "application/problem+json"


def _many_entries_zip(count: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for i in range(count):
            archive.writestr(f"e{i}", b"")
    return buffer.getvalue()


def _slip_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("ok.png", phantom_png(seed=1))
        archive.writestr("../../evil.png", b"x")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("make", "status", "code"),
    [
        (_slip_zip, 422, "zip_slip"),
        (lambda: _zip({"zeros.png": bytes(50 * 1024 * 1024)}), 413, "zip_bomb"),
        (lambda: _many_entries_zip(100_000), 413, "zip_too_many_entries"),
        (lambda: b"PK\x03\x04 not really a zip", 422, "not_a_zip"),
        (lambda: b"", 400, "empty_input"),
    ],
)
def test_hostile_zips_are_refused_and_the_server_stays_up(
    client: TestClient, make, status: int, code: str, tmp_path: Path
) -> None:
    uploads = client.app.state.settings.data_dir / "uploads"
    before = set(uploads.iterdir()) if uploads.exists() else set()
    answer = client.post("/v1/jobs", content=make(), headers={"Content-Type": "application/zip", "X-API-Key": USER_A})
    assert (answer.status_code, answer.json()["code"]) == (status, code), answer.text
    assert not (tmp_path.parent / "evil.png").exists()
    assert set(uploads.iterdir()) == before  # a refused upload leaves nothing behind
    assert client.get("/healthz").status_code == 200
