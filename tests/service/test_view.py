"""POST /v1/predict/view: the prediction /v1/predict gives, plus the decoded film as an 8-bit PNG and a transparent
heat layer per label at the film's size; and the UI's static files at /."""

from __future__ import annotations

import base64
import io

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from tests.conftest import require_shared
from tests.service.conftest import phantom_png


def _png(encoded: dict) -> np.ndarray:
    assert encoded["media_type"] == "image/png" and encoded["encoding"] == "base64"
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(encoded["data"]))))


def test_the_view_carries_the_prediction_the_film_and_aligned_heat_layers(client: TestClient) -> None:
    data = require_shared("dicom", "CR-MONO1-10-chest.dcm").read_bytes()
    headers = {"Content-Type": "application/dicom"}
    view = client.post("/v1/predict/view", content=data, headers=headers).json()
    plain = client.post("/v1/predict", content=data, headers=headers).json()
    for key in ("models", "image", "outlier", "reliability", "abnormal", "findings"):
        assert view[key] == plain[key], key
    film = _png(view["film"])
    assert film.dtype == np.uint8 and film.ndim == 2
    assert film.shape == (view["film"]["height"], view["film"]["width"]) and max(film.shape) <= 512
    # MONOCHROME1: the service inverted it, so the lungs (dark on a normal display) are darker than the mediastinum
    assert film[:, : film.shape[1] // 4].mean() < film[:, film.shape[1] // 2 - 20 : film.shape[1] // 2 + 20].mean()
    labels = [row["label"] for row in [view["abnormal"], *view["findings"]]]
    assert set(view["heat_layers"]) >= set(labels) - {"Abnormal"}
    layers = {label: _png(encoded) for label, encoded in view["heat_layers"].items()}
    assert all(layer.shape == (*film.shape, 4) for layer in layers.values())
    assert any(layer[..., 3].max() > 0 for layer in layers.values())  # some finding has positive evidence
    assert all(layer[..., 3].max() <= round(0.6 * 255) for layer in layers.values())  # never opaque


def test_the_view_of_bad_bytes_is_a_problem_and_the_ui_is_served(client: TestClient) -> None:
    answer = client.post("/v1/predict/view", content=b"not an image", headers={"Content-Type": "image/png"})
    assert answer.status_code in (415, 422) and answer.headers["content-type"] == "application/problem+json"
    small = client.post("/v1/predict/view", content=phantom_png(seed=1, size=64), headers={"Content-Type": "image/png"})
    assert small.json()["film"]["width"] == 256  # small films are enlarged for display
    page = client.get("/")
    assert page.status_code == 200 and "Research use only" in page.text and "/ui/app.js" in page.text
    assert client.get("/ui/app.js").headers["content-type"].startswith(("text/javascript", "application/javascript"))
    assert "cdn" not in page.text.lower() and "https://" not in client.get("/ui/app.js").text
