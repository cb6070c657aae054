"""Training for real, on real data, in CI: floors that a broken pipeline cannot reach.

Each test trains a small model on 2 CPU cores (about a minute each) and asserts held-out quality.
"""

from __future__ import annotations

import numpy as np
import pytest

from models.labels import NIH1000_LABELS
from tests.conftest import require_shared
from training import train_classifier
from training.recipes import FAST_ADAMW

pytestmark = pytest.mark.slow


def _train(tmp_path, *argv: str) -> dict:
    args = train_classifier.get_args_parser().parse_args(
        [*argv, "--output-dir", str(tmp_path), "--threads", "2", "--quiet", "--bootstrap", "200"]
    )
    return train_classifier.main(args)


def _auroc(metrics: dict, label: str) -> float:
    return next(m["auroc"] for m in metrics["labels"] if m["label"] == label)


def test_pneumoniamnist_official_test_split_auroc(tmp_path) -> None:
    npz = require_shared("pneumoniamnist", "pneumoniamnist.npz")
    result = _train(
        tmp_path,
        "--data", f"medmnist:{npz}",
        "--input-size", "28",
        "--epochs", "6",
        "--batch-size", "64",
        "--ema-decay", "0.99",
    )  # fmt: skip
    metrics = result["metrics"]
    assert metrics["split"] == "test"
    pneumonia = next(m for m in metrics["labels"] if m["label"] == "Pneumonia")
    assert (pneumonia["positives"], pneumonia["negatives"]) == (390, 234)  # the official test split
    assert pneumonia["auroc"] >= 0.95, metrics
    assert pneumonia["ci_low"] < pneumonia["auroc"] < pneumonia["ci_high"]


def test_nih1000_patient_split_mean_auroc(tmp_path) -> None:
    csv = require_shared("nih1000", "Data_Entry_subset.csv")
    result = _train(
        tmp_path,
        "--data", f"nih:{csv}",
        "--labels", ",".join(NIH1000_LABELS),
        "--test-fraction", "0.25",
        "--val-fraction", "0.10",
        "--split-seed", "0",
        "--input-size", "64",
        "--epochs", "25",
        *FAST_ADAMW,
        "--pos-weight",
    )  # fmt: skip
    metrics = result["metrics"]
    mean = float(np.mean([_auroc(metrics, label) for label in NIH1000_LABELS]))
    assert mean >= 0.60, metrics
    assert _auroc(metrics, "Effusion") >= 0.70, metrics


def test_phantom_demo_model_learns_every_finding(tmp_path) -> None:
    result = _train(
        tmp_path,
        "--data", "phantoms:6000",
        "--input-size", "64",
        "--epochs", "10",
        "--batch-size", "32",
        *FAST_ADAMW,
    )  # fmt: skip
    aurocs = {m["label"]: m["auroc"] for m in result["metrics"]["labels"]}
    assert set(aurocs) >= {"Nodule", "Mass", "Effusion", "Cardiomegaly", "Pneumothorax", "Consolidation"}
    assert min(aurocs.values()) >= 0.9, aurocs
