"""Input sanity checks on the decoded film, at full resolution, before any resize: the first signals of the gate.

A film the models cannot read should never be reported as reliable, whatever the networks say: an autoencoder that
sees a 64 px area-downsampled, percentile-normalised copy reconstructs a flat grey (the average of noise, or a blank
film) very well. Three checks, each with its own reason:
- near-constant: the middle 98 % of pixel values spans less than `min_spread` of the display range;
- noise: most of the image's variance sits in pixel-to-pixel differences (1 - lag-1 autocorrelation), which
  radiographs, even at 28-64 px, never show;
- far too dark/bright: nearly all pixels lie at one end of the display range after the VOI LUT.
numpy-only; the thresholds were measured on real chest films (NIH ChestX-ray14, PneumoniaMNIST, CR/DX DICOMs) and
on noise and blank images (see tests/models/test_film_checks.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

_SAMPLE_TARGET = 1 << 20  # pixels used for the percentiles (a strided sample of large films)


@dataclass(frozen=True)
class FilmCheckLimits:
    min_spread: float = 0.04  # p99 - p1 of pixel values in [0, 1]
    max_fine_detail: float = 0.5  # share of the variance in neighbouring-pixel differences (white noise: 1.0)
    max_extreme_fraction: float = 0.95  # share of pixels within `extreme_margin` of black (or of white)
    extreme_margin: float = 0.02


@dataclass(frozen=True)
class FilmStatistics:
    spread: float  # p99 - p1
    fine_detail: float  # mean over both axes of var(x[i+1] - x[i]) / (2 var(x)); 0 smooth, 1 white noise
    dark_fraction: float
    bright_fraction: float

    def to_dict(self) -> dict[str, float]:
        return {key: round(value, 6) for key, value in asdict(self).items()}


def film_statistics(pixels: np.ndarray, limits: FilmCheckLimits | None = None) -> FilmStatistics:
    """The statistics the checks use, of a float (H, W) film in [0, 1]."""
    limits = limits or FilmCheckLimits()
    if pixels.ndim != 2:
        raise ValueError(f"expected a 2-D grey film, got shape {pixels.shape}")
    stride = max(1, round(np.sqrt(pixels.size / _SAMPLE_TARGET)))  # the sample stays near the target's size
    sample = pixels[::stride, ::stride].astype(np.float64)
    low, high = np.percentile(sample, [1, 99])
    return FilmStatistics(
        spread=float(high - low),
        fine_detail=_fine_detail(pixels, stride),
        dark_fraction=float(np.mean(sample <= limits.extreme_margin)),
        bright_fraction=float(np.mean(sample >= 1.0 - limits.extreme_margin)),
    )


def _fine_detail(pixels: np.ndarray, stride: int) -> float:
    """1 - lag-1 autocorrelation, averaged over rows and columns; neighbours stay adjacent at full resolution (only
    whole rows/columns are subsampled on large films)."""
    ratios = []
    for lines in (pixels[::stride, :], pixels[:, ::stride].T):  # rows, then columns
        if lines.shape[1] < 2:
            continue
        lines = lines.astype(np.float64)
        variance = float(lines.var())
        if variance <= 1e-12:
            continue
        ratios.append(float(np.diff(lines, axis=1).var()) / (2.0 * variance))
    return float(np.mean(ratios)) if ratios else 0.0


def film_check_reasons(stats: FilmStatistics, limits: FilmCheckLimits | None = None) -> list[tuple[str, str]]:
    """(code, reason) for every check the film fails; empty when it passes."""
    limits = limits or FilmCheckLimits()
    failed: list[tuple[str, str]] = []
    if stats.spread < limits.min_spread:
        failed.append(
            (
                "near_constant",
                f"the image is nearly uniform: its pixel values span {stats.spread:.3g} of the display range "
                f"(a radiograph spans at least {limits.min_spread:g})",
            )
        )
        return failed  # noise and exposure are meaningless on a blank image
    if stats.fine_detail > limits.max_fine_detail:
        failed.append(
            (
                "noise",
                f"the image looks like noise: {stats.fine_detail:.2f} of its variance is pixel-to-pixel variation "
                f"(radiographs stay below {limits.max_fine_detail:g})",
            )
        )
    for code, fraction, side in (
        ("too_dark", stats.dark_fraction, "black"),
        ("too_bright", stats.bright_fraction, "white"),
    ):
        if fraction > limits.max_extreme_fraction:
            failed.append(
                (
                    code,
                    f"the image is far too {code.removeprefix('too_')}: {fraction:.0%} of its pixels are {side} "
                    f"after the VOI LUT (at most {limits.max_extreme_fraction:.0%} expected)",
                )
            )
    return failed
