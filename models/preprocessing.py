"""Radiograph -> model input: one numpy-only path shared by training, export, serving and batch scoring.

`PreprocessSpec` records every choice (size, resize policy, interpolation, intensity normalisation) and travels with
the model (checkpoint, ONNX manifest), so the service feeds a model exactly what it saw in training.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    from models.imaging import Levels

ResizePolicy = Literal["letterbox", "crop", "stretch"]
Interpolation = Literal["area", "bilinear"]
Normalisation = Literal["percentile", "minmax", "histeq", "none"]

_RESIZE_POLICIES = ("letterbox", "crop", "stretch")
_INTERPOLATIONS = ("area", "bilinear")
_NORMALISATIONS = ("percentile", "minmax", "histeq", "none")


@dataclass(frozen=True)
class PreprocessSpec:
    """How a decoded radiograph becomes a model input `float32 [1, size, size]`.

    - `resize`: "letterbox" keeps the whole image and pads the short side with `pad_value`; "crop" fills the square
      and cuts the long side centrally; "stretch" ignores the aspect ratio.
    - `interpolation`: "area" (box filter, antialiased; right for large downsampling factors) or "bilinear"
      (triangle filter, antialiased when downsampling).
    - `normalisation`: per-image intensity normalisation so films from other scanners/exposures look alike:
      "percentile" maps the [p_low, p_high] percentiles to [0, 1] and clips; "minmax" stretches to [0, 1];
      "histeq" equalises the histogram; "none" keeps the decoder's [0, 1] values.
    - `mean`/`std`: applied last, `(x - mean) / std`.
    """

    size: int = 224
    resize: ResizePolicy = "letterbox"
    interpolation: Interpolation = "area"
    normalisation: Normalisation = "percentile"
    percentiles: tuple[float, float] = (1.0, 99.0)
    pad_value: float = 0.0
    mean: float = 0.5
    std: float = 0.25
    version: int = field(default=1)

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or self.size < 8:
            raise ValueError(f"expected size to be an int >= 8, got {self.size!r}")
        if self.resize not in _RESIZE_POLICIES:
            raise ValueError(f"expected resize in {_RESIZE_POLICIES}, got {self.resize!r}")
        if self.interpolation not in _INTERPOLATIONS:
            raise ValueError(f"expected interpolation in {_INTERPOLATIONS}, got {self.interpolation!r}")
        if self.normalisation not in _NORMALISATIONS:
            raise ValueError(f"expected normalisation in {_NORMALISATIONS}, got {self.normalisation!r}")
        low, high = self.percentiles
        if not 0.0 <= low < high <= 100.0:
            raise ValueError(f"expected percentiles 0 <= low < high <= 100, got {self.percentiles!r}")
        if self.std <= 0:
            raise ValueError(f"expected std > 0, got {self.std!r}")
        object.__setattr__(self, "percentiles", (float(low), float(high)))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["percentiles"] = list(self.percentiles)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessSpec:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown PreprocessSpec fields {sorted(unknown)}; expected a subset of {sorted(known)}")
        values = dict(data)
        if "percentiles" in values:
            values["percentiles"] = tuple(values["percentiles"])
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> PreprocessSpec:
        return cls.from_dict(json.loads(text))


def preprocess(image: Any, spec: PreprocessSpec) -> np.ndarray:
    """A `Radiograph` (or a grey float array in [0, 1]) -> `float32 [1, size, size]`, exactly as in training."""
    pixels = np.asarray(getattr(image, "pixels", image))
    if pixels.ndim != 2:
        raise ValueError(f"expected a 2-D grey image, got shape {pixels.shape}")
    if pixels.shape[0] < 2 or pixels.shape[1] < 2:
        raise ValueError(f"expected an image of at least 2x2 pixels, got {pixels.shape[1]}x{pixels.shape[0]}")
    x = pixels.astype(np.float32, copy=False)
    x = normalise_intensity(x, spec, getattr(image, "levels", None))
    x = resize_square(x, spec)
    x = (x - np.float32(spec.mean)) / np.float32(spec.std)
    return x[np.newaxis].astype(np.float32, copy=False)  # (1, S, S)


def normalise_intensity(x: np.ndarray, spec: PreprocessSpec, levels: Levels | None = None) -> np.ndarray:
    """Per-image intensity normalisation to [0, 1] (before resizing, so padding stays at `pad_value`). With the
    film's levels (integer codes and their values), percentiles come from a histogram of the codes."""
    if spec.normalisation == "none":
        return np.clip(x, 0.0, 1.0)
    if spec.normalisation == "histeq":
        return _equalise_histogram(x)
    if spec.normalisation == "minmax":
        low, high = float(x.min()), float(x.max())
    elif levels is not None and levels.codes.shape == x.shape:
        low, high = levels_percentiles(levels, spec.percentiles)
    else:
        low, high = (float(v) for v in np.percentile(x, spec.percentiles))
    if high - low < 1e-8:
        return np.zeros_like(x)
    out = x - np.float32(low)  # a new array: the film's pixels stay as decoded
    out /= np.float32(high - low)
    return np.clip(out, 0.0, 1.0, out=out)


def levels_percentiles(levels: Levels, percentiles: tuple[float, ...]) -> tuple[float, ...]:
    """`np.percentile(pixels, percentiles)` (its default, linear method) from the codes' histogram: the order
    statistics are found in the values sorted with their counts, so no pass sorts the film's pixels."""
    counts = levels.counts
    order = np.argsort(levels.values, kind="stable")
    held = counts[order] > 0
    values = levels.values[order][held].astype(np.float64)
    ends = np.cumsum(counts[order][held])  # ends[i]: how many pixels are <= values[i]
    n = int(ends[-1])
    found = []
    for q in percentiles:
        rank = q / 100.0 * (n - 1)
        below = int(np.floor(rank))
        weight = rank - below
        a = values[np.searchsorted(ends, below, side="right")]
        b = values[np.searchsorted(ends, min(below + 1, n - 1), side="right")]
        found.append(float(b - (b - a) * (1.0 - weight) if weight >= 0.5 else a + (b - a) * weight))  # numpy's lerp
    return tuple(found)


def _equalise_histogram(x: np.ndarray, bins: int = 1024) -> np.ndarray:
    levels = np.clip((x * (bins - 1)).round().astype(np.int64), 0, bins - 1)
    cdf = np.cumsum(np.bincount(levels.ravel(), minlength=bins)).astype(np.float64)
    span = cdf[-1] - cdf[0]
    if span <= 0:
        return np.zeros_like(x)
    lut = ((cdf - cdf[0]) / span).astype(np.float32)
    return lut[levels]


def resize_square(x: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Bring an (H, W) image to (size, size) following the spec's policy and interpolation."""
    h, w = x.shape
    size = spec.size
    if spec.resize == "stretch":
        return resample(x, size, size, spec.interpolation)
    if spec.resize == "crop":
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        return resample(x[top : top + side, left : left + side], size, size, spec.interpolation)
    # letterbox: fit the long side, pad the short side symmetrically
    scale = size / max(h, w)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    resized = resample(x, new_h, new_w, spec.interpolation)
    out = np.full((size, size), np.float32(spec.pad_value), dtype=np.float32)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    out[top : top + new_h, left : left + new_w] = resized
    return out


def resample(x: np.ndarray, out_h: int, out_w: int, interpolation: Interpolation) -> np.ndarray:
    """Separable resampling, out = Wy @ x @ Wx.T (antialiased, like Pillow's filters). Each output row mixes a short
    band of input rows, so the products run over the bands: a few weighted sums of row blocks instead of dense
    matrix products whose cost grows with the square of the film's side (same sums, float32 rounding apart)."""
    if x.shape == (out_h, out_w):
        return x.astype(np.float32, copy=True)
    x = x.astype(np.float32, copy=False)
    rows = _banded_product(_band(x.shape[0], out_h, interpolation), x)  # (out_h, W)
    columns = _banded_product(_band(x.shape[1], out_w, interpolation), np.ascontiguousarray(rows.T))  # (out_w, out_h)
    return np.ascontiguousarray(columns.T)


def _banded_product(band: tuple[np.ndarray, np.ndarray], x: np.ndarray) -> np.ndarray:
    """W @ x for a banded W given as (first input row of each output row, the band's weights)."""
    starts, weights = band
    out = np.zeros((len(starts), x.shape[1]), dtype=np.float32)
    for k in range(weights.shape[1]):
        out += weights[:, k : k + 1] * x[starts + k]
    return out


@lru_cache(maxsize=64)
def _band(n_in: int, n_out: int, interpolation: Interpolation) -> tuple[np.ndarray, np.ndarray]:
    """The non-zero band of `_weights`: each row's first column and the band's weights (zeros where it is shorter)."""
    dense = _weights(n_in, n_out, interpolation)
    nonzero = dense != 0
    first = nonzero.argmax(axis=1)
    last = n_in - 1 - nonzero[:, ::-1].argmax(axis=1)
    width = int((last - first).max()) + 1
    starts = np.minimum(first, n_in - width)
    weights = np.take_along_axis(dense, starts[:, np.newaxis] + np.arange(width)[np.newaxis, :], axis=1)
    return starts, np.ascontiguousarray(weights)


@lru_cache(maxsize=64)
def _weights(n_in: int, n_out: int, interpolation: Interpolation) -> np.ndarray:
    """(n_out, n_in) resampling matrix whose rows sum to 1; cached because sizes repeat across images."""
    scale = n_in / n_out
    support = max(scale, 1.0)  # widen the filter when downsampling (antialiasing)
    centres = (np.arange(n_out, dtype=np.float64) + 0.5) * scale  # output pixel centres in input coordinates
    src = np.arange(n_in, dtype=np.float64) + 0.5
    distance = (src[np.newaxis, :] - centres[:, np.newaxis]) / support
    if interpolation == "area":
        # box filter: overlap of the output pixel's footprint with each input pixel
        half = 0.5 * scale if scale > 1 else 0.5
        lo = np.maximum(src[np.newaxis, :] - 0.5, centres[:, np.newaxis] - half)
        hi = np.minimum(src[np.newaxis, :] + 0.5, centres[:, np.newaxis] + half)
        weights = np.clip(hi - lo, 0.0, None)
    else:
        weights = np.clip(1.0 - np.abs(distance), 0.0, None)
    sums = weights.sum(axis=1, keepdims=True)
    sums[sums == 0] = 1.0
    result = (weights / sums).astype(np.float32)
    result.setflags(write=False)
    return result


def map_to_image(
    square: np.ndarray, height: int, width: int, spec: PreprocessSpec, out_shape: tuple[int, int] | None = None
) -> np.ndarray:
    """Undo `resize_square`'s geometry for a map over the model input (e.g. an upsampled CAM).

    `square` is (s, s) over the model's (size, size) input at any resolution s; `height` x `width` is the image the
    model saw. Returns the map over that image, resampled to `out_shape` (default: (height, width)), for example a
    display-sized copy of the film. Regions the model never saw (cut off by "crop") are NaN.
    """
    square = np.asarray(square, dtype=np.float32)
    if square.ndim != 2 or square.shape[0] != square.shape[1]:
        raise ValueError(f"expected a square 2-D map, got shape {square.shape}")
    out_h, out_w = out_shape or (height, width)
    if spec.resize == "stretch":
        return resample(square, out_h, out_w, "bilinear")
    if spec.resize == "crop":
        side = min(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        scale_y, scale_x = out_h / height, out_w / width
        y0, y1 = round(top * scale_y), round((top + side) * scale_y)
        x0, x1 = round(left * scale_x), round((left + side) * scale_x)
        out = np.full((out_h, out_w), np.nan, dtype=np.float32)
        out[y0:y1, x0:x1] = resample(square, y1 - y0, x1 - x0, "bilinear")
        return out
    # letterbox: the content occupies a centred (new_h, new_w) window of the (size, size) input
    size = spec.size
    scale = size / max(height, width)
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    top, left = (size - new_h) // 2, (size - new_w) // 2
    over_input = resample(square, size, size, "bilinear")  # (size, size), same grid as the model input
    content = over_input[top : top + new_h, left : left + new_w]
    return resample(content, out_h, out_w, "bilinear")
