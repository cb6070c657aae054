"""Synthetic chest radiographs with exact labels: demo data and a test oracle.

A phantom is drawn as a projected density map on coordinate grids (vectorised numpy, no torch): body soft
tissue, two dark lungs, ribs and clavicles, spine and mediastinum, heart, diaphragm domes, lung markings from the
hila. Findings are added to the density before the exposure model:

- Nodule: small round opacity (diameter 5-6.5 % of the image) inside a lung.
- Mass: larger lobulated opacity (diameter 10-17 %) inside a lung.
- Effusion: fluid at a lung base with a meniscus rising to the lateral wall (blunted costophrenic angle).
- Cardiomegaly: heart width / thorax width > 0.57 (normal hearts are drawn at 0.40-0.48).
- Pneumothorax: a collapsed lung leaving a dark gap without lung markings at the apex and lateral wall,
  bounded by a visible visceral pleural line.
- Consolidation: patchy hazy brightening in one lung region.

Each image also varies in patient position (shift, scale, rotation), exposure (gain, gamma, window), blur,
Gaussian and quantum-like noise, and sometimes carries a burnt-in side marker.

Random draws come from separate streams (anatomy, each finding, exposure and noise), so the same seed drawn with
and without a finding gives the same patient, the same film and the same noise: only the finding differs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from models.labels import PHANTOM_FINDINGS

Box = tuple[int, int, int, int]  # (y0, x0, y1, x1), end-exclusive: pixels[y0:y1, x0:x1]

LOCALISED_FINDINGS: tuple[str, ...] = ("Nodule", "Mass", "Effusion", "Pneumothorax", "Consolidation")
NORMAL_CTR = (0.40, 0.48)
CARDIOMEGALY_CTR = (0.57, 0.68)

# one independent random stream per role; findings use streams 2.. in PHANTOM_FINDINGS order
_STREAM_ANATOMY, _STREAM_FILM = 0, 1
_N_STREAMS = 2 + len(PHANTOM_FINDINGS)


@dataclass(frozen=True)
class Phantom:
    pixels: np.ndarray  # (H, W) float32 in [0, 1], bright = dense, like a displayed radiograph
    findings: dict[str, bool]  # every name in PHANTOM_FINDINGS -> present?
    boxes: dict[str, Box]  # (y0, x0, y1, x1) end-exclusive box of each present localised finding
    cardiothoracic_ratio: float  # heart width / thorax width (inner rib margins)
    lung_mask: np.ndarray  # (H, W) bool, visible lung fields (outside the heart), before findings


def make_phantom(rng: np.random.Generator, size: int = 128, findings: Iterable[str] = ()) -> Phantom:
    """Draw one synthetic PA chest radiograph of `size` x `size` pixels with the given findings present."""
    if not isinstance(size, int | np.integer) or size < 16:
        raise ValueError(f"expected size to be an int >= 16, got {size!r}")
    size = int(size)
    present = set(findings)
    unknown = present - set(PHANTOM_FINDINGS)
    if unknown:
        raise ValueError(f"unknown findings {sorted(unknown)}; expected names from {PHANTOM_FINDINGS}")
    seeds = rng.integers(0, 2**63 - 1, size=_N_STREAMS)
    streams = [np.random.default_rng(int(s)) for s in seeds]
    finding_rng = {name: streams[2 + i] for i, name in enumerate(PHANTOM_FINDINGS)}

    anatomy = _Anatomy(streams[_STREAM_ANATOMY], size)
    if "Cardiomegaly" in present:
        anatomy.ctr = float(finding_rng["Cardiomegaly"].uniform(*CARDIOMEGALY_CTR))
        anatomy.heart_rv *= 1.1
    density, lungs = anatomy.draw()  # (S, S) float32, visible lung fields (S, S) float32 in [0, 1]

    boxes: dict[str, Box] = {}
    lung_mask = lungs > 0.5
    for name in PHANTOM_FINDINGS:  # fixed order: the result does not depend on the order the caller gave
        if name not in present or name == "Cardiomegaly":
            continue
        box = _FINDING_DRAWERS[name](finding_rng[name], anatomy, density, lungs)
        if box is not None:
            boxes[name] = box

    pixels = _film(streams[_STREAM_FILM], density)
    return Phantom(
        pixels=pixels,
        findings={name: name in present for name in PHANTOM_FINDINGS},
        boxes=boxes,
        cardiothoracic_ratio=anatomy.ctr,
        lung_mask=lung_mask,
    )


def phantom_set(
    n: int, size: int = 128, seed: int = 0, prevalence: float = 0.25
) -> tuple[np.ndarray, np.ndarray, list[dict[str, Box]]]:
    """`n` phantoms, each finding independently present with probability `prevalence`.

    Returns images (N, H, W) float32 in [0, 1], labels (N, K) float32 in {0, 1} in PHANTOM_FINDINGS order, and the
    boxes of each image. Deterministic for a seed, and image i does not depend on `n`.
    """
    if n < 0:
        raise ValueError(f"expected n >= 0, got {n}")
    if not 0.0 <= prevalence <= 1.0:
        raise ValueError(f"expected prevalence in [0, 1], got {prevalence}")
    images = np.empty((n, size, size), dtype=np.float32)  # (N, H, W)
    labels = np.zeros((n, len(PHANTOM_FINDINGS)), dtype=np.float32)  # (N, K)
    boxes: list[dict[str, Box]] = []
    for i, child in enumerate(np.random.SeedSequence(seed).spawn(n)):
        rng = np.random.default_rng(child)
        flags = rng.random(len(PHANTOM_FINDINGS)) < prevalence
        phantom = make_phantom(rng, size, [name for name, on in zip(PHANTOM_FINDINGS, flags, strict=True) if on])
        images[i] = phantom.pixels
        labels[i] = flags
        boxes.append(phantom.boxes)
    return images, labels, boxes


# --------------------------------------------------------------------------------------------------- anatomy


def _ramp(d: np.ndarray, edge: float) -> np.ndarray:
    """Soft step: 0 for d << 0, 1 for d >> 0, linear over `edge`."""
    out = d * np.float32(1.0 / edge)
    out += np.float32(0.5)
    return np.clip(out, 0.0, 1.0, out=out)


class _Anatomy:
    """Patient geometry in normalised patient coordinates (u right of image, v down; the thorax spans ~[-1, 1])."""

    def __init__(self, rng: np.random.Generator, size: int) -> None:
        self.size = size
        # patient position on the film
        self.shift = tuple(rng.uniform(-0.06, 0.06, size=2).tolist())  # (dy, dx) normalised
        self.scale = rng.uniform(0.86, 1.04)
        self.angle = float(np.deg2rad(rng.uniform(-5.0, 5.0)))
        # thorax and lungs
        self.thorax = rng.uniform(0.70, 0.80)  # half width at the inner rib margins
        self.medial = rng.uniform(0.07, 0.10)
        self.apex = rng.uniform(-0.74, -0.62)
        self.base = rng.uniform(0.42, 0.54)  # costophrenic angles
        left, right = rng.uniform(0.12, 0.20, size=2).tolist()
        self.dome = (left + rng.uniform(0.02, 0.06), right)  # dome heights; the patient's right sits higher
        # heart and mediastinum
        self.ctr = float(rng.uniform(*NORMAL_CTR))
        self.heart_v = rng.uniform(0.08, 0.16)
        self.heart_rv = rng.uniform(0.2, 0.26)
        self.heart_offset = rng.uniform(0.12, 0.2)  # fraction of the heart width left of the midline (image right)
        self.med_width = rng.uniform(0.09, 0.12)
        # ribs, clavicles, markings, soft tissue
        self.rib_spacing = rng.uniform(0.115, 0.135)
        self.rib_phase = rng.uniform(0.0, 1.0)
        self.rib_curve = rng.uniform(0.35, 0.5)
        self.rib_amp = rng.uniform(0.045, 0.08)
        self.clavicle_v = rng.uniform(-0.66, -0.58)
        self.marking_k = rng.uniform(26.0, 36.0)
        self.marking_phase = tuple(rng.uniform(0, 2 * np.pi, size=2).tolist())
        self.marking_amp = rng.uniform(0.05, 0.08)
        self.hilum_v = rng.uniform(-0.14, -0.04)
        self.body_width = rng.uniform(0.9, 0.98)
        self.fat = rng.uniform(0.25, 0.38)
        self.texture = _smooth_field(rng, size, 6)  # (S, S), unit scale
        self.marking_field = _smooth_field(rng, size, 10)
        self.gastric = rng.random() < 0.7
        self._grids()

    # geometry ------------------------------------------------------------------------------------------------
    def _grids(self) -> None:
        s = self.size
        coords = (np.arange(s, dtype=np.float32) + 0.5) / s * 2.0 - 1.0
        yy, xx = np.meshgrid(coords, coords, indexing="ij")  # (S, S) image coordinates in [-1, 1]
        dy, dx = yy - self.shift[0], xx - self.shift[1]
        cos, sin = np.float32(np.cos(self.angle)), np.float32(np.sin(self.angle))
        self.u = ((cos * dx + sin * dy) / self.scale).astype(np.float32)  # (S, S)
        self.v = ((-sin * dx + cos * dy) / self.scale).astype(np.float32)
        self.px = float(2.0 / s / self.scale)  # one pixel in patient units
        self._domes: dict[int, np.ndarray] = {}

    def lung_ellipse(self, side: int) -> tuple[float, float, float, float]:
        """(cu, cv, ru, rv) of a lung's ellipse; side -1 = image left (patient's right), +1 = image right."""
        cu = side * (self.thorax + self.medial) / 2
        ru = (self.thorax - self.medial) / 2
        top, bottom = self.apex, self.base + 0.18
        return cu, (top + bottom) / 2, ru, (bottom - top) / 2

    def dome_line(self, side: int) -> np.ndarray:
        """The diaphragm dome under a lung: v of the lung base at each pixel's u, (S, S)."""
        if side not in self._domes:
            cu, _, ru, _ = self.lung_ellipse(side)
            height = self.dome[0 if side < 0 else 1]
            t = np.clip((self.u - cu) / ru, -1.2, 1.2)
            self._domes[side] = self.base - height * (1.0 - t * t)
        return self._domes[side]

    def ellipse_distance(self, cu: float, cv: float, ru: float, rv: float) -> np.ndarray:
        """Approximate signed distance to an ellipse's outline, positive inside (patient units)."""
        e = np.sqrt(((self.u - cu) / ru) ** 2 + ((self.v - cv) / rv) ** 2)
        return (1.0 - e) * min(ru, rv)

    def lung(self, side: int, ellipse: tuple[float, float, float, float] | None = None) -> np.ndarray:
        ellipse = ellipse or self.lung_ellipse(side)
        edge = 1.5 * self.px
        inside = _ramp(self.ellipse_distance(*ellipse), edge)
        return inside * _ramp(self.dome_line(side) - self.v, edge)  # (S, S) in [0, 1]

    def heart(self) -> np.ndarray:
        width = self.ctr * 2 * self.thorax
        cu = (0.5 - self.heart_offset) * width
        return _ramp(self.ellipse_distance(cu, self.heart_v, width / 2, self.heart_rv), 2 * self.px)

    # drawing -------------------------------------------------------------------------------------------------
    def draw(self) -> tuple[np.ndarray, np.ndarray]:
        """Density map (S, S) and the visible lung fields (S, S) in [0, 1]."""
        u, v, px = self.u, self.v, self.px
        au = np.abs(u)
        # body: torso superellipse plus neck, thicker in the middle
        bu2 = (u / self.body_width) ** 2
        bv2 = ((v - 0.15) / 1.3) ** 2
        torso = _ramp(1.0 - bu2 * bu2 - bv2 * bv2, 0.08)
        neck = _ramp(0.2 - au, 2 * px) * _ramp(-0.5 - v, 0.1)
        body = np.maximum(torso, neck)
        depth = np.sqrt(np.clip(1.0 - bu2, 0.0, 1.0))
        density = body * (self.fat + 0.12 * depth + 0.02 * self.texture)

        # lungs, cut by the diaphragm domes and hidden behind the heart
        self.lungs = (self.lung(-1), self.lung(1))
        heart = self.heart()
        self.heart_mask = heart
        lungs = np.maximum(*self.lungs)
        visible = lungs * (1.0 - heart)
        lung_depth = 0.55 + 0.45 * np.sqrt(self.lung_depth())
        density -= 0.24 * lungs * lung_depth * (1.0 - 0.7 * heart)

        # mediastinum, aortic knob, spine with vertebrae, trachea
        med = _ramp(self.med_width - au, 3 * px) * _ramp(self.base - 0.05 - v, 0.05) * _ramp(v + 0.85, 0.1)
        density += 0.12 * med
        density += 0.08 * _ramp(self.ellipse_distance(0.11, -0.36, 0.07, 0.06), 2 * px)
        vertebrae = 0.8 + 0.2 * np.cos(2 * np.pi * v / 0.11)
        density += 0.09 * _ramp(0.055 - au, 2 * px) * vertebrae * body
        density -= 0.10 * _ramp(0.022 - au, px) * _ramp(-0.42 - v, 0.04)

        # heart, liver under the right dome, gastric bubble under the left dome
        density += 0.13 * heart
        below_right = _ramp(v - self.dome_line(-1), 0.04) * _ramp(-u, 0.1)
        density += 0.06 * below_right * torso
        if self.gastric:
            cu = self.lung_ellipse(1)[0] * 0.9
            dist = self.ellipse_distance(cu, self.base - self.dome[1] + 0.12, 0.1, 0.05)
            density -= 0.07 * _ramp(dist, 2 * px) * _ramp(v - self.dome_line(1) - 0.01, 0.03)

        # posterior ribs: curved bands from the spine, falling laterally; clavicles
        cage = _ramp(self.thorax + 0.1 - au, 3 * px) * _ramp(au - 0.04, 2 * px) * _ramp(v + 0.8, 0.06)
        cage *= _ramp(self.base + 0.08 - v, 0.06)
        phase = (v - (self.rib_curve * au * au - 0.12 * au)) / self.rib_spacing + self.rib_phase
        offset = (phase - np.round(phase)) * self.rib_spacing
        ribs = np.exp(-((offset / 0.022) ** 2))
        density += self.rib_amp * ribs * cage
        clavicle_line = self.clavicle_v - 0.16 * (au - 0.1)
        clavicles = np.exp(-(((v - clavicle_line) / 0.028) ** 2)) * _ramp(au - 0.08, 2 * px) * _ramp(0.6 - au, 0.05)
        density += 0.11 * clavicles

        # hila and lung markings: streaks radiating from each hilum, fading to the periphery (inside the lung box)
        self.markings = np.zeros_like(density)
        box = _box_from_mask(lungs > 0)
        if box is not None:
            window = np.s_[box[0] : box[2], box[1] : box[3]]
            wu, wv = u[window], v[window]
            left = wu < 0
            du = np.where(left, -wu, wu) - 0.2  # mirrored: both hila at |u| = 0.2
            dv = wv - self.hilum_v
            radius = np.sqrt(du * du + dv * dv)
            theta = np.arctan2(dv, du)
            wobble = 0.12 * np.sin(7.0 * radius + np.where(left, *np.float32(self.marking_phase)))
            streaks = np.clip(np.cos(self.marking_k * (theta + wobble)), 0.0, 1.0)
            streaks = streaks * streaks * streaks
            fade = np.exp(-radius / 0.35) * (0.7 + 0.3 * self.marking_field[window])
            self.markings[window] = self.marking_amp * streaks * fade * lungs[window]
            hila = 0.07 * np.exp(-((radius / 0.08) ** 2)) * _ramp(0.4 - np.abs(wu), 0.1)
            density[window] += self.markings[window] + hila
        return density.astype(np.float32), visible.astype(np.float32)

    def lung_depth(self) -> np.ndarray:
        """1 at a lung's centre, 0 at its outline and outside (how much lung the beam crosses), (S, S)."""
        _, cv, ru, rv = self.lung_ellipse(1)
        du = (np.abs(self.u) - (self.thorax + self.medial) / 2) / ru
        dv = (self.v - cv) / rv
        return np.clip(1.0 - du * du - dv * dv, 0.0, 1.0)


# -------------------------------------------------------------------------------------------------- findings


def _box_from_mask(mask: np.ndarray) -> Box | None:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def _place_disk(rng: np.random.Generator, lungs: np.ndarray, radius: float, tries: int = 60) -> tuple[float, float]:
    """A centre (y, x) in pixels such that a disk of `radius` lies inside the visible lungs (shrinking if needed)."""
    s = lungs.shape[0]
    candidates = np.flatnonzero(lungs.ravel() > 0.9)
    if candidates.size == 0:
        candidates = np.flatnonzero(lungs.ravel() > 0.5)
    if candidates.size == 0:
        return s / 2, s / 2
    offsets = np.arange(-int(np.ceil(radius)), int(np.ceil(radius)) + 1)
    oy, ox = np.meshgrid(offsets, offsets, indexing="ij")
    inside = oy**2 + ox**2 <= radius**2
    oy, ox = oy[inside], ox[inside]
    best, best_score = None, -1.0
    for _ in range(tries):
        idx = candidates[rng.integers(candidates.size)]
        cy, cx = divmod(int(idx), s)
        ys, xs = cy + oy, cx + ox
        if ys.min() < 0 or xs.min() < 0 or ys.max() >= s or xs.max() >= s:
            continue
        score = float(lungs[ys, xs].min())
        if score > 0.5:
            return cy + rng.uniform(-0.5, 0.5), cx + rng.uniform(-0.5, 0.5)
        if score > best_score:
            best, best_score = (float(cy), float(cx)), score
    return best if best is not None else (s / 2, s / 2)


def _add_opacity(
    rng: np.random.Generator,
    density: np.ndarray,
    lungs: np.ndarray,
    diameter: tuple[float, float],
    amplitude: tuple[float, float],
    lobulation: float,
) -> Box:
    s = density.shape[0]
    radius = rng.uniform(*diameter) * s / 2
    amp = rng.uniform(*amplitude)
    harmonics = rng.uniform(0, 2 * np.pi, size=2)
    cy, cx = _place_disk(rng, lungs, radius * (1.0 + lobulation))
    reach = radius * (1 + lobulation)
    y0, y1 = max(0, int(np.floor(cy - reach))), min(s, int(np.ceil(cy + reach)) + 1)
    x0, x1 = max(0, int(np.floor(cx - reach))), min(s, int(np.ceil(cx + reach)) + 1)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dy, dx = yy - cy, xx - cx
    if lobulation > 0:
        theta = np.arctan2(dy, dx)
        wobble = 0.6 * np.cos(3 * theta + harmonics[0]) + 0.4 * np.cos(5 * theta + harmonics[1])
        edge = radius * (1 + lobulation * wobble)
    else:
        edge = np.float32(radius)
    # projection of a sphere, with a half-pixel soft rim
    r = np.sqrt(dy * dy + dx * dx)
    profile = np.sqrt(np.clip(1.0 - (r / (edge + 0.5)) ** 2, 0.0, 1.0))
    density[y0:y1, x0:x1] += amp * profile
    return _box_from_mask(np.pad(profile > 0, ((y0, s - y1), (x0, s - x1)))) or (y0, x0, y1, x1)


def _draw_nodule(rng: np.random.Generator, anatomy: _Anatomy, density: np.ndarray, lungs: np.ndarray) -> Box | None:
    return _add_opacity(rng, density, lungs, diameter=(0.05, 0.065), amplitude=(0.18, 0.28), lobulation=0.0)


def _draw_mass(rng: np.random.Generator, anatomy: _Anatomy, density: np.ndarray, lungs: np.ndarray) -> Box | None:
    return _add_opacity(rng, density, lungs, diameter=(0.10, 0.17), amplitude=(0.12, 0.2), lobulation=0.12)


def _draw_effusion(rng: np.random.Generator, anatomy: _Anatomy, density: np.ndarray, lungs: np.ndarray) -> Box | None:
    sides = [int(rng.choice([-1, 1]))]
    if rng.random() < 0.2:
        sides = [-1, 1]
    heights = rng.uniform(0.22, 0.42, size=2)
    amp = rng.uniform(0.18, 0.26)
    fluid_total = np.zeros_like(density)
    for side, height in zip(sides, heights, strict=False):
        lateral = side * anatomy.thorax
        top = anatomy.base - height  # fluid reaches highest at the lateral chest wall (meniscus)
        reach = np.abs(anatomy.u - lateral) / (anatomy.thorax - anatomy.medial)
        level = top + 0.4 * height * np.clip(reach, 0.0, 1.0) ** 0.8
        lung = anatomy.lungs[0 if side < 0 else 1]
        fluid = _ramp(anatomy.v - level, 0.03) * lung * (1.0 - anatomy.heart_mask)
        fluid_total = np.maximum(fluid_total, fluid)
    density += amp * fluid_total
    return _box_from_mask(fluid_total > 0.3)


def _draw_pneumothorax(
    rng: np.random.Generator, anatomy: _Anatomy, density: np.ndarray, lungs: np.ndarray
) -> Box | None:
    side = int(rng.choice([-1, 1]))
    fu, fv = rng.uniform(0.62, 0.82), rng.uniform(0.72, 0.88)
    cu, cv, ru, rv = anatomy.lung_ellipse(side)
    # the collapsed lung keeps its medial and basal outline; air collects at the apex and lateral wall
    collapsed = (cu - side * ru * (1 - fu), cv + rv * (1 - fv), ru * fu, rv * fv)
    lung = anatomy.lungs[0 if side < 0 else 1]
    inner = anatomy.lung(side, collapsed)
    gap = lung * (1.0 - inner)
    # no lung markings in the gap, air is darker, the visceral pleura is a thin bright line
    density -= gap * (anatomy.markings + rng.uniform(0.06, 0.09))
    distance = anatomy.ellipse_distance(*collapsed)
    pleura = np.exp(-((distance / (0.9 * anatomy.px)) ** 2)) * lung
    density += rng.uniform(0.06, 0.09) * pleura
    density += 0.02 * inner * lung  # the collapsed lung is a little denser
    return _box_from_mask(gap > 0.5)


def _draw_consolidation(
    rng: np.random.Generator, anatomy: _Anatomy, density: np.ndarray, lungs: np.ndarray
) -> Box | None:
    s = density.shape[0]
    radius = rng.uniform(0.09, 0.15) * s
    cy, cx = _place_disk(rng, lungs, radius * 0.5)
    yy = np.arange(s, dtype=np.float32)[:, None] - cy
    xx = np.arange(s, dtype=np.float32)[None, :] - cx
    envelope = np.exp(-(yy * yy + xx * xx) / (radius * radius))
    patches = np.clip(0.5 + 0.8 * _smooth_field(rng, s, 12), 0.0, 1.0)
    haze = envelope * (0.35 + 0.65 * patches) * lungs
    density += rng.uniform(0.14, 0.2) * haze
    return _box_from_mask(haze > 0.25)


_FINDING_DRAWERS = {
    "Nodule": _draw_nodule,
    "Mass": _draw_mass,
    "Effusion": _draw_effusion,
    "Pneumothorax": _draw_pneumothorax,
    "Consolidation": _draw_consolidation,
}


# ------------------------------------------------------------------------------------------------ film model


def _film(rng: np.random.Generator, density: np.ndarray) -> np.ndarray:
    """Exposure, detector blur, noise and an occasional burnt-in marker: density -> displayed pixels in [0, 1]."""
    s = density.shape[0]
    gain = rng.uniform(2.0, 3.0)
    gamma = rng.uniform(0.75, 1.35)
    low, high = rng.uniform(0.0, 0.08), rng.uniform(0.85, 1.0)
    blur = rng.uniform(0.3, 1.0) * s / 128
    sigma_g, sigma_q = rng.uniform(0.004, 0.018), rng.uniform(0.004, 0.02)
    noise = rng.standard_normal((2, s, s), dtype=np.float32)
    marker = rng.random() < 0.5
    corner = rng.integers(4)

    signal = 1.0 - np.exp(-gain * np.clip(density, 0.0, None))
    signal = signal / np.float32(1.0 - np.exp(-gain * 0.6))
    signal = low + (high - low) * np.clip(signal, 0.0, 1.0) ** gamma
    signal = _gaussian_blur(signal.astype(np.float32), blur)
    signal = signal + sigma_g * noise[0] + sigma_q * np.sqrt(np.clip(signal, 0.0, 1.0)) * noise[1]
    if marker:
        m = max(2, s // 24)
        y = m if corner < 2 else s - 3 * m
        x = m if corner % 2 == 0 else s - 3 * m
        signal[y : y + 2 * m, x : x + 2 * m] = 0.95
    return np.clip(signal, 0.0, 1.0).astype(np.float32)


def _gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur with edge padding (a handful of shifted adds; no BLAS threads for tiny kernels)."""
    radius = max(1, int(np.ceil(3 * sigma)))
    taps = np.exp(-(np.arange(-radius, radius + 1, dtype=np.float32) ** 2) / np.float32(2 * sigma * sigma))
    taps /= taps.sum()
    h, w = image.shape
    padded = np.pad(image, radius, mode="edge")
    rows = np.zeros((h + 2 * radius, w), dtype=np.float32)
    for k, tap in enumerate(taps):
        rows += tap * padded[:, k : k + w]
    out = np.zeros((h, w), dtype=np.float32)
    for k, tap in enumerate(taps):
        out += tap * rows[k : k + h]
    return out


@lru_cache(maxsize=64)
def _rbf_matrix(size: int, cells: int) -> np.ndarray:
    """(S, cells) Gaussian radial basis functions on a coarse grid, used to draw smooth random fields."""
    centres = (np.arange(cells, dtype=np.float32) + 0.5) / cells
    pos = (np.arange(size, dtype=np.float32) + 0.5) / size
    basis = np.exp(-(((pos[:, None] - centres[None, :]) * cells) ** 2) / 1.2)
    basis /= np.sqrt((basis**2).sum(axis=1, keepdims=True))
    basis.setflags(write=False)
    return basis.astype(np.float32)


def _smooth_field(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """A smooth random field (S, S), roughly unit standard deviation, with about `cells` blobs across."""
    basis = _rbf_matrix(size, cells)
    coarse = rng.standard_normal((cells, cells), dtype=np.float32)
    return (basis @ coarse @ basis.T).astype(np.float32)
