"""Every endpoint and every error path through TestClient, with real DICOM/PNG files where they exist."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from models.calibration import calibrate
from models.imaging import decode
from models.preprocessing import PreprocessSpec, preprocess
from models.registry import Registry
from service.app import create_app
from service.engine import open_session
from tests.conftest import require_shared
from tests.service.conftest import SHIPPED_REGISTRY, phantom_png, png_bytes, service_settings

PROBLEM = "application/problem+json"


def assert_problem(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert {"type", "title", "status", "detail", "code"} <= set(body)
    assert body["status"] == status and body["code"] == code and body["detail"]
    assert response.headers.get("x-request-id")
    return body


# --------------------------------------------------------------------------------------------- health, models
def test_health_endpoints(client: TestClient) -> None:
    for path in ("/healthz", "/v2/health/live"):
        assert client.get(path).json() == {"status": "alive"}
    for path in ("/readyz", "/v2/health/ready"):
        body = client.get(path).json()
        assert body["status"] == "ready"
        assert set(body["models"]) == {"classifier", "autoencoder"}
        assert all(model["warm"] for model in body["models"].values())


def test_models_lists_what_serves_with_hashes_thresholds_and_confirmed_providers(client: TestClient) -> None:
    body = client.get("/v1/models").json()
    registry = Registry(SHIPPED_REGISTRY)
    model_set = registry.model_set("production")
    classifier = body["models"]["classifier"]
    # on a CPU the int8 variant serves under precision=auto
    assert classifier["name"] == model_set.classifier_int8.name
    assert classifier["sha256"] == model_set.classifier_int8.manifest.onnx_sha256
    assert classifier["providers"] == ["CPUExecutionProvider"] and classifier["device"] == "cpu"
    assert set(classifier["thresholds"]) == set(classifier["labels"])
    assert body["models"]["autoencoder"]["outlier_threshold"] == model_set.autoencoder_int8.manifest.outlier_threshold


def test_metrics_exposes_the_prometheus_series(client: TestClient) -> None:
    client.post("/v1/predict", content=phantom_png(1), headers={"content-type": "image/png"})
    text = client.get("/metrics").text
    for series in (
        "xray_http_requests_total",
        "xray_http_request_seconds_bucket",
        "xray_batch_size_bucket",
        "xray_inference_seconds_bucket",
        "xray_queue_depth",
        "xray_predictions_total",
        "xray_stage_seconds_bucket",
        "xray_model_loaded",
    ):
        assert series in text, series
    assert 'route="/v1/predict",status="200"' in text


def test_openapi_documents_both_upload_forms(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    content = spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/dicom", "image/png", "image/jpeg"} <= set(content)


# ------------------------------------------------------------------------------------------------- predict
def test_predict_multipart_png_matches_the_engine_directly(client: TestClient) -> None:
    data = phantom_png(2)
    response = client.post("/v1/predict", files={"file": ("film.png", data, "image/png")})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["request_id"] == response.headers["x-request-id"]
    assert body["image"] == {
        "format": "png",
        "modality": None,
        "view_position": None,
        "body_part": None,
        "photometric": "L",
        "bits_stored": 8,
        "transfer_syntax": None,
        "voi_source": None,
        "sop_instance_uid_hash": None,
        "width": 256,
        "height": 256,
    }
    # the same numbers as running the served model by hand
    model = Registry(SHIPPED_REGISTRY).model_set("production").classifier_int8
    session = open_session(model, providers="cpu", intra_op_threads=1)
    x = preprocess(decode(data), PreprocessSpec.from_dict(model.manifest.preprocess))
    raw = session.run(x[None])["probabilities"][0]
    labels = model.manifest.labels
    expected = dict(zip(labels, calibrate(raw, labels, model.manifest.calibration), strict=True))
    rows = [body["abnormal"], *body["findings"]]
    assert {r["label"] for r in rows} == set(expected)
    for row in rows:
        assert row["probability"] == pytest.approx(float(expected[row["label"]]), abs=1e-5)
        assert row["positive"] == (row["probability"] >= row["threshold"])
        assert row["threshold"] == pytest.approx(model.manifest.thresholds[row["label"]], abs=1e-6)
    probabilities = [r["probability"] for r in body["findings"]]
    assert probabilities == sorted(probabilities, reverse=True)
    assert body["abnormal"]["label"] == "Abnormal" and body["abnormal"]["source"] == "abnormal_head"
    assert body["models"]["classifier"]["sha256"] == model.manifest.onnx_sha256
    assert body["outlier"]["verdict"] in ("in_distribution", "outlier")
    assert body["outlier"]["threshold"] > 0 and body["outlier"]["score"] > 0
    assert set(body["timings_ms"]) == {"decode", "preprocess", "inference_incl_queue", "heatmaps", "total"}
    assert body["intended_use"] == "research use only"


def test_predict_raw_png_body_equals_multipart(client: TestClient) -> None:
    data = phantom_png(3)
    raw = client.post("/v1/predict", content=data, headers={"content-type": "image/png"}).json()
    multipart = client.post("/v1/predict", files={"file": ("a.png", data, "application/octet-stream")}).json()
    assert raw["findings"] == multipart["findings"] and raw["outlier"] == multipart["outlier"]


def test_predict_jpeg(client: TestClient) -> None:
    phantom = np.asarray(Image.open(io.BytesIO(phantom_png(4))))
    buffer = io.BytesIO()
    Image.fromarray(phantom).save(buffer, format="JPEG", quality=90)
    body = client.post("/v1/predict", content=buffer.getvalue(), headers={"content-type": "image/jpeg"}).json()
    assert body["image"]["format"] == "jpeg"


def test_real_chest_dicom_is_reliable_and_reports_image_facts(client: TestClient) -> None:
    path = require_shared("dicom", "siim_cr_chest_jpeg_baseline.dcm")
    response = client.post("/v1/predict", content=path.read_bytes(), headers={"content-type": "application/dicom"})
    body = response.json()
    assert response.status_code == 200, body
    assert body["image"]["format"] == "dicom" and body["image"]["modality"] == "CR"
    assert body["image"]["view_position"] == "PA" and body["image"]["body_part"] == "CHEST"
    assert body["image"]["transfer_syntax"] == "1.2.840.10008.1.2.4.50"
    assert body["outlier"]["verdict"] == "in_distribution"
    assert body["reliability"] == {"status": "reliable", "reasons": []}


@pytest.mark.parametrize(
    "name, modality_reason",
    [("IM-0001-0001-0001.dcm", True), ("OutOfBoundsOverlay.dcm", True), ("CR-ModalitySequenceLUT.dcm", False)],
)
def test_non_chest_dicoms_are_scored_but_flagged_unreliable_with_reasons(
    client: TestClient, name: str, modality_reason: bool
) -> None:
    path = require_shared("dicom", name)
    body = client.post("/v1/predict", files={"file": (name, path.read_bytes(), "application/dicom")}).json()
    assert body["findings"], "outliers are still scored"
    assert body["reliability"]["status"] == "unreliable"
    reasons = " ".join(body["reliability"]["reasons"])
    reconstruction = body["outlier"]["components"]["reconstruction"]
    assert ("reconstruction error" in reasons) == (reconstruction["verdict"] == "outlier")
    assert ("Modality" in reasons) == modality_reason


# ------------------------------------------------------------------------ the gate's input checks (no shared data)
def _dicom(pixels: np.ndarray, **attrs) -> bytes:
    """A DX Secondary Capture file written by pydicom (Modality DX, so no modality reason is added)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.Modality = "DX"
    ds.set_pixel_data(pixels, photometric_interpretation="MONOCHROME2", bits_stored=12)
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _png16(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")  # uint16 -> a 16-bit grey PNG
    return buffer.getvalue()


_NOISE = np.random.default_rng(11)
GATED_INPUTS = {
    "flat 16-bit PNG": (_png16(np.full((512, 512), 30000, np.uint16)), "near_constant"),
    "flat DICOM": (_dicom(np.full((256, 256), 1000, np.uint16)), "near_constant"),
    "DICOM with Rescale Slope 0": (
        _dicom(_NOISE.integers(0, 4096, (256, 256)).astype(np.uint16), RescaleSlope=0, RescaleIntercept=0),
        "near_constant",
    ),
    "uniform noise 512 px PNG": (png_bytes(_NOISE.integers(0, 256, (512, 512)).astype(np.uint8)), "noise"),
    "Gaussian noise 1024 px PNG": (
        png_bytes(np.clip(_NOISE.normal(128, 40, (1024, 1024)), 0, 255).astype(np.uint8)),
        "noise",
    ),
}


@pytest.mark.parametrize("name", sorted(GATED_INPUTS))
def test_blank_and_noise_films_are_never_reliable(client: TestClient, name: str) -> None:
    data, code = GATED_INPUTS[name]
    response = client.post("/v1/predict", files={"file": ("upload", data, "application/octet-stream")})
    body = response.json()
    assert response.status_code == 200, body
    assert body["outlier"]["verdict"] == "outlier"
    checks = body["outlier"]["components"]["film_checks"]
    assert checks["failed"][0] == code and checks["verdict"] == "outlier"
    assert body["reliability"]["status"] == "unreliable"
    assert any(word in body["reliability"]["reasons"][0] for word in ("nearly uniform", "noise"))


def test_a_synthetic_chest_film_passes_the_input_checks(client: TestClient) -> None:
    body = client.post("/v1/predict", content=phantom_png(5, size=512), headers={"content-type": "image/png"}).json()
    checks = body["outlier"]["components"]["film_checks"]
    assert checks["failed"] == [] and checks["verdict"] == "in_distribution"
    assert 0.2 < checks["statistics"]["spread"] <= 1.0 and checks["statistics"]["fine_detail"] < 0.5
    assert not any("uniform" in r or "noise" in r for r in body["reliability"]["reasons"])


def test_heatmaps_true_adds_one_png_overlay_per_label(client: TestClient) -> None:
    body = client.post(
        "/v1/predict?heatmaps=true", content=phantom_png(5, size=600), headers={"content-type": "image/png"}
    ).json()
    labels = [body["abnormal"]["label"], *(r["label"] for r in body["findings"])]
    assert sorted(body["heatmaps"]) == sorted(labels)
    for heatmap in body["heatmaps"].values():
        assert heatmap["media_type"] == "image/png"
        image = Image.open(io.BytesIO(base64.b64decode(heatmap["data"])))
        assert image.format == "PNG" and image.mode == "RGB"
        assert image.size == (512, 512)  # the 600 px film brought to heatmap_max_side


def test_heatmap_endpoint_returns_one_overlay_png(client: TestClient) -> None:
    response = client.post(
        "/v1/predict/heatmap?label=Effusion",
        content=phantom_png(6),
        headers={"content-type": "image/png", "accept": "image/png"},
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(response.content)).size == (256, 256)
    assert 0.0 <= float(response.headers["x-probability"]) <= 1.0
    assert response.headers["x-reliability"] in ("reliable", "unreliable")


# ---------------------------------------------------------------------------------------------- error paths
def test_unknown_heatmap_label_is_422_naming_the_labels(client: TestClient) -> None:
    response = client.post(
        "/v1/predict/heatmap?label=Dragon", content=phantom_png(), headers={"content-type": "image/png"}
    )
    body = assert_problem(response, 422, "unknown_label")
    assert "Effusion" in body["detail"] and "Dragon" in body["detail"]


def test_heatmap_without_label_is_422(client: TestClient) -> None:
    assert_problem(
        client.post("/v1/predict/heatmap", content=phantom_png(), headers={"content-type": "image/png"}),
        422,
        "invalid_request",
    )


def test_heatmap_refuses_an_accept_it_cannot_answer(client: TestClient) -> None:
    response = client.post(
        "/v1/predict/heatmap?label=Effusion",
        content=phantom_png(),
        headers={"content-type": "image/png", "accept": "application/json"},
    )
    assert_problem(response, 406, "not_acceptable")


def test_unsupported_media_type_is_415(client: TestClient) -> None:
    body = assert_problem(
        client.post("/v1/predict", content=b"{}", headers={"content-type": "application/json"}),
        415,
        "unsupported_media_type",
    )
    assert "application/json" in body["detail"] and "application/dicom" in body["detail"]


def test_bytes_that_are_no_image_are_415(client: TestClient) -> None:
    assert_problem(
        client.post(
            "/v1/predict", content=b"GIF89a" + bytes(100), headers={"content-type": "application/octet-stream"}
        ),
        415,
        "not_an_image",
    )


def test_declared_type_contradicting_the_bytes_is_415(client: TestClient) -> None:
    body = assert_problem(
        client.post("/v1/predict", content=phantom_png(), headers={"content-type": "application/dicom"}),
        415,
        "content_type_mismatch",
    )
    assert "PNG" in body["detail"]


def test_empty_body_is_400(client: TestClient) -> None:
    assert_problem(client.post("/v1/predict", content=b"", headers={"content-type": "image/png"}), 400, "empty_input")


def test_multipart_without_a_file_field_is_422(client: TestClient) -> None:
    response = client.post("/v1/predict", data={"note": "x"}, files={"image": ("a.png", phantom_png(), "image/png")})
    body = assert_problem(response, 422, "missing_file")
    assert "image" in body["detail"]


def test_truncated_png_is_422(client: TestClient) -> None:
    data = phantom_png()
    response = client.post("/v1/predict", content=data[: len(data) // 2], headers={"content-type": "image/png"})
    assert response.status_code == 422 and response.headers["content-type"] == PROBLEM


def test_multi_frame_and_undecodable_dicoms_get_their_own_codes(client: TestClient) -> None:
    multi = require_shared("dicom", "HasFragmentSequence.dcm").read_bytes()
    assert_problem(
        client.post("/v1/predict", content=multi, headers={"content-type": "application/dicom"}), 422, "multi_frame"
    )
    jxl = require_shared("dicom", "monochrome_jpeg_xl_12bit.dcm").read_bytes()
    assert_problem(
        client.post("/v1/predict", content=jxl, headers={"content-type": "application/dicom"}),
        415,
        "unsupported_transfer_syntax",
    )


def test_unknown_route_and_wrong_method_are_problems(client: TestClient) -> None:
    assert_problem(client.get("/v1/nothing"), 404, "not_found")
    assert_problem(client.get("/v1/predict"), 405, "method_not_allowed")


def test_the_server_stays_up_after_every_error(client: TestClient) -> None:
    for body in (b"", b"\x89PNG\r\n\x1a\n" + bytes(50), b"\xff\xd8\xff" + bytes(50), bytes(132)):
        client.post("/v1/predict", content=body, headers={"content-type": "application/octet-stream"})
    assert client.post("/v1/predict", content=phantom_png(), headers={"content-type": "image/png"}).status_code == 200


def test_request_id_is_echoed_when_offered_and_well_formed(client: TestClient) -> None:
    response = client.get("/healthz", headers={"x-request-id": "ris-1234.a_b"})
    assert response.headers["x-request-id"] == "ris-1234.a_b"
    response = client.get("/healthz", headers={"x-request-id": "bad id with spaces\n"})
    assert response.headers["x-request-id"] != "bad id with spaces\n"


# --------------------------------------------------------------------------- limits need their own settings
def test_upload_limit_is_413_by_declared_length_and_by_streamed_length() -> None:
    with TestClient(create_app(service_settings(max_upload_bytes=10_000))) as small:
        big = phantom_png(size=512)
        assert len(big) > 10_000
        assert_problem(
            small.post("/v1/predict", content=big, headers={"content-type": "image/png"}), 413, "upload_too_large"
        )

        def chunks():  # no Content-Length: the limit is enforced while the body streams
            for start in range(0, len(big), 4096):
                yield big[start : start + 4096]

        response = small.post("/v1/predict", content=chunks(), headers={"content-type": "image/png"})
        assert_problem(response, 413, "upload_too_large")
        assert (
            small.post("/v1/predict", content=phantom_png(size=64), headers={"content-type": "image/png"}).status_code
            == 200
        )


def test_pixel_limit_is_422_before_decoding() -> None:
    with TestClient(create_app(service_settings(max_pixels=100_000))) as small:
        wide = png_bytes(np.zeros((400, 400), dtype=np.uint8))  # 160,000 pixels
        body = assert_problem(
            small.post("/v1/predict", content=wide, headers={"content-type": "image/png"}), 422, "image_too_large"
        )
        assert "160000" in body["detail"].replace(",", "")


def test_problem_bodies_are_json_with_the_problem_media_type(client: TestClient) -> None:
    response = client.post("/v1/predict", content=b"x", headers={"content-type": "text/plain"})
    assert json.loads(response.content)["type"].endswith("/unsupported_media_type")


def test_reload_swaps_and_keeps_the_loaded_models_gauge_exact(client: TestClient) -> None:
    before = client.get("/v1/models").json()
    body = client.post("/v1/models/reload").json()
    assert body["status"] == "reloaded"
    assert body["before"]["models"]["classifier"]["sha256"] == body["after"]["models"]["classifier"]["sha256"]
    assert client.get("/v1/models").json()["models"]["classifier"]["sha256"] == before["models"]["classifier"]["sha256"]
    assert client.post("/v1/predict", content=phantom_png(7), headers={"content-type": "image/png"}).status_code == 200
    loaded = [line for line in client.get("/metrics").text.splitlines() if line.startswith("xray_model_loaded{")]
    assert len(loaded) == 2 and all(line.endswith(" 1.0") for line in loaded), loaded


def test_reload_failure_keeps_serving_the_previous_models(tmp_path) -> None:
    from tests.service.conftest import copy_registry

    registry = copy_registry(tmp_path / "registry")
    with TestClient(create_app(service_settings(registry_dir=registry.root))) as local:
        (registry.root / "model_set.json").write_text("{not json")
        body = assert_problem(local.post("/v1/models/reload"), 409, "reload_refused")
        assert "the previous set is still serving" in body["detail"]
        assert (
            local.post("/v1/predict", content=phantom_png(8), headers={"content-type": "image/png"}).status_code == 200
        )


def _until(condition, timeout: float = 10.0) -> None:
    """Poll instead of sleeping a fixed time: ordering tests must not depend on how loaded the machine is."""
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_full_queue_answers_503_with_retry_after_at_once() -> None:
    import threading

    release = threading.Event()
    with TestClient(create_app(service_settings(max_queue=1, max_batch_size=1, retry_after_s=3))) as local:
        batcher = local.app.state.manager.current._batchers["classifier"]
        run = batcher._run_batch
        entered = threading.Event()

        def blocked(batch):  # the session is busy until the test releases it
            entered.set()
            release.wait(10)
            return run(batch)

        batcher._run_batch = blocked
        png = {"content-type": "image/png"}
        results: list[int] = []
        senders = [
            threading.Thread(
                target=lambda: results.append(local.post("/v1/predict", content=phantom_png(), headers=png).status_code)
            )
            for _ in range(2)
        ]
        senders[0].start()
        assert entered.wait(10), "the first request reached the session"
        senders[1].start()
        _until(lambda: batcher.depth == 1)  # the second waits in the queue
        # answered while the session is still blocked (release is set only afterwards): a 503 here did not wait
        response = local.post("/v1/predict", content=phantom_png(), headers=png)
        release.set()
        for sender in senders:
            sender.join(10)
        body = assert_problem(response, 503, "queue_full")
        assert response.headers["retry-after"] == "3" and "waiting" in body["detail"]
        assert sorted(results) == [200, 200], "the queued requests still finish"
        assert 'xray_rejections_total{reason="queue_full"} 1.0' in local.get("/metrics").text


def test_the_all_labels_marker_is_not_a_label(client: TestClient) -> None:
    response = client.post("/v1/predict/heatmap?label=*", content=phantom_png(), headers={"content-type": "image/png"})
    assert_problem(response, 422, "unknown_label")


def test_uploads_beyond_the_admission_limit_get_503_before_being_read() -> None:
    import threading

    release = threading.Event()
    with TestClient(create_app(service_settings(max_active_uploads=1, retry_after_s=2))) as local:
        batcher = local.app.state.manager.current._batchers["classifier"]
        run = batcher._run_batch
        batcher._run_batch = lambda batch: (release.wait(10), run(batch))[1]
        png = {"content-type": "image/png"}
        first: list[int] = []
        sender = threading.Thread(
            target=lambda: first.append(local.post("/v1/predict", content=phantom_png(), headers=png).status_code)
        )
        sender.start()
        _until(lambda: local.app.state.admission.active == 1)
        response = local.post("/v1/predict", content=phantom_png(), headers=png)
        release.set()
        sender.join(10)
        assert_problem(response, 503, "overloaded")
        assert response.headers["retry-after"] == "2" and first == [200]
        assert 'xray_rejections_total{reason="overloaded"} 1.0' in local.get("/metrics").text


def test_an_unexpected_failure_is_a_traceable_500_and_the_server_lives_on(monkeypatch) -> None:
    with TestClient(create_app(service_settings()), raise_server_exceptions=False) as local:
        pipeline = local.app.state.manager.current

        async def broken(*args, **kwargs):
            raise RuntimeError("a bug")

        monkeypatch.setattr(pipeline, "predict", broken)
        response = local.post("/v1/predict", content=phantom_png(), headers={"content-type": "image/png"})
        body = assert_problem(response, 500, "internal_error")
        assert body["request_id"] == response.headers["x-request-id"] and "a bug" not in body["detail"]
        monkeypatch.undo()
        assert (
            local.post("/v1/predict", content=phantom_png(), headers={"content-type": "image/png"}).status_code == 200
        )


def test_readyz_is_503_when_a_session_fails(monkeypatch) -> None:
    with TestClient(create_app(service_settings())) as local:
        pipeline = local.app.state.manager.current

        async def failing_probe():
            raise RuntimeError("CUDA error: device lost")

        monkeypatch.setattr(pipeline, "probe", failing_probe)
        assert_problem(local.get("/readyz"), 503, "not_ready")
        assert local.get("/healthz").status_code == 200


def test_heatmaps_from_a_model_without_cams_are_refused_before_decoding(monkeypatch, tmp_path) -> None:
    """A classifier exported without its CAM output (a real ONNX file without it, promoted in a registry copy)."""
    from tests.service.conftest import add_classifier_version, copy_registry

    registry = copy_registry(tmp_path / "registry")
    registry.promote("chest-classifier", add_classifier_version(registry, tmp_path, scale=1.0, cam=False))
    with TestClient(create_app(service_settings(registry_dir=registry.root))) as local:
        plain = local.post("/v1/predict", content=phantom_png(), headers={"content-type": "image/png"})
        assert plain.status_code == 200 and plain.json()["models"]["classifier"]["version"] == 2
        pipeline = local.app.state.manager.current
        monkeypatch.setattr(pipeline, "prepare", lambda data: pytest.fail("decoded although it must refuse first"))
        response = local.post("/v1/predict?heatmaps=true", content=phantom_png(), headers={"content-type": "image/png"})
        assert_problem(response, 409, "no_heatmaps")
