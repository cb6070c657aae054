"""Logs are JSON lines and never carry PatientName / PatientID / AccessionNumber / birth date.

Uses the real DICOM files in ../shared/data/dicom (they carry such values), pydicom's own test files, and
corrupted variants whose broken lengths make pydicom quote raw header bytes in its warnings.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from tests.conftest import require_shared
from tests.service.conftest import phantom_png, service_settings

PHI_KEYWORDS = ("PatientName", "PatientID", "AccessionNumber", "PatientBirthDate", "OtherPatientIDs")
PYDICOM_FILES = ("CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "rtplan.dcm", "SC_rgb.dcm")


def _phi_values(data: bytes) -> set[str]:
    from io import BytesIO

    ds = pydicom.dcmread(BytesIO(data), stop_before_pixels=True, force=True)
    values: set[str] = set()
    for keyword in PHI_KEYWORDS:
        value = ds.get(keyword)
        if value is None:
            continue
        for part in (str(value), *str(value).split("^")):
            if len(part.strip()) >= 4:  # shorter strings ("XX") match by accident everywhere
                values.add(part.strip())
    return values


def _files() -> list[tuple[str, bytes]]:
    files = [(p.name, p.read_bytes()) for p in sorted(require_shared("dicom").glob("*.dcm"))]
    for name in PYDICOM_FILES:
        path = pydicom.data.get_testdata_file(name, download=False)
        if path is not None:
            files.append((name, Path(path).read_bytes()))
    return files


def _corrupted(data: bytes, rng: np.random.Generator, count: int) -> list[bytes]:
    """Variants with a damaged byte in the header region (lengths, VRs): the paths where pydicom complains."""
    variants = []
    header_end = min(len(data), 2048)
    for _ in range(count):
        broken = bytearray(data)
        for position in rng.integers(132, header_end, size=2):
            broken[position] = int(rng.integers(0, 256))
        variants.append(bytes(broken))
    return variants


def test_logs_and_answers_never_contain_patient_identifiers(
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture, recwarn: pytest.WarningsRecorder
) -> None:
    files = _files()
    phi = set().union(*(_phi_values(data) for _, data in files))
    assert {"Dog^AVeryGood", "Rubo DEMO", "AAAAAA^BBBBBBB"} <= phi, "the test files carry the names we look for"
    rng = np.random.default_rng(0)
    uploads = [data for _, data in files]
    for _, data in files:
        uploads += _corrupted(data, rng, 6)
    answers = []
    with TestClient(create_app(service_settings(log_level="DEBUG"))) as client:
        for data in uploads:
            response = client.post("/v1/predict", content=data, headers={"content-type": "application/dicom"})
            assert response.status_code < 500, response.text
            answers.append(response.text)
        client.post("/v1/predict", content=phantom_png(), headers={"content-type": "image/png"})
    captured = capfd.readouterr()
    # what reached stderr, any logger (pydicom's included) and any warning (printed to stderr in production)
    logged = "\n".join([captured.err, captured.out, caplog.text, *(str(w.message) for w in recwarn)])
    lines = [line for line in captured.err.splitlines() if line.strip()]
    predictions = [json.loads(line) for line in lines if line.startswith("{") and '"prediction"' in line]
    assert len(predictions) >= len(files) - 2, "every decodable upload logs one prediction line"
    assert all(json.loads(line) for line in lines if line.startswith("{"))  # structured lines parse
    leaked = sorted(value for value in phi if value in logged or any(value in answer for answer in answers))
    assert not leaked, f"patient identifiers reached the logs or answers: {leaked}"
