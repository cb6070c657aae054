"""The outlier gate through the real service on images it must refuse and chest films it must accept.

Non-chest corpus built in code: every photo bundled in scikit-image that loads offline, uniform/Gaussian/salt-and-
pepper noise at 256-2048 px, flat black/grey/white, gradients, stripes, checkerboards, and (where present) CT, MR,
mammography, dental and extremity DICOMs. Chest films: the NIH1000 held-out test folder and real chest films from
other sources (pydicom-data's RG1 CR at full resolution, SIIM, CR-MONO1). The synthetic part runs on any clone.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydicom.data import get_testdata_file

from tests.conftest import SHARED_DATA, require_shared
from tests.service.conftest import png_bytes

RNG = np.random.default_rng(2026)


def _grey8(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, dtype=np.float64)
    if image.ndim == 3:
        image = image[..., :3].mean(axis=-1)
    low, high = float(image.min()), float(image.max())
    return np.round(255 * (image - low) / max(high - low, 1e-9)).astype(np.uint8)


def skimage_photos() -> dict[str, bytes]:
    from skimage import data

    photos = {}
    for name in sorted(data.__all__):
        try:
            image = getattr(data, name)()
        except (Exception, pytest.skip.Exception):  # noqa: BLE001 - needs a download (skimage skips under pytest)
            continue
        if isinstance(image, np.ndarray) and (image.ndim == 2 or (image.ndim == 3 and image.shape[-1] in (3, 4))):
            photos[f"skimage:{name}"] = png_bytes(_grey8(image))
    return photos


def synthetic_patterns() -> dict[str, bytes]:
    images: dict[str, np.ndarray] = {}
    for size in (256, 1024, 2048):
        images[f"uniform noise {size}"] = RNG.integers(0, 256, (size, size))
        images[f"gaussian noise {size}"] = np.clip(RNG.normal(128, 40, (size, size)), 0, 255)
        salt = np.full((size, size), 128)
        draw = RNG.random((size, size))
        salt[draw < 0.05], salt[draw > 0.95] = 0, 255
        images[f"salt and pepper {size}"] = salt
    for value in (0, 128, 255):
        images[f"flat {value}"] = np.full((512, 512), value)
    yy, xx = np.mgrid[0:512, 0:512] / 512.0
    images["horizontal gradient"] = 255 * xx
    images["vertical gradient"] = 255 * yy
    images["radial gradient"] = 255 * np.hypot(xx - 0.5, yy - 0.5) / 0.71
    images["stripes"] = 255 * (np.sin(60 * xx) > 0)
    images["fine stripes"] = 255 * (np.arange(512) % 2)[None, :].repeat(512, axis=0)
    images["checkerboard 8"] = 255 * (((8 * xx).astype(int) + (8 * yy).astype(int)) % 2)
    images["checkerboard 64"] = 255 * (((64 * xx).astype(int) + (64 * yy).astype(int)) % 2)
    return {name: png_bytes(np.asarray(image).astype(np.uint8)) for name, image in images.items()}


NON_CHEST_DICOMS_SHARED = (
    "IM-0001-0001-0001.dcm",
    "jpeg_lossless_with_presentation_lut.dcm",
    "OutOfBoundsOverlay.dcm",
    "CR-ModalitySequenceLUT.dcm",
)
NON_CHEST_DICOMS_PYDICOM = ("CT_small.dcm", "MR_small.dcm", "RG3_UNCR.dcm", "MR2_UNCR.dcm", "JPEG2000_UNC.dcm")
CHEST_ELSEWHERE_SHARED = ("CR-MONO1-10-chest.dcm", "siim_cr_chest_jpeg_baseline.dcm")
CHEST_ELSEWHERE_PYDICOM = ("RG1_UNCR.dcm", "RG1_J2KR.dcm")


def non_chest_dicoms() -> dict[str, bytes]:
    found = {}
    for name in NON_CHEST_DICOMS_SHARED:
        if (SHARED_DATA / "dicom" / name).is_file():
            found[name] = (SHARED_DATA / "dicom" / name).read_bytes()
    for name in NON_CHEST_DICOMS_PYDICOM:
        path = get_testdata_file(name, download=False)
        if path is not None:
            found[name] = open(path, "rb").read()  # noqa: SIM115 - small test files
    return found


def _verdicts(client: TestClient, images: dict[str, bytes]) -> dict[str, dict]:
    verdicts = {}
    for name, data in images.items():
        response = client.post("/v1/predict", files={"file": (name, data, "application/octet-stream")})
        assert response.status_code == 200, (name, response.text)
        body = response.json()
        verdicts[name] = {"reliability": body["reliability"]["status"], "outlier": body["outlier"]}
    return verdicts


def test_at_least_99_percent_of_non_chest_images_are_not_reliable(client: TestClient) -> None:
    corpus = {**skimage_photos(), **synthetic_patterns(), **non_chest_dicoms()}
    assert len(corpus) >= 40, sorted(corpus)
    verdicts = _verdicts(client, corpus)
    passed = sorted(name for name, v in verdicts.items() if v["reliability"] == "reliable")
    share = 1 - len(passed) / len(corpus)
    print(f"\nnon-chest corpus: {len(corpus) - len(passed)}/{len(corpus)} ({share:.1%}) not reliable; passed: {passed}")
    assert share >= 0.99, passed


def test_synthetic_patterns_are_never_reliable_even_without_shared_data(client: TestClient) -> None:
    verdicts = _verdicts(client, synthetic_patterns())
    assert {name for name, v in verdicts.items() if v["reliability"] == "reliable"} == set()


def test_held_out_nih_chest_films_are_rarely_gated(client: TestClient) -> None:
    folder = require_shared("nih1000", "test")
    films = {path.name: path.read_bytes() for path in sorted(folder.rglob("*.png"))}
    verdicts = _verdicts(client, films)
    gated = [name for name, v in verdicts.items() if v["outlier"]["verdict"] == "outlier"]
    print(f"\nNIH1000 test folder: {len(gated)}/{len(films)} gated ({len(gated) / len(films):.1%})")
    assert len(gated) / len(films) <= 0.05


@pytest.mark.parametrize("name", CHEST_ELSEWHERE_SHARED + CHEST_ELSEWHERE_PYDICOM)
def test_real_chest_films_from_elsewhere_pass_the_gate(client: TestClient, name: str) -> None:
    if name in CHEST_ELSEWHERE_SHARED:
        data = require_shared("dicom", name).read_bytes()
    else:
        path = get_testdata_file(name, download=False)
        if path is None:
            pytest.skip(f"{name} ships in the pydicom-data package (a test dependency), not installed here")
        data = open(path, "rb").read()  # noqa: SIM115
    verdict = _verdicts(client, {name: data})[name]
    assert verdict["outlier"]["verdict"] == "in_distribution", verdict


def test_a_rgb_photo_upload_is_scored_as_grey_and_gated(client: TestClient) -> None:
    buffer = io.BytesIO()
    Image.fromarray(RNG.integers(0, 256, (300, 400, 3)).astype(np.uint8), mode="RGB").save(buffer, format="JPEG")
    verdict = _verdicts(client, {"colour noise": buffer.getvalue()})["colour noise"]
    assert verdict["reliability"] == "unreliable"
