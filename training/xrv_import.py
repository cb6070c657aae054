"""torchxrayvision models -> our classifier checkpoints (then `xray export` puts them into the registry).

    xray export --from-torchxrayvision densenet121-res224-all --name xrv-all --calibration-data nih:...

torchxrayvision (optional: `pip install -e '.[xrv]'`) keeps its label lists, operating thresholds and input
resolution in `xrv.models.model_urls`; its DenseNet-121 is torchvision's `features` + ReLU + average pool + linear:
exactly our `densenet121` encoder with one linear head, so the weights map key for key. Its input convention
(centre crop, grey values scaled to [-1024, 1024]) becomes a `PreprocessSpec`. Without `--xrv-no-weights` the
constructor downloads the published weights (a connected machine); tests build the architecture with `weights=None`.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import torch

from models.classifier import ClassifierConfig, XRayClassifier, load_encoder_weights
from models.preprocessing import PreprocessSpec
from training import checkpoints

# xrv's ResNet-50 cannot be built without downloading its weights, so it cannot be checked here: DenseNet-121 only
XRV_BACKBONES = {"densenet121": "DenseNet"}


def provenance(name: str, download_weights: bool) -> str:
    weights = "its published weights" if download_weights else "randomly initialised weights (--xrv-no-weights)"
    return (
        f"Converted from torchxrayvision {name} (Cohen et al., MIDL 2022; Apache-2.0 code) with {weights}; "
        "see the torchxrayvision documentation for the data sets and licences behind its weights."
    )


def xrv_spec(input_size: int) -> PreprocessSpec:
    """xrv feeds [-1024, 1024] grey values, centre-cropped: (x - 0.5) / (1 / 2048) maps our [0, 1] onto that."""
    return PreprocessSpec(
        size=input_size, resize="crop", interpolation="area", normalisation="none", mean=0.5, std=1.0 / 2048.0
    )


def load_xrv_model(name: str, *, download_weights: bool = True) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The xrv model for an architecture/weights name such as "densenet121-res224-all", and its model_urls entry."""
    try:
        # torchxrayvision silences all warnings process-wide on import; catch_warnings restores our filters after
        with warnings.catch_warnings():
            import torchxrayvision as xrv
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(
            "--from-torchxrayvision needs the optional package: pip install -e '.[xrv]'"
        ) from error
    entry = xrv.models.model_urls.get(name)
    backbone = name.split("-", 1)[0]
    if entry is None or backbone not in XRV_BACKBONES:
        known = sorted(k for k in xrv.models.model_urls if k.split("-", 1)[0] in XRV_BACKBONES)
        raise ValueError(f"expected a torchxrayvision weights name among {known}, got {name!r}")
    cls = getattr(xrv.models, XRV_BACKBONES[backbone])
    model = cls(weights=name) if download_weights else cls(num_classes=len(entry["labels"]))
    return model.eval(), entry


def convert(name: str, out_path: Path, *, download_weights: bool = True) -> Path:
    """Write one of our classifier checkpoints holding the xrv model's weights, labels, thresholds and input spec."""
    xrv_model, entry = load_xrv_model(name, download_weights=download_weights)
    backbone = name.split("-", 1)[0]
    input_size = int(entry.get("input_resolution", 224))
    state = xrv_model.state_dict()
    head_prefix = "classifier."
    weight, bias = state[head_prefix + "weight"], state[head_prefix + "bias"]  # (K, C), (K,)
    # xrv pads unused outputs with empty label names: keep only the named ones
    keep = [k for k, label in enumerate(entry["labels"]) if label]
    labels = tuple(entry["labels"][k] for k in keep)
    model = XRayClassifier(ClassifierConfig(labels=labels, backbone=backbone, input_size=input_size))
    load_encoder_weights(model, {k: v for k, v in state.items() if not k.startswith(head_prefix)}, strict=True)
    with torch.no_grad():
        model.head.weight.copy_(weight[keep])
        model.head.bias.copy_(bias[keep])
    thresholds_source = entry.get("op_threshs") or [math.nan] * len(entry["labels"])
    # op_threshs are xrv's calibrated operating points on the sigmoid output; 0.5 where it publishes none
    thresholds = {
        label: (0.5 if math.isnan(float(thresholds_source[k])) else float(thresholds_source[k]))
        for label, k in zip(labels, keep, strict=True)
    }
    spec = xrv_spec(input_size)
    checkpoints.save_checkpoint(
        out_path,
        {
            "kind": "classifier",
            "args": {"data": [], "source": f"torchxrayvision:{name}", "weights_downloaded": download_weights},
            "config": model.config.to_dict(),
            "spec": spec.to_dict(),
            "labels": list(labels),
            "model": model.state_dict(),
            "thresholds": thresholds,
            "metrics": {"source": "torchxrayvision", "description": entry.get("description", "")},
            "data": {},
            "code_version": checkpoints.code_version(),
        },
    )
    return out_path
