"""models.imaging on real files: the shared DICOM/PNG set, pydicom-data's radiographs, and hostile bytes."""

from __future__ import annotations

import functools
import logging
import resource
import struct
import sys
import warnings
import zlib
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from pydicom import config
from pydicom.data import get_testdata_file
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, SecondaryCaptureImageStorage

from models.imaging import (
    DEFAULT_MAX_PIXELS,
    ColourImageError,
    CorruptPixelDataError,
    EmptyInputError,
    ImageMeta,
    ImageTooLargeError,
    ImageTooSmallError,
    ImagingError,
    MultiFrameError,
    NotAnImageError,
    Radiograph,
    UnsupportedTransferSyntaxError,
    decode,
    decode_file,
    from_array,
    sniff_format,
)
from tests.conftest import SHARED_DATA

DATA = SHARED_DATA
DICOM_DIR = DATA / "dicom"
NIH_DIR = DATA / "nih1000"
needs_data = pytest.mark.skipif(
    not DATA.is_dir(), reason="../shared/data not present: real-data tests need the shared data folder"
)
PHI_KEYWORDS = ("PatientName", "PatientID", "AccessionNumber", "PatientBirthDate")
HYPOTHESIS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ------------------------------------------------------------------------------------------------ helpers
def pydicom_file(name: str) -> Path:
    """A file from pydicom's own test files or the pydicom-data package (installed, never downloaded)."""
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} not installed: it ships in the pydicom-data package (a test dependency)")
    return Path(path)


def shared(*parts: str) -> Path:
    path = DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"../shared/data not present: real-data tests need the shared data folder (missing {path})")
    return path


def assert_radiograph(result: Radiograph, shape: tuple[int, int]) -> None:
    pixels = result.pixels
    assert pixels.dtype == np.float32
    assert pixels.shape == shape
    assert float(pixels.min()) >= 0.0 and float(pixels.max()) <= 1.0
    assert float(pixels.std()) > 0.01, "decoded image is (almost) constant"
    assert (result.meta.height, result.meta.width) == shape


def assert_chest_bone_white(pixels: np.ndarray) -> None:
    """On a frontal chest film displayed correctly, the mediastinum/spine is brighter than both lung fields."""
    height, width = pixels.shape
    band = pixels[int(0.35 * height) : int(0.6 * height)]
    centre = band[:, int(0.45 * width) : int(0.55 * width)].mean()
    left = band[:, int(0.2 * width) : int(0.35 * width)].mean()
    right = band[:, int(0.65 * width) : int(0.8 * width)].mean()
    assert centre > max(left, right) + 0.1, (centre, left, right)


def png_bytes(image: Image.Image, **save_kwargs) -> bytes:
    buffer = BytesIO()
    image.save(buffer, format="PNG", **save_kwargs)
    return buffer.getvalue()


def jpeg_bytes(image: Image.Image) -> bytes:
    buffer = BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG header that claims width x height, with a few bytes of image data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def dicom_bytes(pixels: np.ndarray, photometric: str = "MONOCHROME2", bits_stored: int | None = None, **attrs) -> bytes:
    """A small Secondary Capture DICOM file, written by pydicom, with extra attributes from `attrs`."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.Modality = "OT"
    ds.PatientName = "Secret^Patient"
    ds.PatientID = "PID-777-SECRET"
    bits = bits_stored or 8 * pixels.dtype.itemsize
    ds.set_pixel_data(pixels, photometric_interpretation=photometric, bits_stored=bits)
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    return write(ds)


def write(ds: Dataset) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def phi_values(path: Path) -> list[str]:
    """The identifying strings in a real file's header (the things that must never leak)."""
    ds = pydicom.dcmread(path, force=True, stop_before_pixels=True)
    values = [str(ds.get(keyword) or "").strip() for keyword in PHI_KEYWORDS]
    return [value for value in values if len(value) >= 4]


# --------------------------------------------------------------------------------------- the shared DICOMs
# file -> (rows, columns, modality, photometric, bits) from ../shared/data/README.md, orientation from the header.
DICOM_TABLE: dict[str, tuple[int, int, str, str, int]] = {
    "CR-MONO1-10-chest.dcm": (440, 440, "CR", "MONOCHROME1", 10),
    "CR-ModalitySequenceLUT.dcm": (1576, 1976, "CR", "MONOCHROME1", 10),  # README's 1576x1976 = rows x cols
    "siim_cr_chest_jpeg_baseline.dcm": (1024, 1024, "CR", "MONOCHROME2", 8),
    "siim_cr_chest_fake_monochrome1.dcm": (1024, 1024, "CR", "MONOCHROME1", 8),
    "highdicom_dx_image.dcm": (169, 211, "DX", "MONOCHROME1", 8),  # README's 211x169 = cols x rows
    "jpeg_lossless_with_presentation_lut.dcm": (512, 512, "CT", "MONOCHROME2", 12),
    "jpeg_lossless_with_inverse_presentation_lut_shape.dcm": (512, 512, "CT", "MONOCHROME2", 12),
    "IM-0001-0001-0001.dcm": (512, 512, "CT", "MONOCHROME2", 12),
    "OutOfBoundsOverlay.dcm": (788, 1318, "MG", "MONOCHROME2", 12),
}
DICOM_ERRORS: dict[str, type[ImagingError]] = {
    "HasFragmentSequence.dcm": MultiFrameError,
    "monochrome_jpeg_xl_12bit.dcm": UnsupportedTransferSyntaxError,
}


@needs_data
def test_every_shared_dicom_file_is_covered_by_these_tests():
    assert {path.name for path in DICOM_DIR.glob("*.dcm")} == set(DICOM_TABLE) | set(DICOM_ERRORS)


@needs_data
@pytest.mark.parametrize("name", sorted(DICOM_TABLE))
def test_shared_dicom_decodes(name):
    rows, columns, modality, photometric, bits = DICOM_TABLE[name]
    path = DICOM_DIR / name
    header = pydicom.dcmread(path, force=True, stop_before_pixels=True)
    assert (header.Rows, header.Columns) == (rows, columns)

    result = decode_file(path)

    assert_radiograph(result, (rows, columns))
    meta = result.meta
    assert (meta.format, meta.modality, meta.photometric, meta.bits_stored) == ("dicom", modality, photometric, bits)
    assert meta.voi_source in ("voi_lut_sequence", "window", "minmax")
    assert len(meta.sop_instance_uid_hash) == 16
    assert meta.sop_instance_uid_hash != str(header.SOPInstanceUID)
    dumped = repr(meta.to_dict())
    for secret in phi_values(path):
        assert secret not in dumped


@needs_data
def test_multi_frame_dicom_is_refused_from_the_header():
    with pytest.raises(MultiFrameError, match="expected a single-frame image, got 96 frames") as info:
        decode_file(DICOM_DIR / "HasFragmentSequence.dcm")
    assert info.value.code == "multi_frame" and info.value.http_status == 422
    for secret in phi_values(DICOM_DIR / "HasFragmentSequence.dcm"):
        assert secret not in str(info.value)


@needs_data
def test_jpeg_xl_dicom_names_the_unsupported_transfer_syntax():
    with pytest.raises(UnsupportedTransferSyntaxError, match=r"1\.2\.840\.10008\.1\.2\.4\.110") as info:
        decode_file(DICOM_DIR / "monochrome_jpeg_xl_12bit.dcm")
    assert "JPEG XL" in str(info.value)
    assert info.value.http_status == 415


@needs_data
def test_fake_monochrome1_is_the_exact_inverse_of_its_monochrome2_twin():
    plain = decode_file(DICOM_DIR / "siim_cr_chest_jpeg_baseline.dcm").pixels
    inverted = decode_file(DICOM_DIR / "siim_cr_chest_fake_monochrome1.dcm").pixels
    np.testing.assert_allclose(inverted, 1.0 - plain, atol=1e-6)
    assert_chest_bone_white(plain)


@needs_data
def test_presentation_lut_shape_inverse_inverts_the_display():
    identity_path = DICOM_DIR / "jpeg_lossless_with_presentation_lut.dcm"
    inverse_path = DICOM_DIR / "jpeg_lossless_with_inverse_presentation_lut_shape.dcm"
    assert pydicom.dcmread(inverse_path).PresentationLUTShape == "INVERSE"
    same_pixels = np.array_equal(pydicom.dcmread(identity_path).pixel_array, pydicom.dcmread(inverse_path).pixel_array)

    identity = decode_file(identity_path).pixels
    inverse = decode_file(inverse_path).pixels

    if same_pixels:  # true for the shared copies: only the presentation attributes differ
        np.testing.assert_allclose(inverse, 1.0 - identity, atol=1e-6)
    else:
        ignoring_shape = decode(inverse_path.read_bytes().replace(b"INVERSE ", b"IDENTITY"))
        assert not np.allclose(inverse, ignoring_shape.pixels)


@needs_data
def test_cr_without_file_meta_reads_and_applies_monochrome1():
    raw = (DICOM_DIR / "CR-MONO1-10-chest.dcm").read_bytes()
    assert raw[128:132] != b"DICM" and sniff_format(raw) == "dicom"

    result = decode(raw)

    assert result.meta.transfer_syntax == ImplicitVRLittleEndian
    assert result.meta.voi_source == "window"
    assert_chest_bone_white(result.pixels)
    as_monochrome2 = decode(raw.replace(b"MONOCHROME1", b"MONOCHROME2")).pixels  # same length: a clean patch
    np.testing.assert_allclose(result.pixels, 1.0 - as_monochrome2, atol=1e-6)


@needs_data
def test_monochrome1_dx_with_its_mandatory_inverse_shape_is_inverted_once():
    # The DX IOD requires Presentation LUT Shape INVERSE with MONOCHROME1: one inversion, not two.
    raw = (DICOM_DIR / "highdicom_dx_image.dcm").read_bytes()
    assert b"INVERSE" in raw

    pixels = decode(raw).pixels

    as_monochrome2 = decode(raw.replace(b"MONOCHROME1", b"MONOCHROME2")).pixels  # MONOCHROME2 + INVERSE
    np.testing.assert_array_equal(pixels, as_monochrome2)
    air = pixels[:15].mean()  # the rows above the thorax are air: dark when displayed right
    assert air < 0.25 and air < pixels.mean()


@needs_data
def test_modality_lut_sequence_file_matches_pydicom():
    path = DICOM_DIR / "CR-ModalitySequenceLUT.dcm"
    ds = pydicom.dcmread(path)
    assert "ModalityLUTSequence" in ds
    values = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    expected = 1.0 - (values - values.min()) / (values.max() - values.min())  # min-max, then MONOCHROME1

    result = decode_file(path)

    assert result.meta.voi_source == "minmax"
    np.testing.assert_allclose(result.pixels, expected, atol=1e-6)


@needs_data
def test_header_limits_apply_to_real_dicom():
    path = DICOM_DIR / "CR-ModalitySequenceLUT.dcm"
    with pytest.raises(ImageTooLargeError, match=r"expected at most 1000000 pixels, got 1976x1576 = 3114176"):
        decode_file(path, max_pixels=1_000_000)
    with pytest.raises(ImageTooSmallError, match="2000"):
        decode_file(path, min_side=2000)


# ------------------------------------------------------------------------------------- pydicom-data files
def test_jpeg2000_lossless_decodes_exactly_like_the_uncompressed_file():
    uncompressed = decode_file(pydicom_file("RG1_UNCR.dcm"))
    jpeg2000 = decode_file(pydicom_file("RG1_J2KR.dcm"))

    assert_radiograph(uncompressed, (1955, 1841))
    np.testing.assert_array_equal(jpeg2000.pixels, uncompressed.pixels)
    assert uncompressed.meta.voi_source == jpeg2000.meta.voi_source == "window"
    assert jpeg2000.meta.transfer_syntax == "1.2.840.10008.1.2.4.90"
    assert_chest_bone_white(uncompressed.pixels)  # MONOCHROME1 chest


def test_voi_lut_sequence_is_applied():
    path = pydicom_file("vlut_04.dcm")
    ds = pydicom.dcmread(path)
    item = ds.VOILUTSequence[0]
    entries, first_mapped, out_bits = item.LUTDescriptor
    lut = np.asarray(item.LUTData, dtype=np.float64)
    stored = ds.pixel_array.astype(np.int64)
    expected = lut[np.clip(stored - first_mapped, 0, entries - 1)] / (2**out_bits - 1)  # independent lookup

    result = decode_file(path)

    assert result.meta.voi_source == "voi_lut_sequence"
    np.testing.assert_allclose(result.pixels, expected, atol=1e-6)
    np.testing.assert_allclose(result.pixels, apply_voi_lut(ds.pixel_array, ds) / 65535.0, atol=1e-6)


def test_voi_lut_sequence_content_drives_the_output():
    # vlut_04's LUT is a (16-bit) identity; a reversed copy must give the inverse image.
    ds = pydicom.dcmread(pydicom_file("vlut_04.dcm"))
    original = decode_file(pydicom_file("vlut_04.dcm")).pixels
    ds.VOILUTSequence[0].LUTData = list(reversed(ds.VOILUTSequence[0].LUTData))

    reversed_lut = decode(write(ds)).pixels

    np.testing.assert_allclose(reversed_lut, 1.0 - original, atol=1e-6)


def test_modality_lut_sequence_is_applied():
    path = pydicom_file("mlut_18.dcm")
    ds = pydicom.dcmread(path)
    values = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    expected = (values - values.min()) / (values.max() - values.min())

    result = decode_file(path)

    assert result.meta.voi_source == "minmax"
    np.testing.assert_allclose(result.pixels, expected, atol=1e-6)


def test_modality_lut_sequence_content_drives_the_output():
    # mlut_18's LUT is linear; squaring its entries must change the picture the way the LUT says.
    ds = pydicom.dcmread(pydicom_file("mlut_18.dcm"))
    item = ds.ModalityLUTSequence[0]
    entries, first_mapped, _ = item.LUTDescriptor
    squared = (np.asarray(item.LUTData, dtype=np.float64) / 65535.0) ** 2
    item.LUTData = [int(v) for v in np.round(squared * 65535.0)]
    stored = ds.pixel_array.astype(np.int64)
    looked_up = squared[np.clip(stored - first_mapped, 0, entries - 1)]
    expected = (looked_up - looked_up.min()) / (looked_up.max() - looked_up.min())

    result = decode(write(ds)).pixels

    np.testing.assert_allclose(result, expected, atol=1e-4)


def test_truncated_jpeg2000_file_reports_truncation():
    with pytest.raises(CorruptPixelDataError, match="truncated") as info:
        decode_file(pydicom_file("emri_small_jpeg_2k_lossless_too_short.dcm"))
    assert info.value.code == "corrupt_pixel_data"


def test_pydicoms_broken_jpeg_gives_a_typed_error():
    with pytest.raises(CorruptPixelDataError):
        decode_file(pydicom_file("JPEG-lossy.dcm"))


@pytest.mark.parametrize("name", ["SC_rgb.dcm", "SC_ybr_full_uncompressed.dcm", "OT-PAL-8-face.dcm"])
def test_real_colour_dicom_is_refused_unless_allowed(name):
    path = pydicom_file(name)
    with pytest.raises(ColourImageError):
        decode_file(path)
    result = decode_file(path, allow_colour_dicom=True)
    ds = pydicom.dcmread(path, force=True)
    assert_radiograph(result, (ds.Rows, ds.Columns))
    assert result.meta.voi_source is None


# ---------------------------------------------------------------------------------------------- PNG / JPEG
@needs_data
@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_nih_png_decodes_to_pillows_grey(mode):
    path = next((p for p in sorted(NIH_DIR.rglob("*.png")) if Image.open(p).mode == mode), None)
    assert path is not None, f"no {mode} PNG in nih1000"
    expected = np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255.0

    result = decode_file(path)

    assert_radiograph(result, (64, 64))
    assert (result.meta.format, result.meta.photometric, result.meta.bits_stored) == ("png", mode, 8)
    np.testing.assert_allclose(result.pixels, expected, atol=1 / 255)


def test_16_bit_png_scales_by_65535():
    values = np.linspace(0, 65535, 32 * 40).reshape(32, 40).astype(np.uint16)
    result = decode(png_bytes(Image.fromarray(values)))
    assert result.meta.bits_stored == 16 and result.meta.photometric.startswith("I")
    np.testing.assert_allclose(result.pixels, values / 65535.0, atol=1e-6)


def test_palette_and_grey_alpha_pngs_become_grey():
    grey = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (16, 1))  # 16x32 ramp
    palette = Image.fromarray(grey).convert("P")
    with_alpha = Image.fromarray(grey).convert("LA")
    with_alpha.putalpha(7)  # alpha is dropped, not blended

    from_palette = decode(png_bytes(palette))
    from_alpha = decode(png_bytes(with_alpha))

    assert (from_palette.meta.photometric, from_alpha.meta.photometric) == ("P", "LA")
    np.testing.assert_allclose(from_palette.pixels, grey / 255.0, atol=1 / 255)
    np.testing.assert_allclose(from_alpha.pixels, grey / 255.0, atol=1e-6)


@pytest.mark.parametrize("mode", ["L", "RGB", "CMYK"])
def test_jpeg_decodes_to_grey(mode):
    ramp = np.tile(np.linspace(0, 255, 48).astype(np.uint8), (40, 1))
    source = Image.fromarray(ramp).convert(mode)
    data = jpeg_bytes(source)
    expected = np.asarray(Image.open(BytesIO(data)).convert("L"), dtype=np.float32) / 255.0

    result = decode(data)

    assert result.meta.format == "jpeg" and result.meta.photometric == mode
    assert result.pixels.shape == (40, 48)
    np.testing.assert_allclose(result.pixels, expected, atol=1e-6)
    if mode != "CMYK":  # CMYK round-trips through Adobe's inverted convention; the grey ramp is the check
        np.testing.assert_allclose(result.pixels, ramp / 255.0, atol=0.05)


def test_truncated_png_and_jpeg_are_corrupt_not_silently_padded():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))
    for data in (png_bytes(image), jpeg_bytes(image)):
        with pytest.raises(CorruptPixelDataError):
            decode(data[: len(data) // 2])


def test_png_bomb_is_refused_from_the_header_without_allocating():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ImageTooLargeError, match="expected at most"):
        decode(png_header_only(100_000, 100_000))
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    kib = grown / 1024 if sys.platform == "darwin" else grown  # ru_maxrss: bytes on macOS, KiB on Linux
    assert kib < 200 * 1024, f"peak memory grew by {kib / 1024:.0f} MiB"


def test_our_pixel_limit_applies_below_pillows_own():
    assert DEFAULT_MAX_PIXELS < 8000 * 8000 < Image.MAX_IMAGE_PIXELS  # ours trips, Pillow's would not
    with pytest.raises(ImageTooLargeError, match=r"expected at most 50000000 pixels, got 8000x8000 = 64000000"):
        decode(png_header_only(8000, 8000))
    with pytest.raises(ImageTooLargeError):
        decode(png_header_only(100, 100), max_pixels=9_999)


def test_tiny_png_is_too_small():
    with pytest.raises(ImageTooSmallError, match="4x4"):
        decode(png_bytes(Image.new("L", (4, 4))))
    assert decode(png_bytes(Image.new("L", (4, 4))), min_side=4).pixels.shape == (4, 4)


# ------------------------------------------------------------------------------------------ synthetic DICOM
def test_colour_dicom_is_refused_unless_allowed():
    rgb = np.zeros((16, 24, 3), dtype=np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50
    data = dicom_bytes(rgb, photometric="RGB")

    with pytest.raises(ColourImageError, match="RGB") as info:
        decode(data)
    assert info.value.code == "colour_dicom"
    assert "Secret" not in str(info.value)
    grey = decode(data, allow_colour_dicom=True).pixels
    np.testing.assert_allclose(grey, (0.299 * 200 + 0.587 * 100 + 0.114 * 50) / 255.0, atol=1e-5)


def test_dicom_without_pixel_data_is_not_an_image():
    ds = pydicom.dcmread(BytesIO(dicom_bytes(np.zeros((16, 16), dtype=np.uint8))))
    for keyword in ("PixelData", "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit"):
        delattr(ds, keyword)  # e.g. a structured report: no image module at all
    with pytest.raises(NotAnImageError, match="Pixel Data"):
        decode(write(ds))


def test_dicom_image_header_without_pixel_data_is_corrupt():
    ds = pydicom.dcmread(BytesIO(dicom_bytes(np.zeros((16, 16), dtype=np.uint8))))
    del ds.PixelData  # what a file cut off before its pixels looks like
    with pytest.raises(CorruptPixelDataError, match="truncated"):
        decode(write(ds))


def test_dicom_pixel_limit_is_checked_before_decoding():
    data = dicom_bytes(np.zeros((16, 16), dtype=np.uint16), Rows=60_000, Columns=60_000)
    with pytest.raises(ImageTooLargeError, match="60000x60000"):
        decode(data)


def test_short_native_pixel_data_is_corrupt():
    data = dicom_bytes(np.zeros((16, 16), dtype=np.uint16), Rows=32)  # header promises twice the pixels
    with pytest.raises(CorruptPixelDataError):
        decode(data)


def test_constant_dicom_becomes_zeros():
    result = decode(dicom_bytes(np.full((16, 16), 1234, dtype=np.uint16), bits_stored=12))
    assert result.meta.voi_source == "minmax"
    np.testing.assert_array_equal(result.pixels, np.zeros((16, 16), dtype=np.float32))


def test_window_maps_its_range_to_unit_interval():
    ramp = np.arange(0, 4096, 16, dtype=np.uint16).reshape(16, 16)  # 0..4080
    data = dicom_bytes(ramp, bits_stored=12, WindowCenter=2048, WindowWidth=1024)

    result = decode(data)

    assert result.meta.voi_source == "window"
    pixels = result.pixels
    assert np.all(pixels[ramp <= 1536] == 0.0) and np.all(pixels[ramp > 2560] == 1.0)
    inside = (ramp > 1600) & (ramp < 2500)
    np.testing.assert_allclose(pixels[inside], (ramp[inside] - 1536.0) / 1023.0, atol=1e-6)  # PS3.3 C.11.2.1.2.1


def test_window_with_negative_rescale_slope_keeps_high_values_bright():
    ramp = np.arange(0, 256, dtype=np.uint16).reshape(16, 16)
    data = dicom_bytes(ramp, bits_stored=8, RescaleSlope=-1, RescaleIntercept=0, WindowCenter=-128, WindowWidth=256)
    pixels = decode(data).pixels
    assert pixels[0, 0] > pixels[-1, -1]  # stored 0 -> modality value 0, the highest


def test_sigmoid_window_is_honoured():
    ramp = np.arange(0, 4096, 16, dtype=np.uint16).reshape(16, 16)
    linear = decode(dicom_bytes(ramp, bits_stored=12, WindowCenter=2048, WindowWidth=1024)).pixels
    sigmoid = decode(
        dicom_bytes(ramp, bits_stored=12, WindowCenter=2048, WindowWidth=1024, VOILUTFunction="SIGMOID")
    ).pixels
    expected = 1.0 / (1.0 + np.exp(-4.0 * (ramp - 2048.0) / 1024.0))
    np.testing.assert_allclose(sigmoid, expected, atol=1e-5)
    assert not np.allclose(sigmoid, linear, atol=0.01)


def test_invalid_window_falls_back_to_minmax():
    ramp = np.arange(0, 256, dtype=np.uint8).reshape(16, 16)
    result = decode(dicom_bytes(ramp, bits_stored=8, WindowCenter=100, WindowWidth=0))
    assert result.meta.voi_source == "minmax"
    np.testing.assert_allclose(result.pixels, ramp / 255.0, atol=1e-6)


def test_identifying_values_never_reach_warnings_logs_meta_or_errors(caplog):
    # Identifying values (here an invalid DA) must not surface in meta, errors, warnings or log records.
    secret = "1961-02-31-SECRET"
    ds = pydicom.dcmread(BytesIO(dicom_bytes(np.arange(256, dtype=np.uint16).reshape(16, 16), bits_stored=8)))
    ds.add(DataElement(0x00100030, "DA", secret, validation_mode=config.IGNORE))  # PatientBirthDate
    good = write(ds)
    ds.Rows = 64  # the header now promises more pixels than the file holds
    broken = write(ds)

    with caplog.at_level(logging.DEBUG), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        meta = decode(good).meta
        with pytest.raises(CorruptPixelDataError) as info:
            decode(broken)

    texts = [record.getMessage() for record in caplog.records] + [str(w.message) for w in caught]
    texts += [repr(meta.to_dict()), str(info.value)]
    assert not any("SECRET" in text or "Secret" in text or "PID-777" in text for text in texts)


# --------------------------------------------------------------------------------- small API and contracts
def test_empty_and_unknown_bytes():
    with pytest.raises(EmptyInputError) as info:
        decode(b"")
    assert (info.value.code, info.value.http_status) == ("empty_input", 400)
    with pytest.raises(NotAnImageError, match="hello") as info:
        decode(b"hello")
    assert (info.value.code, info.value.http_status) == ("not_an_image", 415)


def test_error_classes_carry_codes():
    classes = [
        ImagingError, EmptyInputError, NotAnImageError, UnsupportedTransferSyntaxError, MultiFrameError,
        ColourImageError, CorruptPixelDataError, ImageTooLargeError, ImageTooSmallError,
    ]  # fmt: skip
    codes = [cls.code for cls in classes]
    assert len(set(codes)) == len(codes)
    assert all(issubclass(cls, ValueError) and cls.http_status in (400, 415, 422) for cls in classes)


def test_decode_accepts_bytearray_and_memoryview():
    data = png_bytes(Image.new("L", (8, 8), color=128))
    for buffer in (bytearray(data), memoryview(data)):
        np.testing.assert_allclose(decode(buffer).pixels, 128 / 255.0, atol=1e-7)


def test_sniff_format():
    assert sniff_format(png_bytes(Image.new("L", (8, 8)))) == "png"
    assert sniff_format(jpeg_bytes(Image.new("L", (8, 8)))) == "jpeg"
    assert sniff_format(dicom_bytes(np.zeros((8, 8), dtype=np.uint8))) == "dicom"
    assert sniff_format(b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 100") == "dicom"  # explicit VR, no preamble
    assert sniff_format(b"") is None
    assert sniff_format(b"GIF89a" + bytes(200)) is None


def test_from_array_uses_png_scaling():
    u8 = np.array([[0, 128], [255, 1]], dtype=np.uint8)
    u16 = np.array([[0, 32768], [65535, 1]], dtype=np.uint16)
    floats = np.array([[-0.5, 0.25], [1.5, 1.0]], dtype=np.float64)
    np.testing.assert_allclose(from_array(u8).pixels, u8 / 255.0, atol=1e-7)
    np.testing.assert_allclose(from_array(u16).pixels, u16 / 65535.0, atol=1e-7)
    np.testing.assert_array_equal(from_array(floats).pixels, np.array([[0, 0.25], [1, 1]], dtype=np.float32))
    assert from_array(u16, format="medmnist").meta == ImageMeta("medmnist", 2, 2, 16, None)
    with pytest.raises(ImagingError, match="2-D"):
        from_array(np.zeros((4, 4, 3), dtype=np.uint8))
    with pytest.raises(ImagingError, match="int32"):
        from_array(np.zeros((4, 4), dtype=np.int32))


@needs_data
def test_from_array_matches_png_decode_on_pneumoniamnist():
    images = np.load(shared("pneumoniamnist", "pneumoniamnist.npz"))["test_images"][:5]
    for image in images:
        via_png = decode(png_bytes(Image.fromarray(image)), min_side=8).pixels
        np.testing.assert_array_equal(from_array(image).pixels, via_png)


# -------------------------------------------------------------------------------------- hostile bytes
@functools.cache
def seed_files() -> dict[str, bytes]:
    """Real files to cut and corrupt (the shared ones only where ../shared/data exists)."""
    ramp = np.add.outer(np.arange(48), np.arange(40)).astype(np.uint8) * 2
    seeds = {"made.jpg": jpeg_bytes(Image.fromarray(ramp).convert("RGB"))}
    if DATA.is_dir():
        seeds["nih.png"] = next(iter(sorted(NIH_DIR.rglob("*.png")))).read_bytes()
        seeds["siim.dcm"] = (DICOM_DIR / "siim_cr_chest_jpeg_baseline.dcm").read_bytes()
        seeds["cr-mono1.dcm"] = (DICOM_DIR / "CR-MONO1-10-chest.dcm").read_bytes()
    return seeds


@functools.cache
def seed_secrets() -> tuple[str, ...]:
    if not DATA.is_dir():
        return ()
    names = ("siim_cr_chest_jpeg_baseline.dcm", "CR-MONO1-10-chest.dcm")
    return tuple(secret for name in names for secret in phi_values(DICOM_DIR / name))


def decode_or_typed_error(data: bytes) -> None:
    """decode() either returns a valid image or raises a specific ImagingError; no PHI either way."""
    try:
        result = decode(data)
    except ImagingError as exc:
        assert type(exc) is not ImagingError, "decode raises a specific subclass with its own code"
        shown = str(exc)
    else:
        assert result.pixels.dtype == np.float32 and result.pixels.ndim == 2
        assert np.isfinite(result.pixels).all()
        assert result.pixels.min() >= 0.0 and result.pixels.max() <= 1.0
        shown = repr(result.meta.to_dict())
    for secret in seed_secrets():
        assert secret not in shown


MAGICS = [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", bytes(128) + b"DICM", b"\x08\x00\x00\x00"]


@HYPOTHESIS
@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about each mangled element
@given(prefix=st.sampled_from(MAGICS), body=st.binary(max_size=600))
def test_random_bytes_only_raise_imaging_errors(prefix, body):
    decode_or_typed_error(prefix + body)


@HYPOTHESIS
@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about each mangled element
@given(data=st.data())
def test_truncated_real_files_only_raise_imaging_errors(data):
    name = data.draw(st.sampled_from(sorted(seed_files())))
    raw = seed_files()[name]
    cut = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
    decode_or_typed_error(raw[:cut])


@HYPOTHESIS
@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about each mangled element
@given(data=st.data())
def test_corrupted_real_files_only_raise_imaging_errors(data):
    name = data.draw(st.sampled_from(sorted(seed_files())))
    raw = bytearray(seed_files()[name])
    # Half the hits land in the first 2 KiB, where headers (and their lengths and tags) live.
    limit = data.draw(st.sampled_from([min(len(raw), 2048), len(raw)]))
    position = data.draw(st.integers(min_value=0, max_value=limit - 1))
    raw[position] = data.draw(st.integers(min_value=0, max_value=255))
    decode_or_typed_error(bytes(raw))
