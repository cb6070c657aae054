"""The matplotlib figures of `xray eval`'s report: ROC, reliability, training curves, first-layer filters,
reconstruction-error histogram, reconstruction gallery and bottleneck codes.

Each `plot_*` function writes one PNG (non-interactive Agg backend, DPI dots per inch) and returns its file name,
which the report's JSON and HTML refer to.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from models.classifier import first_conv_key  # noqa: E402
from training import metrics  # noqa: E402

DPI = 100


def _save(fig, path: Path) -> str:
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path.name


def plot_roc(label: str, curves: dict[str, tuple[np.ndarray, np.ndarray, float]], path: Path) -> str:
    """One label's ROC curves, one line per model (name -> (fpr, tpr, AUROC))."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for name, (fpr, tpr, auc) in curves.items():
        ax.plot(fpr, tpr, label=f"{name} (AUROC {auc:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=f"ROC: {label}", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def plot_reliability(tables: dict[str, metrics.Calibration], path: Path) -> str:
    """Reliability diagram: mean predicted probability against fraction positive, per label."""
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="perfect calibration")
    for label, table in tables.items():
        points = [(m, f) for m, f in zip(table.mean_predicted, table.fraction_positive, strict=True) if m is not None]
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker="o", markersize=3, label=f"{label} (ECE {table.ece:.3f})")
    ax.set(
        xlabel="mean predicted probability", ylabel="fraction positive", title="Reliability", xlim=(0, 1), ylim=(0, 1)
    )
    ax.legend(fontsize=7, loc="upper left")
    return _save(fig, path)


def plot_training_curves(history: list[dict[str, Any]], path: Path, score_key: str, score_name: str) -> str:
    """Training (and validation) loss per epoch beside the validation score `score_key`."""
    epochs = [entry["epoch"] for entry in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    left.plot(epochs, [entry.get("loss", np.nan) for entry in history], marker=".")
    if any("val_loss" in entry for entry in history):
        left.plot(epochs, [entry.get("val_loss", np.nan) for entry in history], marker=".", label="validation")
        left.legend(["training", "validation"], fontsize=8)
    left.set(xlabel="epoch", ylabel="loss", title="Training loss")
    right.plot(epochs, [entry.get(score_key, np.nan) for entry in history], marker=".", color="tab:green")
    right.set(xlabel="epoch", ylabel=score_name, title=f"Validation {score_name}")
    fig.tight_layout()
    return _save(fig, path)


def plot_first_layer_filters(encoder: torch.nn.Module, path: Path) -> tuple[str, list[int]]:
    """The encoder's first convolution kernels as images; also returns the weight shape."""
    weight = encoder.state_dict()[first_conv_key(encoder)].detach().cpu().float().numpy()  # (F, C, k, k)
    kernels = weight.mean(axis=1)  # grey input: one channel (means over channels otherwise)
    count = kernels.shape[0]
    cols = min(16, count)
    rows = -(-count // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(max(cols * 0.8, 4.0), rows * 0.8 + 0.8), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < count:
            limit = float(np.abs(kernels[i]).max()) or 1.0
            ax.imshow(kernels[i], cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
    fig.suptitle(f"First-layer filters ({count} of {kernels.shape[1]}x{kernels.shape[2]}; red +, blue -)", fontsize=9)
    return _save(fig, path), list(weight.shape)


def plot_error_histogram(chest: np.ndarray, outliers: np.ndarray, threshold: float | None, path: Path) -> str:
    """Reconstruction errors of chest films and non-chest images, with the outlier threshold."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    high = float(np.percentile(np.concatenate([chest, outliers]) if outliers.size else chest, 99.5))
    bins = np.linspace(0, max(high, threshold or 0) * 1.05, 50)
    ax.hist(chest, bins=bins, alpha=0.6, label=f"chest films ({chest.size})")
    if outliers.size:
        ax.hist(np.clip(outliers, 0, bins[-1]), bins=bins, alpha=0.6, label=f"non-chest images ({outliers.size})")
    if threshold is not None:
        ax.axvline(threshold, color="black", linestyle="--", label=f"outlier threshold {threshold:.3g}")
    ax.set(xlabel="reconstruction error (MSE)", ylabel="images", title="Reconstruction error")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_gallery(inputs: np.ndarray, outputs: np.ndarray, titles: list[str], path: Path) -> str:
    """Rows of inputs, reconstructions and squared-error maps, one column per image."""
    n = len(inputs)
    fig, axes = plt.subplots(3, n, figsize=(n * 1.6, 5.2), squeeze=False)
    errors = (outputs - inputs) ** 2
    error_max = float(errors.max()) or 1.0
    for i in range(n):
        for row, (image, cmap, limits) in enumerate(
            [
                (inputs[i, 0], "gray", None),
                (outputs[i, 0], "gray", (inputs[i, 0].min(), inputs[i, 0].max())),
                (errors[i, 0], "magma", (0, error_max)),
            ]
        ):
            ax = axes[row, i]
            ax.imshow(
                image, cmap=cmap, vmin=None if limits is None else limits[0], vmax=None if limits is None else limits[1]
            )
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(titles[i], fontsize=7)
    for row, name in enumerate(("input", "reconstruction", "squared error")):
        axes[row, 0].set_ylabel(name, fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_codes(points: np.ndarray, groups: list[str], method: str, path: Path) -> str:
    """2-D bottleneck codes as a scatter plot, one colour per group."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for group in dict.fromkeys(groups):
        chosen = np.array([g == group for g in groups])
        ax.scatter(
            points[chosen, 0],
            points[chosen, 1],
            s=10,
            alpha=0.7,
            label=f"{group} ({int(chosen.sum())})",
            marker="x" if group.startswith("non-chest") else "o",
        )
    ax.set(xlabel=f"{method} 1", ylabel=f"{method} 2", title=f"Bottleneck codes ({method})")
    ax.legend(fontsize=7)
    return _save(fig, path)
