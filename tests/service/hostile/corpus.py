"""A generated corpus of hostile uploads for POST /v1/predict: every case is built here from numpy, Pillow and pydicom
(seeded), so the repository holds no binary fixtures and each case says in code what is wrong with it.

`hostile_cases()` returns the corpus; each `Case` carries the bytes, the multipart file name and content type, and
what a correct server may answer besides a documented 4xx problem:
- `normal_ok`: why a plain, reliable 200 is legitimate (a valid film in an unusual but correct encoding);
- `must_score`: a valid film that must be scored (200): the control, and file names a server has no reason to refuse;
- `expect`: the one problem code that is right, where only one is (bombs, float pixels, JPEG XL, non-image objects).
Anything else that decodes must come back as a 200 whose reliability says why the findings should not be trusted.
"""

from __future__ import annotations

import struct
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.fileset import FileSet
from pydicom.pixels.utils import pack_bits
from pydicom.sequence import Sequence
from pydicom.uid import (
    HTJ2K,
    UID,
    ComputedRadiographyImageStorage,
    DeflatedExplicitVRLittleEndian,
    EncapsulatedPDFStorage,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RTStructureSetStorage,
    generate_uid,
)

from models.phantoms import make_phantom

# Fake identifying values written into every DICOM case: no answer may ever quote them.
FAKE_PHI = ("Hostile^Corpus", "HOSTILE-0001", "ACC-HOSTILE-42")
BASIC_TEXT_SR_STORAGE = UID("1.2.840.10008.5.1.4.1.1.88.11")
JPEG_XL_SYNTAXES = ("1.2.840.10008.1.2.4.110", "1.2.840.10008.1.2.4.111", "1.2.840.10008.1.2.4.112")
SIDE = 256  # the base film's side: small enough to score fast, large enough to look like a film


@dataclass(frozen=True)
class Case:
    name: str
    filename: str  # the multipart file name (any text: NUL, CR/LF, 5000 characters)
    content_type: str  # the multipart part's Content-Type, and the raw body's when `raw`
    data: bytes
    raw: bool = False  # also POST the bytes as a raw body with `content_type`
    normal_ok: str = ""  # non-empty: why a reliable 200 is a correct answer for this case
    must_score: bool = False  # a valid film: only a 200 is correct
    expect: str = ""  # the problem code this case must get, where only one answer is right


# ------------------------------------------------------------------------------------------------ base images
@cache
def _film(side: int = SIDE) -> np.ndarray:
    """A synthetic PA chest film, float in [0, 1] (the project's phantom: the same for every run)."""
    return np.clip(make_phantom(np.random.default_rng(15), size=side).pixels, 0.0, 1.0)


def _film_u8() -> np.ndarray:
    return (_film() * 255).round().astype(np.uint8)


def _film_u12() -> np.ndarray:
    return (_film() * 4095).round().astype(np.uint16)


def _save(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


@cache
def _png() -> bytes:
    return _save(Image.fromarray(_film_u8(), mode="L"), "PNG")


@cache
def _jpeg() -> bytes:
    return _save(Image.fromarray(_film_u8(), mode="L"), "JPEG", quality=90)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _zero_png(width: int, height: int) -> bytes:
    """A 1-bit all-black PNG of width x height, compressed row block by row block (never the whole raw image)."""
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    rows_per_block = 256
    parts = [compressor.compress(row * min(rows_per_block, height - i)) for i in range(0, height, rows_per_block)]
    idat = b"".join(parts) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit grey
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def _jpeg_with_sof_size(width: int, height: int) -> bytes:
    """The base JPEG with its SOF0 frame header claiming width x height (the scan data stays 256x256)."""
    data = bytearray(_jpeg())
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)  # FFC0, length(2), precision(1), then Y, X
    return bytes(data)


def _ycck_jpeg() -> bytes:
    """A CMYK JPEG whose Adobe APP14 marker says transform=2: decoders read the components as YCCK."""
    data = bytearray(_save(Image.fromarray(_film_u8(), mode="L").convert("CMYK"), "JPEG", quality=90))
    app14 = data.index(b"\xff\xee\x00\x0eAdobe")  # APP14, length 14, "Adobe"
    data[app14 + 15] = 2  # marker(2) length(2) "Adobe"(5) version(2) flags0(2) flags1(2) -> transform
    return bytes(data)


def _frames(count: int) -> list[Image.Image]:
    """The film, then shifted copies of it: an animation whose frames differ."""
    return [Image.fromarray(np.roll(_film_u8(), 16 * i, axis=1), mode="L") for i in range(count)]


# ------------------------------------------------------------------------------------------------------ DICOM
def _uid(*parts: str) -> UID:
    return generate_uid(entropy_srcs=["xray-hostile-corpus", *parts])


def _base_dataset(name: str, sop_class: str = ComputedRadiographyImageStorage) -> Dataset:
    """The header every DICOM case starts from: a CR chest study with fake identifying values."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = _uid(name, "sop")
    ds.StudyInstanceUID = _uid(name, "study")
    ds.SeriesInstanceUID = _uid(name, "series")
    ds.PatientName, ds.PatientID, ds.AccessionNumber = FAKE_PHI
    ds.PatientBirthDate = "19700101"
    ds.Modality = "CR"
    return ds


def _cr(name: str) -> Dataset:
    """A valid 12-bit MONOCHROME2 CR chest film (the phantom), which each case then breaks."""
    ds = _base_dataset(name)
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.set_pixel_data(_film_u12(), photometric_interpretation="MONOCHROME2", bits_stored=12)
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    return ds


def _dicom(ds: Dataset) -> bytes:
    """Part 10 bytes (preamble, DICM, file meta) in the data set's transfer syntax."""
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _native_pixels(ds: Dataset, pixels: np.ndarray, bits_allocated: int, bits_stored: int) -> Dataset:
    """Set native pixel data of any width by hand (pydicom's set_pixel_data writes only 8 and 16 bits)."""
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits_allocated, bits_stored, bits_stored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()
    ds["PixelData"].VR = "OB" if bits_allocated == 1 else "OW"
    return _without(ds, "WindowCenter", "WindowWidth")  # the 12-bit window would not fit: min-max VOI


def _without(ds: Dataset, *keywords: str) -> Dataset:
    for keyword in keywords:
        if keyword in ds:
            delattr(ds, keyword)
    return ds


def _float_film(double: bool) -> bytes:
    """A Float (or Double Float) Pixel Data image, BitsAllocated 32/64 and no integer Pixel Data: a parametric map."""
    ds = _base_dataset("float" if not double else "double")
    ds.Rows, ds.Columns = SIDE, SIDE
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = 64 if double else 32
    values = _film().astype("<f8" if double else "<f4")
    if double:
        ds.DoubleFloatPixelData = values.tobytes()
    else:
        ds.FloatPixelData = values.tobytes()
    return _dicom(ds)


def _encapsulated(name: str, syntax: str, frames: list[bytes], eight_bit: bool = False) -> bytes:
    """A CR header (12 bits stored, or 8 for JPEG baseline) with encapsulated Pixel Data in `syntax`.

    pydicom refuses to write a transfer syntax it does not know (JPEG XL), so such a file is written as HTJ2K, whose
    UID has the same length, and the UID in the file meta is then replaced: no length or group length changes.
    """
    ds = _cr(name)
    if eight_bit:
        ds.set_pixel_data(_film_u8(), photometric_interpretation="MONOCHROME2", bits_stored=8)
        _without(ds, "WindowCenter", "WindowWidth")
    known = syntax not in JPEG_XL_SYNTAXES
    ds.file_meta.TransferSyntaxUID = UID(syntax) if known else HTJ2KLossless
    ds.PixelData = encapsulate(frames)
    ds["PixelData"].VR = "OB"
    data = _dicom(ds)
    if known:
        return data
    written = str(HTJ2KLossless).encode() + b"\x00"
    wanted = syntax.encode() + (b"\x00" if len(syntax) % 2 else b"")
    if len(wanted) != len(written):
        raise ValueError(f"expected a transfer syntax UID of {len(written)} bytes padded, got {syntax}")
    return data.replace(written, wanted, 1)


def _j2k_codestream(width: int | None = None, height: int | None = None) -> bytes:
    """A real lossless JPEG 2000 (Part 1) codestream of the film (HTJ2K decoders read Part 1 codestreams too),
    optionally with its SIZ marker claiming another image and tile size (the tile data stays the film's)."""
    ds = _cr("j2k")
    ds.compress(JPEG2000Lossless)
    codestream = bytearray(pydicom.encaps.get_frame(ds.PixelData, 0))
    if width is not None and height is not None:
        # SOC(2) SIZ(2) Lsiz(2) Rsiz(2), then Xsiz Ysiz XOsiz YOsiz XTsiz YTsiz (4 bytes each)
        struct.pack_into(">IIIIII", codestream, 8, width, height, 0, 0, width, height)
    return bytes(codestream)


def _sr() -> bytes:
    """A Basic Text SR: a report, no pixels."""
    ds = _base_dataset("sr", BASIC_TEXT_SR_STORAGE)
    ds.Modality = "SR"
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    concept = Dataset()
    concept.CodeValue, concept.CodingSchemeDesignator = "18748-4", "LN"
    concept.CodeMeaning = "Diagnostic Imaging Report"
    ds.ConceptNameCodeSequence = Sequence([concept])
    item = Dataset()
    item.RelationshipType, item.ValueType, item.TextValue = "CONTAINS", "TEXT", "No acute findings."
    ds.ContentSequence = Sequence([item])
    return _dicom(ds)


def _rtstruct() -> bytes:
    """An RT Structure Set: contours in patient space, no pixels."""
    ds = _base_dataset("rtstruct", RTStructureSetStorage)
    ds.Modality = "RTSTRUCT"
    ds.StructureSetLabel = "LUNGS"
    roi = Dataset()
    roi.ROINumber, roi.ROIName, roi.ReferencedFrameOfReferenceUID = 1, "Lung_L", _uid("rtstruct", "frame")
    ds.StructureSetROISequence = Sequence([roi])
    contour = Dataset()
    contour.ContourGeometricType, contour.NumberOfContourPoints = "CLOSED_PLANAR", 3
    contour.ContourData = [0.0, 0.0, 0.0, 10.0, 0.0, 0.0, 0.0, 10.0, 0.0]
    roi_contour = Dataset()
    roi_contour.ReferencedROINumber = 1
    roi_contour.ContourSequence = Sequence([contour])
    ds.ROIContourSequence = Sequence([roi_contour])
    return _dicom(ds)


def _encapsulated_pdf() -> bytes:
    ds = _base_dataset("pdf", EncapsulatedPDFStorage)
    ds.Modality = "DOC"
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.DocumentTitle = "report"
    ds.BurnedInAnnotation = "YES"
    ds.EncapsulatedDocument = _pdf()
    return _dicom(ds)


def _dicomdir() -> bytes:
    """A real DICOMDIR (Media Storage Directory) that indexes one CR film, written by pydicom's FileSet."""
    with tempfile.TemporaryDirectory(prefix="xray-hostile-") as folder:
        instance = _cr("dicomdir-member")  # FileSet needs the study and series attributes its records carry
        instance.StudyDate, instance.StudyTime, instance.StudyID = "20240101", "120000", "1"
        instance.SeriesNumber, instance.InstanceNumber = 1, 1
        path = Path(folder) / "member.dcm"
        instance.save_as(path, enforce_file_format=True)
        file_set = FileSet()
        file_set.add(path)
        file_set.write(Path(folder) / "fs")
        return (Path(folder) / "fs" / "DICOMDIR").read_bytes()


def _pdf() -> bytes:
    return _save(Image.fromarray(_film_u8(), mode="L"), "PDF")


def _multipart_names() -> list[tuple[str, str, bool]]:
    """Hostile multipart file names: (case suffix, name, whether the film must still be scored).

    A 5000-character part header may be refused as invalid multipart (a documented 400). The CR/LF injection ends the
    part's headers early, so the part's content really starts with the injected `<script>`: a 415 is the right answer.
    """
    return [
        ("unicode", "Thorax_ПА_胸部_🩻_\u202egnp.exe.png", True),  # Cyrillic, CJK, emoji, a right-to-left override
        ("nul", "film\x00.dcm.png", True),
        ("path_traversal", "../../../../etc/passwd.png", True),
        ("5000_chars", "a" * 4996 + ".png", False),
        ("crlf_injection", 'film.png"\r\nContent-Type: text/html\r\n\r\n<script>alert(1)</script>', False),
    ]


# ------------------------------------------------------------------------------------------------------ cases
def _truncations(prefix: str, data: bytes, offsets: list[int], filename: str, content_type: str) -> list[Case]:
    return [
        Case(f"{prefix}_truncated_at_{offset}", filename, content_type, data[:offset])
        for offset in sorted(set(offsets))
        if 0 < offset < len(data)
    ]


def _dicom_truncation_offsets(data: bytes) -> list[int]:
    """In the preamble, right after DICM, inside the file meta, inside the data set, at and inside Pixel Data."""
    pixel_tag = data.rindex(b"\xe0\x7f\x10\x00")  # (7FE0,0010) in little endian
    return [100, 132, 140, 300, pixel_tag - 2, pixel_tag + 6, pixel_tag + 200, len(data) - 1]


def _bits_cases() -> list[Case]:
    """BitsAllocated 1, 12, 32, 64: honest encodings where DICOM allows them, and headers that lie about the data."""
    film = _film()
    binary = _native_pixels(_cr("b1"), np.zeros((SIDE, SIDE), np.uint8), 1, 1)
    binary.PixelData = pack_bits((film > np.median(film)).astype(np.uint8))  # 8 pixels a byte
    lie_1, lie_12, lie_32 = _cr("b1lie"), _cr("b12"), _cr("b32lie")
    lie_1.BitsAllocated, lie_1.BitsStored, lie_1.HighBit = 1, 1, 0  # 16 bits a pixel follow
    lie_12.BitsAllocated = 12  # a 12-bit allocation exists only inside compressed syntaxes
    lie_32.BitsAllocated, lie_32.BitsStored, lie_32.HighBit = 32, 32, 31  # half the bytes it needs
    datasets = {
        "bits_allocated_1_binary_film": binary,
        "bits_allocated_1_header_over_16_bit_data": lie_1,
        "bits_allocated_12_native": lie_12,
        "bits_allocated_32_film": _native_pixels(_cr("b32"), (film * (2**32 - 1)).astype("<u4"), 32, 32),
        "bits_allocated_32_header_over_16_bit_data": lie_32,
        "bits_allocated_64_film": _native_pixels(_cr("b64"), (film * 2.0**40).astype("<u8"), 64, 64),
    }
    honest = {
        "bits_allocated_32_film": "32-bit unsigned native pixels are valid DICOM; min-max VOI shows the film",
        "bits_allocated_64_film": "64-bit unsigned native pixels are valid DICOM; min-max VOI shows the film",
    }
    return [
        Case(f"dicom_{name}", f"{name}.dcm", "application/dicom", _dicom(ds), normal_ok=honest.get(name, ""))
        for name, ds in datasets.items()
    ]


def _lying_size(rows: int, columns: int, vr: str) -> bytes:
    ds = _cr(f"size{rows}")
    del ds.Rows, ds.Columns
    ds.add_new(0x00280010, vr, rows)  # Rows is US; UL lets the header carry 100000 (a decoder must not trust it)
    ds.add_new(0x00280011, vr, columns)
    return _dicom(ds)


def _signed(lie: bool) -> bytes:
    if lie:  # unsigned 16-bit data whose header says two's complement: bright pixels wrap to very negative values
        ds = _cr("signedlie")
        ds.set_pixel_data((_film() * 65535).astype(np.uint16), "MONOCHROME2", 16)
        ds.PixelRepresentation = 1
        ds.WindowCenter, ds.WindowWidth = 32768, 65536
        return _dicom(ds)
    ds = _cr("signed")
    ds.set_pixel_data((_film() * 4095 - 2048).round().astype(np.int16), "MONOCHROME2", 12)
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 2048, 1, "US"
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    return _dicom(ds)


def _multi_frame() -> bytes:
    ds = _cr("multiframe")
    frames = np.stack([_film_u12(), _film_u12()[::-1], _film_u12()[:, ::-1]])
    ds.set_pixel_data(frames, "MONOCHROME2", 12)
    ds.NumberOfFrames = 3
    return _dicom(ds)


def _deflated() -> bytes:
    ds = _cr("deflated")
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    return _dicom(ds)


def _without_pixels(image_header: bool) -> bytes:
    ds = _cr("nopixels")
    del ds.PixelData
    if not image_header:
        _without(ds, "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation")
        _without(ds, "SamplesPerPixel", "PhotometricInterpretation", "WindowCenter", "WindowWidth")
    return _dicom(ds)


def _text_cases() -> list[Case]:
    html = b"<!doctype html><html><body><img src=x onerror=alert(1)><h1>chest</h1></body></html>"
    svg = (
        b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="99999" height="99999">'
        b"<script>alert(document.cookie)</script><rect width='100%' height='100%'/></svg>"
    )
    script = b"<script>fetch('/v1/models').then(r => r.text()).then(alert)</script>"
    return [
        Case("html_named_png", "film.png", "image/png", html, raw=True),
        Case("svg_named_png", "film.png", "image/png", svg, raw=True),
        Case("script_named_png", "film.png", "image/png", script, raw=True),
    ]


def hostile_cases() -> list[Case]:
    """The whole corpus, in a stable order (names are unique)."""
    rng = np.random.default_rng(20240615)
    png, jpeg = _png(), _jpeg()
    cr = _dicom(_cr("truncation"))
    builders: list[Callable[[], list[Case]]] = [
        lambda: [
            Case("control_valid_png", "film.png", "image/png", png, raw=True, must_score=True),
            Case("empty_body", "empty.png", "image/png", b"", raw=True, expect="empty_input"),
            Case("random_bytes", "noise.bin", "application/octet-stream", rng.bytes(4096), raw=True),
            Case("random_bytes_after_png_signature", "x.png", "image/png", png[:8] + rng.bytes(4096), raw=True),
            Case("random_bytes_after_dicm", "x.dcm", "application/dicom", bytes(128) + b"DICM" + rng.bytes(4096)),
            Case(
                "png_bytes_declared_dicom",
                "film.dcm",
                "application/dicom",
                png,
                raw=True,
                normal_ok="a multipart part's Content-Type is not checked (browsers guess it), so the control film "
                "is scored; as a raw application/dicom body the bytes contradict the header: 415",
            ),
        ],
        lambda: _truncations(
            "png", png, [4, 8, 20, 33, 50, len(png) // 4, len(png) // 2, len(png) - 200], "t.png", "image/png"
        ),
        lambda: [
            Case(
                "png_without_its_last_20_bytes",
                "t.png",
                "image/png",
                png[:-20],
                normal_ok="only IEND, the IDAT CRC and the zlib checksum are cut: every pixel is there",
            ),
        ],
        lambda: _truncations("jpeg", jpeg, [2, 3, 20, 150, len(jpeg) // 2, len(jpeg) - 40], "t.jpg", "image/jpeg"),
        lambda: _truncations("dicom", cr, _dicom_truncation_offsets(cr), "t.dcm", "application/dicom"),
        lambda: [
            Case(
                "dicom_rows_columns_100000_as_ul",
                "big.dcm",
                "application/dicom",
                _lying_size(100000, 100000, "UL"),
                raw=True,
                expect="image_too_large",
            ),
            Case(
                "dicom_rows_columns_65535",
                "big.dcm",
                "application/dicom",
                _lying_size(65535, 65535, "US"),
                expect="image_too_large",
            ),
        ],
        _bits_cases,
        lambda: [
            Case(
                "dicom_signed_pixels",
                "signed.dcm",
                "application/dicom",
                _signed(lie=False),
                normal_ok="a valid two's complement CR film whose Modality LUT restores the stored range",
            ),
            Case("dicom_signed_header_over_unsigned_data", "signedlie.dcm", "application/dicom", _signed(lie=True)),
            Case(
                "dicom_float_pixel_data",
                "float.dcm",
                "application/dicom",
                _float_film(double=False),
                expect="unsupported_pixel_data",
            ),
            Case(
                "dicom_double_float_pixel_data",
                "double.dcm",
                "application/dicom",
                _float_film(double=True),
                expect="unsupported_pixel_data",
            ),
        ],
        lambda: [
            Case(
                "png_bomb_30000x30000",
                "bomb.png",
                "image/png",
                _zero_png(30000, 30000),
                raw=True,
                expect="image_too_large",
            ),
            Case("png_bomb_7000x7000_under_the_pixel_limit", "bomb.png", "image/png", _zero_png(7000, 7000)),
            Case(
                "jpeg_sof_65000x65000",
                "huge.jpg",
                "image/jpeg",
                _jpeg_with_sof_size(65000, 65000),
                raw=True,
                expect="image_too_large",
            ),
            Case(
                "png_16_bit_constant",
                "flat.png",
                "image/png",
                _save(Image.fromarray(np.full((SIDE, SIDE), 1234, np.uint16)), "PNG"),
            ),
            Case(
                "jpeg_cmyk",
                "cmyk.jpg",
                "image/jpeg",
                _save(Image.fromarray(_film_u8(), mode="L").convert("CMYK"), "JPEG", quality=90),
                normal_ok="the film itself, stored as CMYK; Pillow converts it back to its grey (JPEG loss aside)",
            ),
            Case(
                "jpeg_ycck_adobe_transform_2",
                "ycck.jpg",
                "image/jpeg",
                _ycck_jpeg(),
                normal_ok="the K plane still carries the film (r > 0.99): the YCC planes only darken it, and the "
                "per-image percentile normalisation undoes that",
            ),
            Case(
                "png_animated_apng",
                "anim.png",
                "image/png",
                _save(_frames(3)[0], "PNG", save_all=True, append_images=_frames(3)[1:], duration=100, loop=0),
                normal_ok="an APNG's default image is the film itself, which is what a PNG reader shows",
            ),
            Case(
                "gif_animated",
                "anim.gif",
                "image/gif",
                _save(_frames(3)[0], "GIF", save_all=True, append_images=_frames(3)[1:], duration=100, loop=0),
                raw=True,
            ),
            Case("tiff", "film.tif", "image/tiff", _save(Image.fromarray(_film_u8(), mode="L"), "TIFF"), raw=True),
            Case("pdf", "film.pdf", "application/pdf", _pdf(), raw=True),
        ],
        _text_cases,
        lambda: [
            Case("dicom_image_header_without_pixel_data", "nopix.dcm", "application/dicom", _without_pixels(True)),
            Case(
                "dicom_without_pixel_data",
                "nopix.dcm",
                "application/dicom",
                _without_pixels(False),
                expect="not_an_image",
            ),
            Case("dicom_sr", "report.dcm", "application/dicom", _sr(), raw=True, expect="not_an_image"),
            Case("dicom_rtstruct", "rtstruct.dcm", "application/dicom", _rtstruct(), expect="not_an_image"),
            Case("dicom_encapsulated_pdf", "doc.dcm", "application/dicom", _encapsulated_pdf(), expect="not_an_image"),
            Case("dicom_multi_frame", "multi.dcm", "application/dicom", _multi_frame(), expect="multi_frame"),
            Case("dicomdir", "DICOMDIR", "application/dicom", _dicomdir(), expect="not_an_image"),
        ],
        lambda: [
            Case(
                f"dicom_jpeg_xl_{uid.rsplit('.', 1)[1]}",
                "jxl.dcm",
                "application/dicom",
                _encapsulated(f"jxl{uid}", uid, [b"\xff\x0a" + rng.bytes(512)]),
                expect="unsupported_transfer_syntax",
            )
            for uid in JPEG_XL_SYNTAXES
        ],
        lambda: [
            Case(
                "dicom_htj2k_201_part1_codestream",
                "htj2k.dcm",
                "application/dicom",
                _encapsulated("htj2k201", HTJ2KLossless, [_j2k_codestream()]),
                normal_ok="a real lossless codestream of the film; OpenJPEG decodes it under the HTJ2K syntax",
            ),
            Case(
                "dicom_htj2k_202_garbage",
                "htj2k.dcm",
                "application/dicom",
                _encapsulated("htj2k202", HTJ2KLosslessRPCL, [b"\xff\x4f\xff\x51" + rng.bytes(512)]),
            ),
            Case(
                "dicom_htj2k_203_valid_siz_then_garbage",
                "htj2k.dcm",
                "application/dicom",
                _encapsulated("htj2k203", HTJ2K, [_j2k_codestream()[:51] + rng.bytes(512)]),  # a true SIZ, then noise
            ),
            Case(
                "dicom_jpeg_baseline_frame_declares_60000x60000",
                "jpegbomb.dcm",
                "application/dicom",
                _encapsulated("jpegbomb", JPEGBaseline8Bit, [_jpeg_with_sof_size(60000, 60000)], eight_bit=True),
                expect="image_too_large",
            ),
            Case(
                "dicom_jpeg_baseline_frame_declares_128x512",
                "jpegshape.dcm",
                "application/dicom",
                _encapsulated("jpegshape", JPEGBaseline8Bit, [_jpeg_with_sof_size(128, 512)], eight_bit=True),
                expect="corrupt_pixel_data",
            ),
            Case(
                "dicom_j2k_frame_declares_60000x60000",
                "j2kbomb.dcm",
                "application/dicom",
                _encapsulated("j2kbomb", JPEG2000Lossless, [_j2k_codestream(60000, 60000)]),
                expect="image_too_large",
            ),
            Case(
                "dicom_deflated_explicit_vr_le",
                "deflated.dcm",
                "application/dicom",
                _deflated(),
                raw=True,
                normal_ok="a valid CR film in a valid (deflated) transfer syntax: the pixels are the control film's",
            ),
        ],
        lambda: [
            Case(
                f"filename_{suffix}",
                name,
                "image/png",
                png,
                must_score=must_score,
                normal_ok="the file is the control film; only its multipart file name is hostile",
            )
            for suffix, name, must_score in _multipart_names()
        ],
    ]
    cases = [case for build in builders for case in build()]
    names = [case.name for case in cases]
    assert len(names) == len(set(names)), "case names must be unique"
    return cases
