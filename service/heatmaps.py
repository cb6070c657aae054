"""CAM -> heatmap overlay PNG on the radiograph (numpy + Pillow; no matplotlib in the serving image).

The classifier's CAM is in logit units and its spatial mean equals the logit, so positive regions are evidence
for the finding. The overlay shows positive evidence only, scaled to the map's own maximum, with opacity growing
with the evidence; a finding with no positive evidence gives the plain film.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from models.preprocessing import PreprocessSpec, map_to_image, resample

# A perceptually ordered dark-red -> yellow -> white ramp (like "inferno"/"hot"): anchors interpolated to 256 steps.
_ANCHORS = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], dtype=np.float32)
_LUT = np.stack(
    [np.interp(np.linspace(0, 1, 256), np.linspace(0, 1, len(_ANCHORS)), _ANCHORS[:, c]) for c in range(3)], axis=1
).astype(np.float32)  # (256, 3)


MIN_DISPLAY_SIDE = 256  # small films (MedMNIST, thumbnails) are enlarged so a clinician can see the overlay


def display_size(height: int, width: int, max_side: int) -> tuple[int, int]:
    long_side = max(height, width)
    scale = min(max_side, max(long_side, MIN_DISPLAY_SIDE)) / long_side
    return max(1, round(height * scale)), max(1, round(width * scale))


def film_for_display(pixels: np.ndarray, max_side: int) -> np.ndarray:
    """The decoded film (H, W) in [0, 1], its long side brought into [256, max_side] (area down, bilinear up)."""
    h, w = display_size(*pixels.shape, max_side)
    if (h, w) == pixels.shape:
        return pixels.astype(np.float32)
    return resample(pixels, h, w, "area" if h < pixels.shape[0] else "bilinear")


def evidence_map(
    cam: np.ndarray, film_shape: tuple[int, int], spec: PreprocessSpec, out_shape: tuple[int, int] | None = None
) -> np.ndarray:
    """(h, w) CAM in logits -> positive evidence in [0, 1] over the film (0 where the model saw nothing).

    `film_shape` is the decoded film the model saw (its geometry decides the letterbox window); the map comes out
    at `out_shape` (default: the film's own size)."""
    height, width = film_shape
    over_film = map_to_image(cam, height, width, spec, out_shape)
    positive = np.nan_to_num(np.clip(over_film, 0.0, None), nan=0.0)
    peak = float(positive.max())
    return positive / peak if peak > 1e-6 else np.zeros_like(positive)


def overlay(film: np.ndarray, evidence: np.ndarray, max_alpha: float = 0.6) -> np.ndarray:
    """Blend the colour-mapped evidence onto the grey film; returns (H, W, 3) uint8."""
    grey = np.repeat(np.clip(film, 0, 1)[..., None] * 255.0, 3, axis=2)
    colour = _LUT[np.clip((evidence * 255).round().astype(np.int64), 0, 255)]
    alpha = (max_alpha * np.sqrt(np.clip(evidence, 0, 1)))[..., None]
    return np.clip(grey * (1 - alpha) + colour * alpha, 0, 255).round().astype(np.uint8)


def heat_layer(evidence: np.ndarray, max_alpha: float = 0.6) -> np.ndarray:
    """The colour-mapped evidence alone, transparent where there is none: (H, W, 4) uint8 for a viewer to lay over
    the film at any opacity (the same colours and opacity curve as `overlay`)."""
    colour = _LUT[np.clip((evidence * 255).round().astype(np.int64), 0, 255)]
    alpha = max_alpha * np.sqrt(np.clip(evidence, 0, 1)) * 255.0
    return np.concatenate([colour, alpha[..., None]], axis=2).round().astype(np.uint8)


def grey_8bit(film: np.ndarray) -> np.ndarray:
    return (np.clip(film, 0, 1) * 255.0).round().astype(np.uint8)


def png_bytes(image: np.ndarray) -> bytes:
    """(H, W) grey, (H, W, 3) RGB or (H, W, 4) RGBA uint8 -> PNG bytes."""
    mode = {2: "L"}.get(image.ndim) or {3: "RGB", 4: "RGBA"}[image.shape[2]]
    buffer = io.BytesIO()
    Image.fromarray(image, mode=mode).save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


def render_overlay(
    display: np.ndarray, cam: np.ndarray, spec: PreprocessSpec, film_shape: tuple[int, int] | None = None
) -> bytes:
    """`display`: the film at display size; `cam` (h, w) for one label; `film_shape`: the decoded film's size
    (default: the display's) -> overlay PNG bytes."""
    evidence = evidence_map(cam, film_shape or display.shape, spec, display.shape)
    return png_bytes(overlay(display, evidence))
