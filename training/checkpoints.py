"""The one checkpoint API: write and read checkpoints, rebuild the network and the data split they were trained on.

A checkpoint is a dict saved with torch: `kind` ("classifier" | "autoencoder"), `args` (the trainer's argparse
namespace as JSON-friendly values), `config` (the network's dataclass), `spec` (PreprocessSpec), `model` (weights),
and per kind `labels`, `thresholds`, `metrics`, `outlier`, `history`, `data` (split summaries), `code_version`.
Export, evaluation, add-label and the trainers' final step all rebuild models and splits through this module, so
"the split a checkpoint was trained on" means one thing everywhere (including `--label-fraction`).
"""

from __future__ import annotations

import os
import subprocess
from argparse import Namespace
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from models.autoencoder import AutoencoderConfig, ConvAutoencoder
from models.classifier import ClassifierConfig, XRayClassifier
from models.ensemble import ClassifierEnsemble, EnsembleConfig, is_ensemble_config
from training.datasets import LabelledImages
from training.sources import limit_labelled_training, load_splits, policy_from_args

CHECKPOINT_FORMAT = 1
KINDS = ("classifier", "autoencoder")

# split settings of a checkpoint whose args lack them (e.g. one converted from torchxrayvision): the trainers' defaults
_SPLIT_DEFAULTS = {"val_fraction": 0.1, "test_fraction": 0.2, "split_seed": 0, "input_size": 128, "label_fraction": 1.0}


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Atomic write: a crash mid-save never leaves a half-written checkpoint behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"format": CHECKPOINT_FORMAT, **payload}, tmp)
    os.replace(tmp, path)


def jsonable_args(args: Namespace) -> dict[str, Any]:
    """A trainer's arguments as the checkpoint stores them: paths as strings, tuples as lists."""
    return {
        key: str(value) if isinstance(value, Path) else list(value) if isinstance(value, tuple) else value
        for key, value in vars(args).items()
    }


def load_checkpoint(path: str | Path, kind: str | None = None) -> dict[str, Any]:
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(checkpoint, dict) or "model" not in checkpoint:
        raise ValueError(f"expected a checkpoint written by this project at {path}, got {type(checkpoint).__name__}")
    if kind is not None and checkpoint.get("kind") != kind:
        raise ValueError(f"expected a {kind} checkpoint at {path}, got kind {checkpoint.get('kind')!r}")
    return checkpoint


def model_from_checkpoint(checkpoint: dict[str, Any]) -> nn.Module:
    """The checkpoint's network with its weights loaded, on the CPU, in eval mode."""
    kind = checkpoint.get("kind")
    model: nn.Module
    if kind == "classifier" and is_ensemble_config(checkpoint["config"]):
        model = ClassifierEnsemble(EnsembleConfig.from_dict(checkpoint["config"]))
    elif kind == "classifier":
        model = XRayClassifier(ClassifierConfig.from_dict(checkpoint["config"]))
    elif kind == "autoencoder":
        model = ConvAutoencoder(AutoencoderConfig.from_dict(checkpoint["config"]))
    else:
        raise ValueError(f"expected a checkpoint of kind {KINDS}, got kind {kind!r}")
    model.load_state_dict(checkpoint["model"])
    return model.eval()


def splits_from_checkpoint(
    checkpoint: dict[str, Any], data: Sequence[str] | None = None, *, labels: Sequence[str] | None = None
) -> dict[str, LabelledImages]:
    """The train/val/test split the checkpoint was trained on, rebuilt from its saved data specs and split settings.

    `data` replaces the checkpoint's data specs (same split settings). `labels` (default: the checkpoint's own)
    selects the label columns; a label named here must be in the data. `--label-fraction` is applied as in training.
    """
    saved = SimpleNamespace(**{**_SPLIT_DEFAULTS, **(checkpoint.get("args") or {})})
    specs = list(data or getattr(saved, "data", None) or [])
    if not specs:
        raise ValueError("the checkpoint records no training data (args.data); name the data specs explicitly")
    splits = load_splits(specs, policy_from_args(saved))
    if labels is not None:
        missing = [name for name in labels if name not in splits["train"].label_names]
        if missing:
            named = f"{missing[0]!r} is not a label" if len(missing) == 1 else f"{missing} are not labels"
            raise ValueError(f"{named} of {specs}; available: {list(splits['train'].label_names)}")
    chosen = labels if labels is not None else checkpoint.get("labels")
    if chosen:
        splits = {name: split.select_labels(chosen) for name, split in splits.items()}
    return limit_labelled_training(splits, float(saved.label_fraction), int(saved.split_seed))


def state_dict_from(path: Path) -> dict[str, torch.Tensor]:
    """A plain state dict file, or one of our checkpoints (its "model" entry)."""
    loaded = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(loaded, dict) and "model" in loaded and isinstance(loaded["model"], dict):
        return loaded["model"]
    if isinstance(loaded, dict) and "state_dict" in loaded:
        return loaded["state_dict"]
    if isinstance(loaded, dict):
        return loaded
    raise ValueError(f"expected a state dict or checkpoint at {path}, got {type(loaded).__name__}")


def code_version() -> str:
    """The git commit the code runs from (with "+dirty" for local changes), or "unknown" outside a checkout."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")
