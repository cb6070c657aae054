"""The audit trail: a record per prediction and job action, readable by admins only, never carrying PHI or keys."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from models.phantoms import make_phantom
from service.app import create_app
from service.security import new_key
from tests.service.conftest import phantom_png, service_settings

PHI = {
    "PatientName": "Doe^Janeaudit",
    "PatientID": "PID-AUDIT-98765",
    "AccessionNumber": "ACC-AUDIT-4242",
    "PatientBirthDate": "19410203",
    "StudyInstanceUID": "1.2.826.0.1.3680043.8.498.4242",
}
SOP_UID = "1.2.826.0.1.3680043.8.498.777001"


def cr_dicom() -> bytes:
    """A small CR film carrying patient fields, so the test can look for them in the audit rows."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = SOP_UID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("audit.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID, ds.SeriesInstanceUID = meta.MediaStorageSOPClassUID, SOP_UID, generate_uid()
    ds.Modality, ds.ViewPosition, ds.BodyPartExamined = "CR", "PA", "CHEST"
    for keyword, value in PHI.items():
        setattr(ds, keyword, value)
    pixels = np.clip(make_phantom(np.random.default_rng(3), size=256).pixels, 0, 1) * 4095
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def keys() -> dict[str, tuple[str, str]]:
    return {scope: new_key(scope) for scope in ("user", "admin")}  # scope -> (key, entry)


@pytest.fixture(scope="module")
def client(keys) -> Iterator[TestClient]:
    settings = service_settings(api_keys=[entry for _, entry in keys.values()])
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def _as(keys, scope: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {keys[scope][0]}"}


def _zip(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_predictions_and_jobs_leave_records_an_admin_can_read(client: TestClient, keys) -> None:
    start = datetime.now(UTC) - timedelta(seconds=1)
    user = _as(keys, "user")
    scored = client.post("/v1/predict", content=cr_dicom(), headers={**user, "Content-Type": "application/dicom"})
    assert scored.status_code == 200, scored.text
    refused = client.post("/v1/predict", content=b"not an image", headers={**user, "Content-Type": "image/png"})
    assert refused.status_code in (415, 422)
    job = client.post(
        "/v1/jobs", content=_zip({"a.png": phantom_png(1)}), headers={**user, "Content-Type": "application/zip"}
    )
    assert job.status_code == 202, job.text
    assert client.delete(f"/v1/jobs/{job.json()['id']}", headers=user).status_code == 200

    page = client.get("/v1/audit", params={"since": start.isoformat()}, headers=_as(keys, "admin"))
    assert page.status_code == 200, page.text
    records = page.json()["records"]
    user_id = "key-" + hashlib.sha256(keys["user"][0].encode()).hexdigest()[:16]
    mine = [r for r in records if r["key_id"] == user_id]
    assert [r["action"] for r in reversed(mine)] == ["predict", "predict", "job.submit", "job.cancel"]
    cancel, submit, bad, good = mine
    assert (good["status"], good["problem"], good["endpoint"]) == (200, None, "POST /v1/predict")
    assert good["request_id"] == scored.json()["request_id"]
    assert good["sop_uid_hash"] == hashlib.sha256(SOP_UID.encode()).hexdigest()[:16]
    classifier = scored.json()["models"]["classifier"]
    assert good["models"]["classifier"] == {k: classifier[k] for k in ("name", "version", "sha256")}
    assert good["verdicts"]["reliability"] == scored.json()["reliability"]["status"]
    assert good["verdicts"]["positive"] == [f["label"] for f in scored.json()["findings"] if f["positive"]]
    assert bad["status"] == refused.status_code and bad["problem"] == refused.json()["code"]
    assert submit["status"] == 202 and submit["job_id"] == job.json()["id"] and submit["verdicts"]["items"] == 1
    assert cancel["job_id"] == job.json()["id"] and cancel["verdicts"]["state"] in ("cancelled", "succeeded")

    text = json.dumps(records)
    for value in (*PHI.values(), SOP_UID, "Janeaudit", keys["user"][0], keys["admin"][0]):
        assert value not in text, f"{value!r} reached the audit trail"


def test_the_trail_filters_by_key_and_time_and_pages(client: TestClient, keys) -> None:
    admin, user = _as(keys, "admin"), _as(keys, "user")
    for seed in range(3):
        assert client.post("/v1/predict", files={"file": ("x.png", phantom_png(seed))}, headers=user).status_code == 200
    user_id = "key-" + hashlib.sha256(keys["user"][0].encode()).hexdigest()[:16]
    everything = client.get("/v1/audit", params={"key_id": user_id, "limit": 1000}, headers=admin).json()
    assert everything["total"] >= 3 and all(r["key_id"] == user_id for r in everything["records"])
    first = client.get("/v1/audit", params={"key_id": user_id, "limit": 2}, headers=admin).json()
    second = client.get("/v1/audit", params={"key_id": user_id, "limit": 2, "offset": 2}, headers=admin).json()
    assert [r["id"] for r in first["records"] + second["records"]] == [r["id"] for r in everything["records"]][:4]
    newest = everything["records"][0]["at"]
    later = client.get("/v1/audit", params={"since": newest, "key_id": user_id}, headers=admin).json()
    assert [r["id"] for r in later["records"]] == [everything["records"][0]["id"]]
    before = client.get("/v1/audit", params={"until": newest, "key_id": user_id}, headers=admin).json()
    assert before["total"] == everything["total"] - 1
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert client.get("/v1/audit", params={"since": future}, headers=admin).json()["records"] == []
    naive = client.get("/v1/audit", params={"since": "2026-01-01T00:00:00"}, headers=admin)
    assert naive.status_code == 422 and "time zone" in naive.json()["detail"]


def test_a_user_key_may_not_read_the_trail(client: TestClient, keys) -> None:
    answer = client.get("/v1/audit", headers=_as(keys, "user"))
    assert answer.status_code == 403
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert client.get("/v1/audit").status_code == 401


def test_records_written_while_serving_survive_a_restart(tmp_path) -> None:
    settings = service_settings(data_dir=tmp_path)
    with TestClient(create_app(settings)) as first:
        answer = first.post("/v1/predict", files={"file": ("x.png", phantom_png(5))})
        request_id = answer.json()["request_id"]
    with TestClient(create_app(settings)) as second:  # the first app's shutdown flushed what it buffered
        records = second.get("/v1/audit").json()["records"]
    assert [r["request_id"] for r in records] == [request_id]
    assert records[0]["key_id"] == "anonymous"


def test_a_full_buffer_drops_new_rows_and_counts_them() -> None:
    """The oldest rows may be in a write under way; a full buffer refuses the newest instead (and says how many)."""
    from types import SimpleNamespace

    from service.audit import AuditEntry, AuditTrail

    trail = AuditTrail(engine=None, max_buffered=2)  # type: ignore[arg-type]  # never flushed here
    for number in range(3):
        request = SimpleNamespace(
            state=SimpleNamespace(principal=None, request_id=f"r{number}"),
            scope={},
            method="POST",
            url=SimpleNamespace(path="/v1/predict"),
        )
        trail.record(request, AuditEntry("predict"))  # type: ignore[arg-type]
    assert [row["request_id"] for row in trail._buffer] == ["r0", "r1"] and trail.dropped == 1
