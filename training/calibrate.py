"""Operating points and calibration: per-label thresholds and Platt scaling for classifiers, the outlier threshold
for the autoencoder."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_curve

from models.calibration import METHOD as CALIBRATION_METHOD
from models.calibration import logit
from models.outlier_gate import FEATURE_OUTPUT, component_scores, mahalanobis


def youden_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """Threshold maximising sensitivity + specificity - 1 over the known labels; 0.5 when undefined."""
    y, s = _known(labels, scores)
    if y.size == 0 or y.min() == y.max():
        return 0.5
    fpr, tpr, thresholds = roc_curve(y, s)
    best = int(np.argmax(tpr - fpr))
    return _finite(thresholds[best])


def sensitivity_threshold(labels: np.ndarray, scores: np.ndarray, target: float) -> float:
    """Highest threshold whose sensitivity on the known labels reaches `target` (e.g. 0.95 for screening)."""
    if not 0.0 < target <= 1.0:
        raise ValueError(f"expected a target sensitivity in (0, 1], got {target}")
    y, s = _known(labels, scores)
    if y.size == 0 or y.min() == y.max():
        return 0.5
    fpr, tpr, thresholds = roc_curve(y, s)
    reaching = np.flatnonzero(tpr >= target)
    return _finite(thresholds[reaching[0]])


def label_thresholds(
    label_names: Sequence[str],
    labels: np.ndarray,
    probabilities: np.ndarray,
    *,
    target_sensitivity: float | None = None,
) -> dict[str, float]:
    """One threshold per label: Youden's J by default, or the target sensitivity when given."""
    thresholds = {}
    for k, name in enumerate(label_names):
        if target_sensitivity is None:
            thresholds[name] = youden_threshold(labels[:, k], probabilities[:, k])
        else:
            thresholds[name] = sensitivity_threshold(labels[:, k], probabilities[:, k], target_sensitivity)
    return thresholds


def outlier_threshold(errors: np.ndarray, percentile: float = 99.0) -> float:
    """Score above which an image is an outlier: the given percentile of in-distribution validation scores."""
    if not 50.0 <= percentile <= 100.0:
        raise ValueError(f"expected a percentile in [50, 100], got {percentile}")
    errors = np.asarray(errors, dtype=np.float64)
    if errors.size == 0:
        raise ValueError("expected validation reconstruction errors, got an empty array")
    return float(np.percentile(errors, percentile))


def _known(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    known = ~np.isnan(labels)
    return labels[known].astype(np.int64), scores[known]


def _finite(threshold: float) -> float:
    # roc_curve's first threshold is +inf (nothing predicted positive): clamp into the probability range
    return float(min(max(threshold, 0.0), 1.0)) if np.isfinite(threshold) else 1.0


def platt_parameters(
    label_names: Sequence[str], labels: np.ndarray, probabilities: np.ndarray, *, min_per_class: int = 3
) -> dict[str, Any]:
    """Per-label Platt scaling fitted on (N, K) validation labels (NaN = missing) and raw probabilities.

    A label with fewer than `min_per_class` known positives or negatives, or whose fit would reverse the ranking
    (scale <= 0), keeps its raw probabilities (no entry). Returns the `calibration` dict of checkpoints/manifests."""
    fitted: dict[str, dict[str, float]] = {}
    counts: dict[str, int] = {}
    for k, name in enumerate(label_names):
        y, p = _known(labels[:, k], probabilities[:, k])
        counts[name] = int(y.size)
        if min(int(y.sum()), int(y.size - y.sum())) < min_per_class:
            continue
        model = LogisticRegression(C=100.0, max_iter=1000).fit(logit(p)[:, None], y)
        scale, bias = float(model.coef_[0, 0]), float(model.intercept_[0])
        if scale > 0:
            fitted[name] = {"scale": scale, "bias": bias}
    return {"method": CALIBRATION_METHOD, "labels": fitted, "fitted_on": {"split": "val", "known_labels": counts}}


def feature_gate(
    train_codes: np.ndarray,
    val_codes: np.ndarray,
    val_errors: np.ndarray,
    error_threshold: float,
    *,
    percentile: float = 99.0,
    gate_percentile: float = 98.0,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The gate's feature-space component and combined threshold: ("feature", "combined") entries of `outlier`.

    Mean and Ledoit-Wolf shrunk covariance of the training films' codes (stable with a few hundred films and a
    64-d code); the distance threshold is `percentile` of the validation films' distances; the combined threshold
    is `gate_percentile` of their combined scores (so about 100 - gate_percentile % of chest films are gated)."""
    from sklearn.covariance import LedoitWolf

    fitted = LedoitWolf().fit(np.asarray(train_codes, dtype=np.float64))
    mean = np.asarray(train_codes, dtype=np.float64).mean(axis=0)
    distances = mahalanobis(val_codes, mean, fitted.precision_)
    feature = {
        "kind": "mahalanobis",
        "output": FEATURE_OUTPUT,
        "mean": mean.tolist(),
        "precision": fitted.precision_.tolist(),
        "shrinkage": float(fitted.shrinkage_),
        "threshold": outlier_threshold(distances, percentile),
        "percentile": percentile,
        "train_images": int(len(train_codes)),
    }
    scores = component_scores(val_errors, val_codes, {"threshold": error_threshold, "feature": feature})["combined"]
    threshold = outlier_threshold(scores, gate_percentile)
    combined = {
        "rule": "max(error / threshold, distance / feature.threshold)",
        "threshold": threshold,
        "percentile": gate_percentile,
        "val_false_positive_rate": float(np.mean(scores > threshold)),
    }
    return feature, combined
