"""The fast decode and preprocess paths give what the straightforward ones give, on every real film at hand:
- the grey pipeline through a lookup table = the same steps on every pixel: identical float32 pixels;
- percentiles from the codes' histogram = np.percentile on the pixels (within 1e-6);
- banded resampling = the dense matrix products (within 1e-5)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from models.imaging import ImagingError, Levels, _grey_steps, _read_dataset, decode, decode_file, from_array
from models.preprocessing import PreprocessSpec, _weights, levels_percentiles, preprocess, resample
from tests.conftest import SHARED_DATA

PYDICOM_FILES = ("RG1_UNCR.dcm", "RG3_UNCR.dcm", "RG1_J2KR.dcm", "CT_small.dcm", "MR_small.dcm", "MR2_UNCI.dcm")
PERCENTILES = ((0.5, 99.5), (1.0, 99.0), (0.0, 100.0), (50.0, 50.0), (2.5, 97.5))


def _real_dicoms() -> list[Path]:
    found = [Path(path) for name in PYDICOM_FILES if (path := get_testdata_file(name, download=False))]
    return found + sorted((SHARED_DATA / "dicom").glob("*.dcm"))


def _films() -> list[tuple[str, bytes]]:
    films = [(path.name, path.read_bytes()) for path in _real_dicoms()]
    films += [(path.name, path.read_bytes()) for path in sorted((SHARED_DATA / "nih1000").rglob("*.png"))[:5]]
    return films


def _decodable(data: bytes):
    try:
        return decode(data)
    except ImagingError as error:  # e.g. JPEG XL, which no installed plugin decodes: nothing to compare
        pytest.skip(f"not decodable here: {error.code}")


@pytest.mark.parametrize("path", _real_dicoms(), ids=lambda path: path.name)
def test_the_lookup_table_gives_the_pixels_the_per_pixel_steps_give(path: Path) -> None:
    film = _decodable(path.read_bytes())
    ds = _read_dataset(path.read_bytes())  # as the decoder reads it (a missing transfer syntax inferred)
    if film.meta.photometric not in ("MONOCHROME1", "MONOCHROME2"):
        pytest.skip("a colour film has no grey pipeline")
    expected, voi_source = _grey_steps(ds.pixel_array, ds, film.meta.photometric, None)
    assert film.levels is not None, "an integer grey film should carry its levels"
    assert film.meta.voi_source == voi_source
    np.testing.assert_array_equal(film.pixels, expected)
    np.testing.assert_array_equal(film.levels.values[film.levels.codes], film.pixels)


@pytest.mark.parametrize("name,data", _films(), ids=lambda value: value if isinstance(value, str) else "")
def test_histogram_percentiles_equal_numpys(name: str, data: bytes) -> None:
    film = _decodable(data)
    if film.levels is None:
        pytest.skip("no levels (a colour or float film)")
    for percentiles in PERCENTILES:
        expected = np.percentile(film.pixels, percentiles)
        np.testing.assert_allclose(levels_percentiles(film.levels, percentiles), expected, rtol=0, atol=1e-6)


def test_histogram_percentiles_on_a_non_monotone_table() -> None:
    rng = np.random.default_rng(3)
    codes = rng.integers(0, 300, size=(97, 131)).astype(np.uint16)
    values = rng.random(300).astype(np.float32)  # the codes' order says nothing about the values' order
    levels = Levels(codes, values)
    for percentiles in PERCENTILES:
        np.testing.assert_allclose(
            levels_percentiles(levels, percentiles), np.percentile(values[codes], percentiles), rtol=0, atol=1e-6
        )


@pytest.mark.parametrize("interpolation", ["area", "bilinear"])
@pytest.mark.parametrize(
    "shape,out", [((1841, 1955), (224, 224)), ((1024, 1024), (64, 64)), ((28, 28), (64, 64)), ((513, 77), (300, 41))]
)
def test_banded_resampling_equals_the_dense_products(interpolation, shape, out) -> None:
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    dense = _weights(shape[0], out[0], interpolation) @ x @ _weights(shape[1], out[1], interpolation).T
    np.testing.assert_allclose(resample(x, *out, interpolation), dense, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name,data", _films(), ids=lambda value: value if isinstance(value, str) else "")
def test_preprocess_with_levels_equals_preprocess_of_the_bare_pixels(name: str, data: bytes) -> None:
    film = _decodable(data)
    for size in (64, 224):
        spec = PreprocessSpec(size=size, resize="crop", interpolation="area", normalisation="percentile")
        np.testing.assert_allclose(preprocess(film, spec), preprocess(film.pixels, spec), rtol=0, atol=1e-5)


def test_arrays_carry_levels_that_reproduce_their_pixels() -> None:
    for array in (np.arange(256, dtype=np.uint8).reshape(16, 16), np.arange(0, 65536, 257, dtype=np.uint16)[None]):
        film = from_array(np.repeat(array, 2, axis=0))
        np.testing.assert_array_equal(film.levels.values[film.levels.codes], film.pixels)


def test_decode_file_still_reads_a_path() -> None:
    path = get_testdata_file("RG3_UNCR.dcm", download=False)
    if path is None:
        pytest.skip("pydicom-data's RG3_UNCR.dcm is not installed")
    assert decode_file(path).levels is not None
