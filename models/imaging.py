"""Decode PNG, JPEG and DICOM bytes into one grey, display-ready image: the single entry point for pixels.

Every consumer (training, export, serving, batch) calls `decode` / `from_array`, so the rules live here once:
`Radiograph.pixels` is float32 (H, W) in [0, 1] with 1 = bright (bone white, as a reader would see it).

DICOM goes through the standard grey pipeline, in this order (PS3.4 N.2.1.1):
Modality LUT -> VOI (VOI LUT Sequence, else first window, else min-max) -> MONOCHROME1 / Presentation LUT inversion.

Only numpy, pydicom and Pillow: this module must never import torch (the serving image does not carry it).
Nothing identifying (PatientName, PatientID, AccessionNumber, PatientBirthDate) goes into `ImageMeta` or errors.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from io import BytesIO
from typing import TypeVar

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi, apply_windowing, get_decoder
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MIN_SIDE",
    "ColourImageError",
    "CorruptPixelDataError",
    "EmptyInputError",
    "ImageMeta",
    "ImageTooLargeError",
    "ImageTooSmallError",
    "ImagingError",
    "MultiFrameError",
    "NotAnImageError",
    "Levels",
    "Radiograph",
    "UnsupportedPixelDataError",
    "UnsupportedTransferSyntaxError",
    "decode",
    "decode_file",
    "from_array",
    "sniff_format",
]

DEFAULT_MAX_PIXELS = 50_000_000  # ~7000x7000; checked from the header, before any pixel is decoded
DEFAULT_MIN_SIDE = 8


# --------------------------------------------------------------------------------------------------- errors
class ImagingError(ValueError):
    """Base of every decode failure; `code` and `http_status` feed the API's problem+json answer."""

    code: str = "imaging_error"
    http_status: int = 422


class EmptyInputError(ImagingError):
    code = "empty_input"
    http_status = 400


class NotAnImageError(ImagingError):
    code = "not_an_image"
    http_status = 415


class UnsupportedTransferSyntaxError(ImagingError):
    code = "unsupported_transfer_syntax"
    http_status = 415


class UnsupportedPixelDataError(ImagingError):
    """A valid DICOM pixel encoding that no radiograph uses (Float / Double Float Pixel Data of parametric maps)."""

    code = "unsupported_pixel_data"
    http_status = 415


class MultiFrameError(ImagingError):
    code = "multi_frame"
    http_status = 422


class ColourImageError(ImagingError):
    code = "colour_dicom"
    http_status = 422


class CorruptPixelDataError(ImagingError):
    code = "corrupt_pixel_data"
    http_status = 422


class ImageTooLargeError(ImagingError):
    code = "image_too_large"
    http_status = 422


class ImageTooSmallError(ImagingError):
    code = "image_too_small"
    http_status = 422


# ---------------------------------------------------------------------------------------------- data types
@dataclass(frozen=True)
class ImageMeta:
    format: str  # "png" | "jpeg" | "dicom" | "array"
    width: int
    height: int
    bits_stored: int | None  # 8/16 for PNG/JPEG/arrays, BitsStored for DICOM
    photometric: str | None  # DICOM PhotometricInterpretation, or the PIL mode ("L", "RGB", "I;16", ...)
    modality: str | None = None
    view_position: str | None = None
    body_part: str | None = None
    transfer_syntax: str | None = None  # UID string, DICOM only
    manufacturer: str | None = None
    sop_instance_uid_hash: str | None = None  # sha256 hex[:16] of SOPInstanceUID; never the UID itself
    voi_source: str | None = None  # "voi_lut_sequence" | "window" | "minmax"; None for PNG/JPEG/colour

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Levels:
    """The film as integer codes and one value per code (`pixels == values[codes]`), where the decoder had them: a
    histogram of the codes then gives the pixels' percentiles without sorting millions of floats."""

    codes: np.ndarray  # uint8 or uint16 (H, W)
    values: np.ndarray  # float32 (n,), the pixel value of each code
    known_counts: np.ndarray | None = field(default=None, repr=False, compare=False)  # when the decoder had them

    @cached_property
    def counts(self) -> np.ndarray:
        """How many pixels hold each code (counted once: the grey pipeline and the percentiles may both ask)."""
        return self.known_counts if self.known_counts is not None else code_counts(self.codes, len(self.values))


def code_counts(codes: np.ndarray, length: int) -> np.ndarray:
    return np.bincount(codes.ravel(), minlength=length)


@dataclass(frozen=True)
class Radiograph:
    pixels: np.ndarray  # float32 (H, W), values in [0, 1], 1 = bright
    meta: ImageMeta
    levels: Levels | None = None  # integer films (8/16-bit PNG, grey DICOM): the same pixels as codes and values


# ---------------------------------------------------------------------------------------------- public API
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
# Explicit VRs, to recognise a DICOM data set that lacks the 128-byte preamble and "DICM".
_DICOM_VRS = frozenset(
    b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN UR US UT UV".split()
)


def sniff_format(data: bytes) -> str | None:
    """Return "png", "jpeg" or "dicom" from the leading bytes, or None when the bytes are none of those."""
    if data.startswith(_PNG_MAGIC):
        return "png"
    if data.startswith(_JPEG_MAGIC):
        return "jpeg"
    if data[128:132] == b"DICM" or _looks_like_bare_dicom(data):
        return "dicom"
    return None


def _looks_like_bare_dicom(data: bytes) -> bool:
    """A data set without preamble (old ACR-NEMA files, raw dumps) starts with a group 0x0002 or 0x0008 tag."""
    if len(data) < 8:
        return False
    group, _element = struct.unpack_from("<HH", data, 0)
    if group not in (0x0002, 0x0008):
        return False
    if data[4:6] in _DICOM_VRS:  # explicit VR little endian
        return True
    (length,) = struct.unpack_from("<I", data, 4)  # implicit VR: a 32-bit value length that fits the data
    return length <= len(data) - 8


def decode(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int = DEFAULT_MIN_SIDE,
    allow_colour_dicom: bool = False,
) -> Radiograph:
    """Decode PNG, JPEG or DICOM bytes; every failure is an `ImagingError` subclass."""
    data = bytes(data)  # bytearray / memoryview from upload frameworks
    if not data:
        raise EmptyInputError("expected image bytes (PNG, JPEG or DICOM), got 0 bytes")
    fmt = sniff_format(data)
    if fmt == "dicom":
        return _decode_dicom(data, max_pixels, min_side, allow_colour_dicom)
    if fmt in ("png", "jpeg"):
        return _decode_pillow(data, fmt, max_pixels, min_side)
    raise NotAnImageError(f"expected PNG, JPEG or DICOM bytes, got {len(data)} bytes starting with {data[:8]!r}")


def decode_file(path: str | os.PathLike, **kwargs) -> Radiograph:
    """Read a file and `decode` it; keyword arguments go to `decode`."""
    with open(path, "rb") as fh:
        return decode(fh.read(), **kwargs)


def from_array(array: np.ndarray, *, format: str = "array") -> Radiograph:
    """Wrap a grey 2-D array (e.g. MedMNIST) with the same scaling rules as PNG.

    uint8 / 255, uint16 / 65535, floats are taken to be in [0, 1] already and clipped.
    """
    array = np.asarray(array)
    if array.ndim != 2:
        raise ImagingError(f"expected a 2-D grey array (H, W), got shape {array.shape}")
    if array.size == 0:
        raise EmptyInputError(f"expected a non-empty array, got shape {array.shape}")
    levels = None
    if array.dtype == np.uint8:
        pixels, bits, levels = array.astype(np.float32) / 255.0, 8, Levels(array, _UNIT_8)
    elif array.dtype == np.uint16:
        pixels, bits, levels = array.astype(np.float32) / 65535.0, 16, Levels(array, _UNIT_16)
    elif np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise CorruptPixelDataError("expected finite float pixel values, got NaN or infinity")
        pixels, bits = np.clip(array, 0.0, 1.0).astype(np.float32), None
    else:
        raise ImagingError(f"expected a uint8, uint16 or float array, got dtype {array.dtype}")
    height, width = array.shape
    meta = ImageMeta(format=format, width=width, height=height, bits_stored=bits, photometric=None)
    return Radiograph(pixels=np.ascontiguousarray(pixels, dtype=np.float32), meta=meta, levels=levels)


# ------------------------------------------------------------------------------------------------- helpers
@contextmanager
def _typed_errors(error: type[ImagingError], what: str, describe: Callable[[str], str] | None = None) -> Iterator[None]:
    """Turn whatever a third-party decoder raises into `error`, so callers only ever see `ImagingError`.

    pydicom, Pillow and the pylibjpeg plugins raise ValueError, OSError, SyntaxError, struct.error, KeyError,
    RuntimeError ... on malformed input; listing them all would be a promise nobody can keep.
    `describe` makes the library's message safe to show; None shows only the exception type (DICOM header
    errors can quote header values).
    """
    try:
        yield
    except (ImagingError, MemoryError):
        raise
    except Exception as exc:  # see docstring: the library boundary, nowhere else
        detail = type(exc).__name__ if describe is None else describe(f"{type(exc).__name__}: {exc}")[:300]
        raise error(f"{what}: {detail}") from exc


def _check_size(width: int, height: int, max_pixels: int, min_side: int, frames: int = 1) -> None:
    """Size limits from the header, before decoding: a 100000x100000 PNG is 60 bytes and 10 GB decoded."""
    total = width * height * frames
    if total > max_pixels:
        shape = f"{width}x{height}" + (f"x{frames} frames" if frames > 1 else "")
        raise ImageTooLargeError(f"expected at most {max_pixels} pixels, got {shape} = {total}")
    if min(width, height) < min_side:
        raise ImageTooSmallError(f"expected both sides >= {min_side} px, got {width}x{height} (width x height)")


# ---------------------------------------------------------------------------------------------- PNG / JPEG
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # "I": 16-bit PNGs in older Pillow


def _decode_pillow(data: bytes, fmt: str, max_pixels: int, min_side: int) -> Radiograph:
    # Image.open only parses the header; `formats` keeps Pillow from guessing other formats.
    with _typed_errors(CorruptPixelDataError, f"could not read the {fmt.upper()} header", _pillow_message):
        image = _pillow_step(lambda: Image.open(BytesIO(data), formats=[fmt.upper()]), max_pixels)
    width, height = image.size
    _check_size(width, height, max_pixels, min_side)
    with _typed_errors(CorruptPixelDataError, f"could not decode the {fmt.upper()} image", _pillow_message):
        # load() raises on truncated data because ImageFile.LOAD_TRUNCATED_IMAGES stays False.
        _pillow_step(image.load, max_pixels)
        pixels, bits, levels = _pil_to_unit(image)
    meta = ImageMeta(format=fmt, width=width, height=height, bits_stored=bits, photometric=image.mode)
    return Radiograph(pixels=pixels, meta=meta, levels=levels)


_T = TypeVar("_T")
_OBJECT_REPR = re.compile(r" ?<[\w.]+ object at 0x[0-9a-fA-F]+>")


def _pillow_message(message: str) -> str:
    """Pillow's message without the reprs of our own buffers ("cannot identify image file <_io.BytesIO object at
    0x7f...>"): a memory address tells the client nothing about its bytes."""
    return _OBJECT_REPR.sub("", message)


def _pillow_step(step: Callable[[], _T], max_pixels: int) -> _T:
    """Run a Pillow call, reporting Pillow's own decompression-bomb limit as ImageTooLargeError."""
    try:
        return step()
    except Image.DecompressionBombError as exc:  # Pillow's limit can trip before ours sees the size
        raise ImageTooLargeError(f"expected at most {max_pixels} pixels, got more: {exc}") from exc


_UNIT_8 = np.arange(256, dtype=np.float32) / np.float32(255.0)  # the pixel value of each 8-bit code
_UNIT_16 = np.arange(65536, dtype=np.float32) / np.float32(65535.0)


def _pil_to_unit(image: Image.Image) -> tuple[np.ndarray, int, Levels | None]:
    """Grey float32 in [0, 1]: 16-bit grey / 65535, anything else via Pillow's luminance "L" / 255; with the codes
    as levels (the same float32 division per code, so `pixels == values[codes]` exactly)."""
    # Scaled in place: a film under the pixel limit (7000x7000) is ~200 MB as float32, and `a / 255.0` would hold
    # a second copy at the decode's peak (same float32 arithmetic, same values).
    if image.mode in _SIXTEEN_BIT_MODES:
        stored = np.asarray(image)
        values = stored.astype(np.float32)
        values /= np.float32(65535.0)
        levels = None
        if stored.size and 0 <= int(stored.min()) and int(stored.max()) <= 65535:  # mode "I" is 32-bit signed
            levels = Levels(stored.astype(np.uint16, copy=False), _UNIT_16)
        return np.clip(values, 0.0, 1.0, out=values), 16, levels
    grey = image if image.mode == "L" else image.convert("L")  # RGB(A), LA, P, CMYK ...: alpha dropped
    codes = np.asarray(grey)
    values = codes.astype(np.float32)
    values /= np.float32(255.0)
    return values, 8, Levels(codes, _UNIT_8)


# --------------------------------------------------------------------------------------------------- DICOM
_GREY_PHOTOMETRICS = ("MONOCHROME1", "MONOCHROME2")
_PHI_KEYWORDS = ("PatientName", "PatientID", "AccessionNumber", "PatientBirthDate")
# Names pydicom 3.0 does not know yet, so error messages can say what the UID is.
_EXTRA_UID_NAMES = {
    "1.2.840.10008.1.2.4.110": "JPEG XL Lossless",
    "1.2.840.10008.1.2.4.111": "JPEG XL JPEG Recompression",
    "1.2.840.10008.1.2.4.112": "JPEG XL",
}
# Header text reaches meta or a message only when it is a valid value of its VR (PS3.5 6.2): a corrupted
# length makes an element swallow its neighbours, PatientName included.
_VR_PATTERNS = {
    "CS": re.compile(r"[A-Z0-9 _]{1,16}"),
    "UI": re.compile(r"[0-9.]{1,64}"),
    "LO": re.compile(r"[^\\\x00-\x1f\x7f]{1,64}"),
}


_FLOAT_PIXEL_DATA = (
    ("FloatPixelData", "Float Pixel Data", "7FE0,0008"),
    ("DoubleFloatPixelData", "Double Float Pixel Data", "7FE0,0009"),
)


@dataclass(frozen=True)
class _Header:
    rows: int
    columns: int
    photometric: str  # a valid CS value, or "" when unreadable
    is_grey: bool


def _decode_dicom(data: bytes, max_pixels: int, min_side: int, allow_colour: bool) -> Radiograph:
    ds = _read_dataset(data)
    with _typed_errors(CorruptPixelDataError, "could not read the DICOM header"):
        header = _check_dicom_header(ds, max_pixels, min_side, allow_colour)
        transfer_syntax = _check_transfer_syntax(ds)
        redact = _redactor(ds)
    with _typed_errors(CorruptPixelDataError, "could not read the compressed frame's header"):
        _check_codestream_size(ds, header, transfer_syntax, max_pixels)
    with _typed_errors(CorruptPixelDataError, "could not decode the DICOM pixel data", redact):
        stored = ds.pixel_array
        # Grey: (H, W). Colour: (H, W, 3) samples, or (H, W) indices for PALETTE COLOR.
        allowed = [(header.rows, header.columns)]
        if not header.is_grey:
            allowed.insert(0, (header.rows, header.columns, 3))
        if stored.shape not in allowed:
            raise CorruptPixelDataError(f"expected a pixel array of shape {allowed[0]}, got {stored.shape}")
    with _typed_errors(CorruptPixelDataError, "could not apply the DICOM grey pipeline", redact):
        if header.is_grey:
            pixels, voi_source, levels = _grey_pipeline(stored, ds, header.photometric)
        else:
            pixels, voi_source, levels = _colour_to_grey(stored, ds, header.photometric), None, None
        meta = _dicom_meta(ds, header, transfer_syntax, voi_source)
    return Radiograph(pixels=pixels, meta=meta, levels=levels)


def _read_dataset(data: bytes) -> Dataset:
    """dcmread with force=True (files without file meta), with the transfer syntax filled in when absent."""
    with _typed_errors(CorruptPixelDataError, "could not parse the DICOM data set"):
        ds = pydicom.dcmread(BytesIO(data), force=True)
    # pydicom answers a data set cut short (EOF inside it) with an EMPTY data set plus a warning.
    if len(ds) == 0:
        raise CorruptPixelDataError(
            f"expected a DICOM data set after the file meta header, got none readable in {len(data)} bytes "
            "(truncated file?)"
        )
    if "TransferSyntaxUID" not in ds.file_meta:
        # No file meta (ACR-NEMA style): use the encoding pydicom detected while reading (usually implicit LE).
        implicit, little = ds.original_encoding
        if implicit:
            ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        else:
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian if little else ExplicitVRBigEndian
    return ds


def _check_dicom_header(ds: Dataset, max_pixels: int, min_side: int, allow_colour: bool) -> _Header:
    """Every check that the header alone can answer, before a single pixel is decoded."""
    if "PixelData" not in ds:
        floats = [f"{name} ({tag})" for keyword, name, tag in _FLOAT_PIXEL_DATA if keyword in ds]
        if floats:  # checked first: a float image has Rows too, but nothing is truncated
            raise UnsupportedPixelDataError(
                f"expected integer Pixel Data (7FE0,0010), got {' and '.join(floats)}: float pixels belong to "
                "parametric maps, not to projection radiographs"
            )
        if "Rows" in ds:  # an image header whose pixels are missing: a file cut short
            raise CorruptPixelDataError(
                "expected Pixel Data (7FE0,0010) for the image the header describes, got none (truncated file?)"
            )
        raise NotAnImageError(
            f"expected a DICOM image with Pixel Data (7FE0,0010), got a DICOM object without it ({_sop_class(ds)})"
        )
    rows, columns = _header_int(ds, "Rows"), _header_int(ds, "Columns")
    frames = _header_int(ds, "NumberOfFrames", default=1)
    if frames < 1:
        raise CorruptPixelDataError(f"expected NumberOfFrames >= 1, got {frames}")
    _check_size(columns, rows, max_pixels, min_side, frames)
    if frames > 1:
        raise MultiFrameError(f"expected a single-frame image, got {frames} frames")
    # Old ACR-NEMA files may omit these; pydicom needs them to decode. Absent means grey, one sample.
    if "SamplesPerPixel" not in ds:
        ds.SamplesPerPixel = 1
    if "PhotometricInterpretation" not in ds:
        ds.PhotometricInterpretation = "MONOCHROME2"
    samples = _header_int(ds, "SamplesPerPixel")
    photometric = _header_text(ds, "PhotometricInterpretation", "CS") or ""
    is_grey = samples == 1 and photometric in _GREY_PHOTOMETRICS
    if not is_grey and not allow_colour:
        raise ColourImageError(
            "expected a grey image (MONOCHROME1/2, 1 sample per pixel), "
            f"got {photometric or 'an unreadable Photometric Interpretation'} with {samples} samples per pixel"
        )
    return _Header(rows=rows, columns=columns, photometric=photometric, is_grey=is_grey)


def _sop_class(ds: Dataset) -> str:
    """The SOP Class for a message: the data set's, else the file meta's (a DICOMDIR carries it only there), with
    pydicom's name for it when it has one (a UID from its dictionary, never a header's free text)."""
    text = _header_text(ds, "SOPClassUID", "UI") or _header_text(ds.file_meta, "MediaStorageSOPClassUID", "UI")
    if text is None:
        return "SOP Class UID not given"
    name = UID(text).name
    return f"SOP Class UID {text}" + (f", {name}" if name != text else "")


def _check_transfer_syntax(ds: Dataset) -> str:
    """Fail with a clear 415 when no installed pydicom plugin can decode this transfer syntax."""
    text = _header_text(ds.file_meta, "TransferSyntaxUID", "UI")
    if text is None:
        raise UnsupportedTransferSyntaxError("expected a valid Transfer Syntax UID, got an unreadable one")
    uid = UID(text)
    name = _EXTRA_UID_NAMES.get(text, uid.name)
    try:
        decoder = get_decoder(uid)
    except NotImplementedError as exc:
        raise UnsupportedTransferSyntaxError(
            "expected a transfer syntax pydicom can decode (uncompressed, deflated, JPEG, JPEG-LS, JPEG 2000, "
            f"HTJ2K, RLE), got {uid} ({name})"
        ) from exc
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies)
        raise UnsupportedTransferSyntaxError(
            f"expected an installed decoder plugin for transfer syntax {uid} ({name}), got none ({missing})"
        )
    return text


# JPEG start-of-frame markers (ITU T.81 B.1.1.3; 0xF7 is JPEG-LS SOF55) and markers without a length field.
_JPEG_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7})
_JPEG_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD9)})
_J2K_SOC_SIZ = b"\xff\x4f\xff\x51"  # a JPEG 2000 / HTJ2K codestream starts with SOC, then SIZ
_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"


def _check_codestream_size(ds: Dataset, header: _Header, transfer_syntax: str, max_pixels: int) -> None:
    """A compressed frame must declare the size the header does, checked before decoding.

    The decoders size their buffers from the codestream, not from Rows/Columns: a 14 kB JPEG inside a 256x256
    header whose SOF declares 60000x60000 made pylibjpeg allocate 5.7 GB and work for 29 s before failing.
    """
    if not UID(transfer_syntax).is_encapsulated:
        return
    frame = next(generate_frames(ds.PixelData, number_of_frames=1), b"")
    size = _codestream_size(frame)
    if size is None or size == (header.columns, header.rows):
        return  # an unknown codestream (RLE, garbage) is the decoder's to refuse: it sizes those from the header
    width, height = size
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"expected at most {max_pixels} pixels, got a compressed frame declaring {width}x{height} = "
            f"{width * height} (the header says {header.columns}x{header.rows})"
        )
    raise CorruptPixelDataError(
        f"expected a compressed frame of {header.columns}x{header.rows} (Columns x Rows, as the header says), "
        f"got a codestream declaring {width}x{height}"
    )


def _codestream_size(frame: bytes) -> tuple[int, int] | None:
    """(width, height) a JPEG, JPEG-LS or JPEG 2000 frame declares in its own header; None when it declares none."""
    if frame.startswith(b"\xff\xd8"):
        return _jpeg_frame_size(frame)
    start = 0 if frame.startswith(_J2K_SOC_SIZ) else -1
    if frame.startswith(_JP2_SIGNATURE):  # a JP2 file where a bare codestream belongs: its codestream box holds one
        start = frame.find(_J2K_SOC_SIZ)
    if start < 0 or len(frame) < start + 24:
        return None
    # SOC(2) SIZ(2) Lsiz(2) Rsiz(2), then Xsiz, Ysiz, XOsiz, YOsiz (4 bytes each): the image is X/Ysiz - X/YOsiz
    xsiz, ysiz, x_offset, y_offset = struct.unpack_from(">IIII", frame, start + 8)
    return max(0, xsiz - x_offset), max(0, ysiz - y_offset)


def _jpeg_frame_size(frame: bytes) -> tuple[int, int] | None:
    """Walk the marker segments up to the first SOF; None if a scan (SOS) or the data ends first."""
    position = 2  # after SOI
    while position + 4 <= len(frame):
        if frame[position] != 0xFF:
            return None
        marker = frame[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
        elif marker in _JPEG_STANDALONE_MARKERS:
            position += 2
        elif marker == 0xDA:
            return None
        elif marker in _JPEG_SOF_MARKERS:
            if position + 9 > len(frame):
                return None
            height, width = struct.unpack_from(">HH", frame, position + 5)  # after length(2) and precision(1)
            return (width, height) if height else None  # height 0: a DNL marker sets it after the first scan
        else:
            position += 2 + struct.unpack_from(">H", frame, position + 2)[0]
    return None


MAX_LUT_CODES = 1 << 16  # integer films spanning at most this many stored values go through a lookup table


def _grey_pipeline(stored: np.ndarray, ds: Dataset, photometric: str) -> tuple[np.ndarray, str, Levels | None]:
    """Modality LUT -> VOI -> inversion, in float64; returns float32 in [0, 1], the VOI step used and the levels.

    Every step maps each stored value on its own, so for integer pixels the steps run once per distinct value of
    the film's range (at most MAX_LUT_CODES) and the film is one table lookup: the same float64 arithmetic on the
    same values, so the same float32 pixels, without float64 passes over millions of pixels.
    """
    if stored.dtype.kind in "iu" and stored.size:
        low, high = int(stored.min()), int(stored.max())
        if high - low < MAX_LUT_CODES:
            shifted = stored - stored.dtype.type(low) if low else stored  # wraps modulo 2**bits: still exact
            codes = shifted.view(np.uint16) if shifted.dtype.itemsize == 2 else shifted.astype(np.uint16)
            domain = np.arange(low, high + 1, dtype=np.int64).astype(stored.dtype)
            counts = None

            def present() -> np.ndarray:  # min-max VOI looks only at the values the film holds
                nonlocal counts
                counts = code_counts(codes, len(domain))
                return counts > 0

            table, voi_source = _grey_steps(domain, ds, photometric, present)
            levels = Levels(codes, table, counts)  # the percentiles reuse the counts when min-max made them
            return np.take(table, codes, mode="clip"), voi_source, levels
    pixels, voi_source = _grey_steps(stored, ds, photometric, None)
    return pixels, voi_source, None


def _grey_steps(
    stored: np.ndarray, ds: Dataset, photometric: str, present: Callable[[], np.ndarray] | None
) -> tuple[np.ndarray, str]:
    values = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
    unit, voi_source = _apply_voi(values, ds, present)
    if _display_inverted(ds, photometric):
        unit = 1.0 - unit
    return np.clip(unit, 0.0, 1.0).astype(np.float32), voi_source


def _apply_voi(
    values: np.ndarray, ds: Dataset, present: Callable[[], np.ndarray] | None = None
) -> tuple[np.ndarray, str]:
    """First usable of: VOI LUT Sequence, Window Center/Width, min-max. A malformed LUT or window falls
    through to the next step (the pixels are fine, only the display hint is broken); `voi_source` says
    which step ran."""
    if _has_voi_lut(ds):
        try:
            return _voi_lut(values, ds), "voi_lut_sequence"
        except _VOI_ERRORS:
            pass
    if "WindowCenter" in ds and "WindowWidth" in ds:
        try:
            return _window(values, ds), "window"
        except _VOI_ERRORS:
            pass
    return _minmax(values, present), "minmax"


_VOI_ERRORS = (ValueError, TypeError, ArithmeticError, LookupError, AttributeError, NotImplementedError, struct.error)


def _has_voi_lut(ds: Dataset) -> bool:
    sequence = ds.get("VOILUTSequence")
    return bool(sequence) and "LUTDescriptor" in sequence[0] and "LUTData" in sequence[0]


def _voi_lut(values: np.ndarray, ds: Dataset) -> np.ndarray:
    # LUT entries are indexed by integer values; rescaled output is float but integral in practice.
    indices = np.rint(values).astype(np.int64)
    out_bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])  # the LUT's output bit depth
    mapped = apply_voi(indices, ds, index=0)
    return mapped.astype(np.float64) / float(2**out_bits - 1)


def _window(values: np.ndarray, ds: Dataset) -> np.ndarray:
    with np.errstate(over="ignore"):  # SIGMOID: exp overflow is the intended saturation
        windowed = apply_windowing(values, ds, index=0)
        # Ask pydicom for the window's output range rather than re-deriving its rules (BitsStored, sign,
        # rescale): -inf maps to the low end, +inf to the high end, for LINEAR, LINEAR_EXACT and SIGMOID.
        low, high = apply_windowing(np.array([-np.inf, np.inf]), ds, index=0)
    if not np.isfinite([low, high]).all() or high == low:
        raise ValueError(f"window output range is degenerate: {low}..{high}")
    return (np.asarray(windowed, dtype=np.float64) - low) / (high - low)


def _minmax(values: np.ndarray, present: Callable[[], np.ndarray] | None = None) -> np.ndarray:
    """`present`: with a lookup table, a mask of the values the film holds (the range counts only those)."""
    seen = values if present is None else values[present()]
    low, high = float(seen.min()), float(seen.max())
    if high <= low:  # constant image: all zeros, no division by zero
        return np.zeros_like(values, dtype=np.float64)
    return (values - low) / (high - low)


def _display_inverted(ds: Dataset, photometric: str) -> bool:
    """True when the displayed image is the inverse of the VOI output.

    MONOCHROME1 means "minimum is white". Presentation LUT Shape INVERSE inverts once more for MONOCHROME2,
    but for MONOCHROME1 it is the standard's own way of stating that same inversion (the DX IOD requires
    INVERSE with MONOCHROME1, PS3.3 C.8.11.7), so it must not invert a second time.
    """
    inverse_shape = _header_text(ds, "PresentationLUTShape", "CS") == "INVERSE"
    return photometric == "MONOCHROME1" or inverse_shape


def _colour_to_grey(stored: np.ndarray, ds: Dataset, photometric: str) -> np.ndarray:
    """Colour DICOM (only when allowed): RGB (pydicom converts YBR to RGB) or palette -> luminance."""
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(stored, ds)
        bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
    else:
        rgb, bits = stored, int(ds.BitsStored)
    if rgb.ndim != 3 or rgb.shape[-1] < 3:
        raise CorruptPixelDataError(f"expected an (H, W, 3) colour array, got shape {rgb.shape}")
    rgb = rgb[..., :3].astype(np.float64) / float(2**bits - 1)
    grey = rgb @ np.array([0.299, 0.587, 0.114])  # ITU-R BT.601 luma, as Pillow's "L"
    return np.clip(grey, 0.0, 1.0).astype(np.float32)


def _dicom_meta(ds: Dataset, header: _Header, transfer_syntax: str, voi_source: str | None) -> ImageMeta:
    sop_uid = _header_text(ds, "SOPInstanceUID", "UI")
    bits = ds.get("BitsStored")
    return ImageMeta(
        format="dicom",
        width=header.columns,
        height=header.rows,
        bits_stored=int(bits) if isinstance(bits, int) else None,
        photometric=header.photometric or None,
        modality=_header_text(ds, "Modality", "CS"),
        view_position=_header_text(ds, "ViewPosition", "CS"),
        body_part=_header_text(ds, "BodyPartExamined", "CS"),
        transfer_syntax=transfer_syntax,
        manufacturer=_header_text(ds, "Manufacturer", "LO"),
        sop_instance_uid_hash=hashlib.sha256(sop_uid.encode()).hexdigest()[:16] if sop_uid else None,
        voi_source=voi_source,
    )


def _header_int(ds: Dataset, keyword: str, default: int | None = None) -> int:
    """An integer header value (US or IS); CorruptPixelDataError when it is missing or not one integer."""
    value = ds.get(keyword)
    if value is None and default is not None:
        return default
    if not isinstance(value, int) or isinstance(value, bool):
        raise CorruptPixelDataError(f"expected one integer {keyword}, got {type(value).__name__}")
    return int(value)


def _header_text(ds: Dataset, keyword: str, vr: str) -> str | None:
    """A header string if present and a valid `vr` value, else None (metadata never fails a decode)."""
    text = _raw_text(ds, keyword, "latin-1")
    return text if text is not None and _VR_PATTERNS[vr].fullmatch(text) else None


def _raw_text(ds: Dataset, keyword: str, encoding: str) -> str | None:
    """An element's value as text, from its raw bytes when pydicom has not converted it yet.

    Converting (ds.PatientName) runs pydicom's value validation, whose warnings, also sent to the "pydicom"
    log, quote some invalid values: reading the raw bytes keeps a swallowed PatientName out of every log line.
    """
    element = ds.get_item(keyword, keep_deferred=True)  # keep_deferred: never convert, even empty values
    value = getattr(element, "value", None)
    if isinstance(value, bytes):
        text = value.decode(encoding, "replace")
    elif value is None:
        return None
    else:
        text = str(value)
    return text.strip(" \x00") or None


def _redactor(ds: Dataset) -> Callable[[str], str]:
    """A function that blanks this data set's identifying values out of a (library) error message."""
    secrets: set[str] = set()
    for keyword in _PHI_KEYWORDS:
        for encoding in ("utf-8", "latin-1"):
            value = _raw_text(ds, keyword, encoding) or ""
            parts = value.replace("=", "^").replace("\\", "^").split("^")  # PN groups, components, values
            secrets.update(text for text in (value, *parts) if len(text) >= 3)

    def redact(message: str) -> str:
        for secret in sorted(secrets, key=len, reverse=True):
            message = message.replace(secret, "[redacted]")
        return message

    return redact
