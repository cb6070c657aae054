"""Decode + crop + resize to the model's side, per file: torchxrayvision's path vs a plain one vs this project's.

    python bench/decode_bench.py [--size 224] [--repeats 7] [--json out.json]

The three paths, on the same file and the same thread count (1 BLAS thread, as the server runs):
- torchxrayvision: `read_xray_dcm` (or skimage's imread + `xrv.datasets.normalize` for PNG/JPEG), `XRayCenterCrop`,
  `XRayResizer(size)` (what its README does before a model);
- plain: pydicom's pixel_array (or Pillow), min-max to [0, 1] in float32, a centre crop, Pillow's bilinear resize;
- this project: `decode_file` + `preprocess` with a crop spec of that size (the DICOM grey pipeline: Modality LUT,
  VOI, inversion; percentile normalisation, antialiased resize).
Median of `--repeats` after one warm-up; the ratio is torchxrayvision's time over this project's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.imaging import decode_file  # noqa: E402
from models.preprocessing import PreprocessSpec, preprocess  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
RADIOGRAPH_MODALITIES = ("CR", "DX")


def files(limit_png: int) -> list[Path]:
    """pydicom-data's RG1 films (uncompressed and JPEG 2000), the CR/DX films of ../shared/data/dicom, NIH PNGs and a
    JPEG made from one (written to a temporary folder, never committed)."""
    import pydicom
    from pydicom.data import get_testdata_file

    found = [Path(p) for name in ("RG1_UNCR.dcm", "RG1_J2KR.dcm", "RG3_UNCR.dcm") if (p := get_testdata_file(name))]
    for path in sorted((SHARED / "dicom").glob("*.dcm")):
        header = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        if header.get("Modality") in RADIOGRAPH_MODALITIES:
            found.append(path)
    pngs = sorted((SHARED / "nih1000").rglob("*.png"))[:limit_png]
    found += pngs
    if pngs:
        from PIL import Image

        jpeg = Path(tempfile.mkdtemp(prefix="decode-bench-")) / (pngs[0].stem + ".jpg")
        Image.open(pngs[0]).convert("L").save(jpeg, quality=95)
        found.append(jpeg)
    return found


def xrv_path(size: int) -> Callable[[Path], np.ndarray]:
    import skimage.io
    import torchxrayvision as xrv

    crop, resize = xrv.datasets.XRayCenterCrop(), xrv.datasets.XRayResizer(size, engine="skimage")

    def run(path: Path) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if path.suffix == ".dcm":
                image = xrv.utils.read_xray_dcm(path)
            else:
                image = xrv.datasets.normalize(skimage.io.imread(path), 255)
                if image.ndim == 3:
                    image = image.mean(axis=2)
            return resize(crop(image[None, ...]))

    return run


def plain_path(size: int) -> Callable[[Path], np.ndarray]:
    import pydicom
    from PIL import Image

    def run(path: Path) -> np.ndarray:
        if path.suffix == ".dcm":
            pixels = pydicom.dcmread(path, force=True).pixel_array.astype(np.float32)
        else:
            pixels = np.asarray(Image.open(path).convert("L"), dtype=np.float32)
        low, high = float(pixels.min()), float(pixels.max())
        pixels = (pixels - low) / max(high - low, 1e-6)
        side = min(pixels.shape)
        top, left = (pixels.shape[0] - side) // 2, (pixels.shape[1] - side) // 2
        square = Image.fromarray(pixels[top : top + side, left : left + side], mode="F")
        return np.asarray(square.resize((size, size), Image.BILINEAR))

    return run


def project_path(size: int) -> Callable[[Path], np.ndarray]:
    spec = PreprocessSpec(size=size, resize="crop", interpolation="area", normalisation="percentile")

    def run(path: Path) -> np.ndarray:
        return preprocess(decode_file(path), spec)

    return run


def median_ms(run: Callable[[Path], np.ndarray], path: Path, repeats: int) -> float:
    run(path)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(path)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(args: argparse.Namespace) -> dict:
    paths = {"torchxrayvision": xrv_path(args.size), "plain": plain_path(args.size), "project": project_path(args.size)}
    rows = []
    for path in files(args.png):
        times = {}
        for name, run in paths.items():  # interleaved per file, so drift on a shared machine hits all three alike
            try:
                times[name] = round(median_ms(run, path, args.repeats), 2)
            except Exception as error:  # noqa: BLE001 - a path that cannot read a file is reported, not fatal
                times[name] = None
                print(f"{path.name}: {name} failed: {type(error).__name__}: {error}", file=sys.stderr)
        ratio = times["torchxrayvision"] / times["project"] if times["torchxrayvision"] and times["project"] else None
        rows.append({"file": path.name, "ms": times, "xrv_over_project": round(ratio, 2) if ratio else None})
        print(
            f"{path.name:55s} "
            + "  ".join(f"{k} {v}" for k, v in times.items())
            + f"  ratio {rows[-1]['xrv_over_project']}"
        )
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "threads": 1,
        "size": args.size,
        "repeats": args.repeats,
        "files": rows,
    }


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--png", type=int, default=3, help="NIH PNG films to include")
    parser.add_argument("--json", type=Path)
    return parser


if __name__ == "__main__":
    arguments = get_args_parser().parse_args()
    report = main(arguments)
    if arguments.json:
        arguments.json.write_text(json.dumps(report, indent=2))
