"""Several classifiers served as one: each member covers some of the labels, a label's logit is the mean of the logits
of the members that cover it.

This is how one manifest carries one model per data source (an NIH model for the NIH labels, a PneumoniaMNIST model
for Pneumonia) and small seed ensembles (members with the same labels), in one ONNX graph with the usual outputs.
Class activation maps are averaged the same way, each member's map resized to the finest member map first; their
spatial mean stays the label's logit only when the members' maps have the same size (they do for one backbone).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.classifier import ClassifierConfig, XRayClassifier


@dataclass
class EnsembleConfig:
    members: tuple[ClassifierConfig, ...]

    def __post_init__(self) -> None:
        self.members = tuple(self.members)
        if not self.members:
            raise ValueError("expected at least one ensemble member, got none")
        sizes = {member.input_size for member in self.members}
        channels = {member.in_channels for member in self.members}
        if len(sizes) != 1 or len(channels) != 1:
            raise ValueError(
                f"expected every ensemble member to take the same input, got input sizes {sorted(sizes)} and "
                f"channels {sorted(channels)}"
            )

    @property
    def labels(self) -> tuple[str, ...]:
        """Union of the members' labels, in order of first appearance."""
        return tuple(dict.fromkeys(label for member in self.members for label in member.labels))

    def to_dict(self) -> dict[str, Any]:
        return {"members": [member.to_dict() for member in self.members]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EnsembleConfig:
        if set(data) != {"members"}:
            raise ValueError(f"expected an ensemble config {{'members': [...]}}, got keys {sorted(data)}")
        return cls(tuple(ClassifierConfig.from_dict(member) for member in data["members"]))


def is_ensemble_config(data: dict[str, Any]) -> bool:
    return "members" in data


class ClassifierEnsemble(nn.Module):
    """Members' logits (and CAMs) mapped onto the union of their labels and averaged per label."""

    def __init__(self, config: EnsembleConfig) -> None:
        super().__init__()
        self.config = config
        self.members = nn.ModuleList(XRayClassifier(member) for member in config.members)
        labels = config.labels
        # mix[m] (K_m, K): member m's k-th logit contributes 1/n(label) to its label's column
        cover = Counter(label for member in config.members for label in member.labels)
        for m, member in enumerate(config.members):
            mix = torch.zeros(len(member.labels), len(labels))
            for k, label in enumerate(member.labels):
                mix[k, labels.index(label)] = 1.0 / cover[label]
            self.register_buffer(f"mix{m}", mix, persistent=False)

    @property
    def labels(self) -> tuple[str, ...]:
        return self.config.labels

    def _mix(self, m: int) -> Tensor:
        return getattr(self, f"mix{m}")

    def forward(self, x: Tensor) -> Tensor:
        return sum(member(x) @ self._mix(m) for m, member in enumerate(self.members))  # (B, K)

    def forward_with_cam(self, x: Tensor) -> tuple[Tensor, Tensor]:
        outputs = [member.forward_with_cam(x) for member in self.members]
        height = max(cam.shape[-2] for _, cam in outputs)
        width = max(cam.shape[-1] for _, cam in outputs)
        logits = sum(member_logits @ self._mix(m) for m, (member_logits, _) in enumerate(outputs))
        cams = []
        for m, (_, cam) in enumerate(outputs):
            if cam.shape[-2:] != (height, width):
                cam = F.interpolate(cam, size=(height, width), mode="bilinear", align_corners=False)
            cams.append(torch.einsum("bkhw,kj->bjhw", cam, self._mix(m)))
        return logits, sum(cams)
