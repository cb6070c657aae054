"""The real images an export checks against: the checkpoint's own split (or --calibration-data), preprocessed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from models.preprocessing import PreprocessSpec
from training import checkpoints
from training.datasets import LabelledImages, preprocess_all


@dataclass
class ExportData:
    """Real images for parity, int8 calibration and the fp32/int8 comparison, preprocessed with the model's spec."""

    source: str  # "checkpoint" (its own validation/train splits) or "--calibration-data ..."
    specs: list[str]
    evaluation: np.ndarray  # (N, 1, S, S) validation images
    evaluation_labels: np.ndarray | None  # (N, K) classifier labels (NaN = missing)
    calibration: np.ndarray  # (M, 1, S, S) training images (int8 calibration)
    own_split: bool


def _sample(data: LabelledImages, n: int, seed: int) -> LabelledImages:
    if len(data) <= n:
        return data
    return data.subset(np.sort(np.random.default_rng(seed).choice(len(data), size=n, replace=False)))


def load_export_data(
    checkpoint: dict[str, Any],
    spec: PreprocessSpec,
    *,
    override: list[str] | None,
    evaluation_images: int,
    calibration_images: int,
    seed: int = 0,
) -> ExportData:
    """The checkpoint's validation (evaluation) and training (calibration) splits, or those of --calibration-data."""
    specs = list(override or (checkpoint.get("args") or {}).get("data") or [])
    if not specs:
        raise ValueError("the checkpoint records no training data (args.data); pass --calibration-data KIND:PATH")
    try:
        splits = checkpoints.splits_from_checkpoint(checkpoint, data=override)
    except (FileNotFoundError, OSError) as error:
        hint = (
            "check the --calibration-data paths"
            if override
            else "run from the folder the model was trained in, or pass --calibration-data KIND:PATH"
        )
        raise FileNotFoundError(f"cannot rebuild the export's real images from {specs} ({error}); {hint}") from error
    evaluation = splits["val"] if len(splits["val"]) else splits["test"]
    if len(evaluation) == 0:
        raise ValueError(f"expected validation or test images in {specs} for the parity check, found none")
    calibration = splits["train"] if len(splits["train"]) else evaluation
    evaluation = _sample(evaluation, evaluation_images, seed)
    calibration = _sample(calibration, calibration_images, seed + 1)
    return ExportData(
        source="--calibration-data" if override else "checkpoint",
        specs=specs,
        evaluation=preprocess_all(evaluation, spec),
        evaluation_labels=evaluation.labels if checkpoint["kind"] == "classifier" else None,
        calibration=preprocess_all(calibration, spec),
        own_split=not override,
    )
