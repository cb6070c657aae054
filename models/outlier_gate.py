"""The outlier gate's network signals, combined: reconstruction error and a feature-space distance.

Reconstruction error alone misses images the autoencoder happens to reconstruct well (textures, gradients, a flat
grey). The squared Mahalanobis distance of the autoencoder's bottleneck code to the training chest films (mean and a
shrunk shared covariance, Lee et al. 2018 style) sees how unlike a chest film the image's *content* is. Each
component is divided by its own threshold (a stated percentile of validation chest films), and the combined score is
the larger of the two; the combined threshold is set on the same validation films for a stated false-positive rate.
Parameters live in the autoencoder manifest's `outlier` field; numpy-only (the service applies them).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

FEATURE_OUTPUT = "code"


def mahalanobis(codes: np.ndarray, mean: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """Squared Mahalanobis distance of each (N, k) code to `mean` under `precision` (the inverse covariance)."""
    centred = np.asarray(codes, dtype=np.float64) - mean
    return np.einsum("ij,jk,ik->i", centred, precision, centred)


def component_scores(errors: np.ndarray, codes: np.ndarray | None, outlier: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Each component's score divided by its own threshold (1.0 = at its validation percentile), and "combined"."""
    scores = {"reconstruction": np.asarray(errors, dtype=np.float64) / float(outlier["threshold"])}
    feature = outlier.get("feature")
    if feature is not None and codes is not None:
        distance = mahalanobis(codes, np.asarray(feature["mean"]), np.asarray(feature["precision"]))
        scores["feature"] = distance / float(feature["threshold"])
    scores["combined"] = np.max(np.stack(list(scores.values())), axis=0)
    return scores


def combined_threshold(outlier: Mapping[str, Any]) -> float:
    """The combined score above which an image is an outlier (1.0 for manifests without one: the error alone)."""
    return float((outlier.get("combined") or {}).get("threshold", 1.0))
