"""The classic baseline the lecture describes: a fixed filter bank + pooling + logistic regression.

Nothing in the filters is learned: Gaussians (blur at three scales), Laplacians of Gaussian (blobs at three scales)
and Gabor filters (oriented edges and lines, four orientations at two wavelengths). Each response is pooled into
a coarse grid of mean absolute values plus its global mean and spread, and one L2 logistic regression per label
sits on top. Trained on the same split and the same preprocessed inputs as the CNN, it shows in the evaluation
report what learning the convolutions buys. numpy + scikit-learn.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

C_GRID = (0.001, 0.01, 0.1, 1.0)


def _grid(half: int) -> tuple[np.ndarray, np.ndarray]:
    axis = np.arange(-half, half + 1, dtype=np.float64)
    return np.meshgrid(axis, axis, indexing="ij")


def gaussian(sigma: float) -> np.ndarray:
    y, x = _grid(int(np.ceil(3 * sigma)))
    kernel = np.exp(-(x**2 + y**2) / (2 * sigma**2))
    return kernel / kernel.sum()


def laplacian_of_gaussian(sigma: float) -> np.ndarray:
    """Scale-normalised (sigma^2) LoG, zero-mean: responds to blobs of radius about sigma * sqrt(2)."""
    y, x = _grid(int(np.ceil(4 * sigma)))
    r2 = (x**2 + y**2) / (2 * sigma**2)
    kernel = (r2 - 1.0) * np.exp(-r2) / (np.pi * sigma**2)
    return kernel - kernel.mean()


def gabor(wavelength: float, theta: float, aspect: float = 0.5) -> np.ndarray:
    """Even (cosine) Gabor, zero-mean, unit L1: stripes of `wavelength` pixels across direction `theta`."""
    sigma = 0.56 * wavelength  # about one octave of bandwidth
    y, x = _grid(int(np.ceil(3 * sigma)))
    xr = x * np.cos(theta) + y * np.sin(theta)
    yr = -x * np.sin(theta) + y * np.cos(theta)
    kernel = np.exp(-(xr**2 + (aspect * yr) ** 2) / (2 * sigma**2)) * np.cos(2 * np.pi * xr / wavelength)
    kernel -= kernel.mean()
    return kernel / np.abs(kernel).sum()


def filter_bank(input_size: int) -> dict[str, np.ndarray]:
    """Scales follow the input size (the 64 px default: sigma 1, 2, 4; wavelengths 4 and 8 px)."""
    unit = max(input_size / 64.0, 0.5)
    bank: dict[str, np.ndarray] = {}
    for s in (1.0, 2.0, 4.0):
        bank[f"gauss_s{s:g}"] = gaussian(s * unit)
        bank[f"log_s{s:g}"] = laplacian_of_gaussian(s * unit)
    for wavelength in (4.0, 8.0):
        for degrees in (0, 45, 90, 135):
            bank[f"gabor_l{wavelength:g}_o{degrees}"] = gabor(wavelength * unit, np.deg2rad(degrees))
    return bank


def responses(images: np.ndarray, bank: dict[str, np.ndarray]) -> np.ndarray:
    """(N, S, S) -> (N, F, S, S) 'same' convolutions (reflect padding), by FFT for all images at once."""
    n, size, _ = images.shape
    half = max(k.shape[0] for k in bank.values()) // 2
    padded = np.pad(images.astype(np.float64), ((0, 0), (half, half), (half, half)), mode="reflect")
    full = padded.shape[1]
    spectrum = np.fft.rfft2(padded)  # (N, P, P/2+1)
    out = np.empty((n, len(bank), size, size), dtype=np.float32)
    for f, kernel in enumerate(bank.values()):
        k = kernel.shape[0]
        kernel_pad = np.zeros((full, full))
        kernel_pad[:k, :k] = kernel
        kernel_pad = np.roll(kernel_pad, (-(k // 2), -(k // 2)), axis=(0, 1))  # centre at the origin
        conv = np.fft.irfft2(spectrum * np.fft.rfft2(kernel_pad)[None], s=(full, full))
        out[:, f] = conv[:, half : half + size, half : half + size]
    return out


def pooled_features(images: np.ndarray, bank: dict[str, np.ndarray], grid: int = 4) -> np.ndarray:
    """(N, S, S) -> (N, F * (grid^2 + 2)): per filter a grid of mean |response|, its global mean and std."""
    r = responses(images, bank)
    n, f, size, _ = r.shape
    cell = size // grid
    cropped = np.abs(r[:, :, : cell * grid, : cell * grid]).reshape(n, f, grid, cell, grid, cell)
    cells = cropped.mean(axis=(3, 5)).reshape(n, f * grid * grid)
    return np.concatenate([cells, r.mean(axis=(2, 3)), r.std(axis=(2, 3))], axis=1)


@dataclass
class FilterBankClassifier:
    """One logistic regression per label on pooled filter-bank features; C chosen on a validation split."""

    input_size: int
    labels: list[str]
    bank: dict[str, np.ndarray] = field(init=False)
    models: dict[str, LogisticRegression | None] = field(default_factory=dict)
    chosen_c: dict[str, float] = field(default_factory=dict)
    mean: np.ndarray | None = None
    std: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.bank = filter_bank(self.input_size)

    def features(self, images: np.ndarray) -> np.ndarray:
        """Standardised features; images are (N, S, S) or (N, 1, S, S), as the CNN sees them."""
        x = pooled_features(np.asarray(images).reshape(len(images), self.input_size, self.input_size), self.bank)
        if self.mean is None:
            self.mean, self.std = x.mean(axis=0), x.std(axis=0)
            self.std[self.std < 1e-12] = 1.0
        return (x - self.mean) / self.std

    def fit(self, train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray):
        """train/val images and (N, K) labels with NaN for missing; C per label by validation AUROC."""
        self.mean = self.std = None
        ft, fv = self.features(train_x), self.features(val_x)
        for k, label in enumerate(self.labels):
            known = ~np.isnan(train_y[:, k])
            y = train_y[known, k]
            if y.size == 0 or y.min() == y.max():
                self.models[label] = None
                continue
            vknown = ~np.isnan(val_y[:, k])
            best, best_score = None, -np.inf
            for c in C_GRID:
                model = LogisticRegression(C=c, max_iter=3000).fit(ft[known], y)
                yv = val_y[vknown, k]
                score = (
                    roc_auc_score(yv, model.decision_function(fv[vknown])) if yv.size and yv.min() != yv.max() else 0.0
                )
                if score > best_score:
                    best, best_score = (model, c), score
            self.models[label], self.chosen_c[label] = best
        return self

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """(N, K) probabilities; NaN for labels that had a single class in training."""
        x = self.features(images)
        out = np.full((len(x), len(self.labels)), np.nan)
        for k, label in enumerate(self.labels):
            if self.models.get(label) is not None:
                out[:, k] = self.models[label].predict_proba(x)[:, 1]
        return out
