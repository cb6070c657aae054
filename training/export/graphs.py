"""The torch modules that are exported: what each ONNX graph computes, and its output names."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from models.autoencoder import ConvAutoencoder
from models.classifier import XRayClassifier
from training import checkpoints


class ClassifierGraph(nn.Module):
    """What the classifier ONNX graph computes: (probabilities (B, K), cam (B, K, h, w) in logit units)."""

    def __init__(self, model: XRayClassifier) -> None:
        super().__init__()
        self.model = model.eval()

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        logits, cam = self.model.forward_with_cam(x)  # (B, K), (B, K, h, w)
        return torch.sigmoid(logits), cam


class AutoencoderGraph(nn.Module):
    """What the autoencoder ONNX graph computes: error (B,), code (B, k) (the bottleneck, for the gate's feature-space
    distance) [, reconstruction (B, 1, S, S)]."""

    def __init__(self, model: ConvAutoencoder, reconstruction: bool = False) -> None:
        super().__init__()
        self.model = model.eval()
        self.reconstruction = reconstruction

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        code = self.model.encode(x)  # (B, k)
        rec = self.model.decode(code)  # (B, 1, S, S)
        diff = rec - x
        error = (diff * diff).flatten(1).mean(dim=1)  # (B,) == ConvAutoencoder.reconstruction_error
        return (error, code, rec) if self.reconstruction else (error, code)


def output_names(kind: str, reconstruction: bool = False) -> list[str]:
    """The graph's output names, in order, for a checkpoint kind."""
    if kind == "classifier":
        return ["probabilities", "cam"]
    return ["error", "code", "reconstruction"] if reconstruction else ["error", "code"]


def build_graph(checkpoint: dict[str, Any], reconstruction: bool = False) -> nn.Module:
    """The export wrapper around the checkpoint's network, weights loaded, in eval mode."""
    kind = checkpoint.get("kind")
    if kind not in ("classifier", "autoencoder"):
        raise ValueError(f"expected a classifier or autoencoder checkpoint, got kind {kind!r}")
    model = checkpoints.model_from_checkpoint(checkpoint)
    if kind == "classifier":
        return ClassifierGraph(model).eval()
    return AutoencoderGraph(model, reconstruction).eval()
