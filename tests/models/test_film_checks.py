"""Input sanity checks: noise, blank and far too dark/bright films are caught; real chest films pass.

The synthetic cases need no shared data (they run on a user's clone); the real-film floors use ../shared/data and
pydicom-data. Measured when the limits were chosen: real chest films (NIH1000 64 px, PneumoniaMNIST 28 px, CR/DX
DICOMs up to 1955 px) had spread >= 0.22, fine detail <= 0.17, at most 43 % black and 8 % white pixels; uniform,
Gaussian and salt-and-pepper noise at 256-2048 px all had fine detail 1.00 +- 0.002.
"""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from models.film_checks import FilmCheckLimits, film_check_reasons, film_statistics
from models.imaging import decode_file
from models.phantoms import make_phantom
from tests.conftest import require_shared

RNG = np.random.default_rng(7)


def _codes(pixels: np.ndarray) -> list[str]:
    return [code for code, _ in film_check_reasons(film_statistics(pixels))]


def _salt_and_pepper(size: int) -> np.ndarray:
    film = np.full((size, size), 0.5, np.float32)
    draw = RNG.random((size, size))
    film[draw < 0.05], film[draw > 0.95] = 0.0, 1.0
    return film


NOISE = {
    "uniform": lambda n: RNG.random((n, n), dtype=np.float32),
    "gaussian": lambda n: np.clip(RNG.normal(0.5, 0.15, (n, n)), 0, 1).astype(np.float32),
    "salt_and_pepper": _salt_and_pepper,
}


@pytest.mark.parametrize("size", [256, 1024, 2048])
@pytest.mark.parametrize("kind", sorted(NOISE))
def test_noise_is_caught_at_every_size(kind: str, size: int) -> None:
    assert _codes(NOISE[kind](size)) == ["noise"]


@pytest.mark.parametrize("value", [0.0, 0.5, 1.0])
def test_flat_films_are_near_constant(value: float) -> None:
    assert _codes(np.full((512, 480), value, np.float32)) == ["near_constant"]


def test_a_barely_varying_film_is_near_constant_and_says_how_flat() -> None:
    film = (0.5 + 0.01 * RNG.random((300, 300))).astype(np.float32)
    [(code, reason)] = film_check_reasons(film_statistics(film))
    assert code == "near_constant" and "nearly uniform" in reason and "0.0" in reason


def test_far_too_dark_and_far_too_bright_films() -> None:
    dark = np.zeros((400, 400), np.float32)
    dark[:70, :70] = np.linspace(0.2, 0.9, 70 * 70).reshape(70, 70)  # 3 % of the film shows anything
    assert _codes(dark) == ["too_dark"]
    assert _codes(1.0 - dark) == ["too_bright"]


@pytest.mark.parametrize("size", [64, 128, 512])
def test_synthetic_chest_films_pass(size: int) -> None:
    for seed in range(5):
        phantom = make_phantom(np.random.default_rng(seed), size=size, findings=("Effusion",) if seed % 2 else ())
        assert _codes(np.clip(phantom.pixels, 0, 1).astype(np.float32)) == []


def test_limits_are_the_comparisons_they_claim() -> None:
    stats = film_statistics(np.clip(make_phantom(np.random.default_rng(0), size=128).pixels, 0, 1))
    assert film_check_reasons(stats, FilmCheckLimits(min_spread=stats.spread + 1e-3))[0][0] == "near_constant"
    assert [c for c, _ in film_check_reasons(stats, FilmCheckLimits(max_fine_detail=stats.fine_detail - 1e-3))] == [
        "noise"
    ]


def test_statistics_expect_a_grey_film() -> None:
    with pytest.raises(ValueError, match="2-D grey film"):
        film_statistics(np.zeros((4, 4, 3), np.float32))


def test_every_nih1000_film_passes() -> None:
    root = require_shared("nih1000")
    files = sorted(root.glob("*/*/*.png"))
    assert len(files) == 1000
    failed = [f.name for f in files if _codes(decode_file(f).pixels)]
    assert failed == []


def test_pneumoniamnist_test_films_pass() -> None:
    images = np.load(require_shared("pneumoniamnist", "pneumoniamnist.npz"))["test_images"]
    failed = [i for i, image in enumerate(images) if _codes(image.astype(np.float32) / 255.0)]
    assert failed == []


@pytest.mark.parametrize(
    "name", ["CR-MONO1-10-chest.dcm", "siim_cr_chest_jpeg_baseline.dcm", "siim_cr_chest_fake_monochrome1.dcm"]
)
def test_chest_dicoms_from_elsewhere_pass(name: str) -> None:
    assert _codes(decode_file(require_shared("dicom", name)).pixels) == []


@pytest.mark.parametrize("name", ["RG1_UNCR.dcm", "RG1_J2KR.dcm"])
def test_full_resolution_cr_chest_passes(name: str) -> None:
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} ships in the pydicom-data package (a test dependency), not installed here")
    assert _codes(decode_file(path).pixels) == []
