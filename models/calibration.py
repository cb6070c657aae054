"""Probability calibration: per-label Platt scaling, applied the same way in training, evaluation and serving.

A classifier trained with positive weighting (`--pos-weight`) ranks well but its sigmoid outputs overstate every
finding (measured on the first shipped model: Atelectasis shown at 54 % with a prevalence under 10 %). Per label,
`p = sigmoid(scale * logit(p_raw) + bias)`, fitted on the validation split, maps the network's output onto observed
frequencies; with scale > 0 it keeps the ranking (AUROC unchanged). Parameters live in the checkpoint and in the
manifest's `calibration` field, so the ONNX graph stays as exported and a site can refit them without retraining.
numpy-only (the service uses it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

METHOD = "platt"
_EPS = 1e-7


def logit(probabilities: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(probabilities, dtype=np.float64), _EPS, 1.0 - _EPS)
    return np.log(p) - np.log1p(-p)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


def calibrate(probabilities: np.ndarray, labels: Sequence[str], calibration: Mapping[str, Any] | None) -> np.ndarray:
    """Calibrated probabilities of raw ones shaped (..., K) in the order of `labels`; labels without parameters (or
    no calibration at all) pass through unchanged."""
    raw = np.asarray(probabilities, dtype=np.float64)
    parameters = (calibration or {}).get("labels") or {}
    if not parameters:
        return raw
    if (calibration or {}).get("method", METHOD) != METHOD:
        raise ValueError(f"expected calibration method {METHOD!r}, got {calibration.get('method')!r}")
    if raw.shape[-1] != len(labels):
        raise ValueError(f"expected probabilities for {len(labels)} labels, got shape {raw.shape}")
    scale = np.array([float(parameters.get(name, {}).get("scale", 1.0)) for name in labels])
    bias = np.array([float(parameters.get(name, {}).get("bias", 0.0)) for name in labels])
    calibrated = sigmoid(scale * logit(raw) + bias)
    untouched = np.array([name not in parameters for name in labels])
    return np.where(untouched, raw, calibrated)
