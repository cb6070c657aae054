"""Convolutional autoencoder: outlier gate (reconstruction error), denoising variant, unsupervised pre-training.

The encoder is `build_encoder(...)` exactly as in the classifier, so a trained autoencoder initialises a classifier
of the same backbone/width/in_channels: `classifier.encoder.load_state_dict(ae.encoder.state_dict())`, or
`load_encoder_weights(classifier, ae.state_dict())`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from models.classifier import ENCODER_STRIDE, build_encoder, check_backbone

MASK_PATCH = 8  # side of the square patches `corrupt` zeroes (pixels)


@dataclass
class AutoencoderConfig:
    backbone: str = "small_cnn"  # same encoders as the classifier, so AE encoder weights initialise a classifier
    input_size: int = 64  # S: inputs and reconstructions are (B, in_channels, S, S)
    in_channels: int = 1
    width: int = 32  # base width of small_cnn and of the decoder
    bottleneck: int = 64  # k, the code size
    noise_std: float = 0.0  # denoising: std of Gaussian noise added to the (normalised) input in training
    mask_prob: float = 0.0  # denoising: probability that each 8x8 patch of the input is zeroed in training

    def __post_init__(self) -> None:
        check_backbone(self.backbone)
        if self.input_size < 8:
            raise ValueError(f"expected input_size >= 8, got {self.input_size}")
        if self.in_channels < 1 or self.width < 1 or self.bottleneck < 1:
            raise ValueError(
                f"expected in_channels, width, bottleneck >= 1, got {self.in_channels}, {self.width}, {self.bottleneck}"
            )
        if self.noise_std < 0:
            raise ValueError(f"expected noise_std >= 0, got {self.noise_std}")
        if not 0.0 <= self.mask_prob < 1.0:
            raise ValueError(f"expected mask_prob in [0, 1), got {self.mask_prob}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AutoencoderConfig:
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(
                f"unknown AutoencoderConfig fields {sorted(unknown)}; expected a subset of {sorted(known)}"
            )
        return cls(**data)


def _feature_shape(encoder: nn.Module, in_channels: int, size: int) -> tuple[int, int]:
    """(h, w) of the encoder's feature map for an S x S input (one dummy forward in eval mode)."""
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.no_grad():
            feats = encoder(torch.zeros(1, in_channels, size, size))
    except RuntimeError as error:
        raise ValueError(f"input_size {size} is too small for this encoder: {error}") from error
    finally:
        encoder.train(was_training)
    if feats.ndim != 4 or feats.shape[-1] < 1 or feats.shape[-2] < 1:
        raise ValueError(f"input_size {size} is too small for this encoder: feature map {tuple(feats.shape)}")
    return int(feats.shape[-2]), int(feats.shape[-1])


def _up_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="nearest"),
        nn.Conv2d(cin, cout, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class ConvAutoencoder(nn.Module):
    """encoder (B,C,h,w) -> to_code (B,k) -> from_code (B,D,h,w) -> decoder (B,in_channels,S,S), linear output.

    D = min(C, 8 * width) (= C for small_cnn): torchvision encoders end with 512-2048 channels and the decoder does
    not need them. The decoder doubles the resolution log2(stride) times (upsample + conv-BN-ReLU, halving channels)
    and, when the input size is not h * stride (28 px -> 2 x 2 -> 32), resizes bilinearly to exactly S x S before
    the last 3x3 conv.
    """

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder, channels = build_encoder(config.backbone, config.in_channels, config.width)
        h, w = _feature_shape(self.encoder, config.in_channels, config.input_size)
        self.feature_shape = (channels, h, w)
        base = min(channels, 8 * config.width)
        self.to_code = nn.Sequential(nn.Flatten(), nn.Linear(channels * h * w, config.bottleneck))
        self.from_code = nn.Sequential(
            nn.Linear(config.bottleneck, base * h * w), nn.Unflatten(1, (base, h, w)), nn.ReLU(inplace=True)
        )
        stages = ENCODER_STRIDE[config.backbone].bit_length() - 1  # log2(stride)
        layers: list[nn.Module] = []
        cin = base
        for i in range(stages):
            cout = max(8, base // 2 ** (i + 1))
            layers.append(_up_block(cin, cout))
            cin = cout
        size = config.input_size
        if (h * 2**stages, w * 2**stages) != (size, size):
            layers.append(nn.Upsample(size=(size, size), mode="bilinear", align_corners=False))
        layers.append(nn.Conv2d(cin, config.in_channels, kernel_size=3, padding=1))
        self.decoder = nn.Sequential(*layers)

    def encode(self, x: Tensor) -> Tensor:
        return self.to_code(self.encoder(x))  # (B, k)

    def decode(self, code: Tensor) -> Tensor:
        return self.decoder(self.from_code(code))  # (B, in_channels, S, S)

    def forward(self, x: Tensor) -> Tensor:
        """Reconstruction (B, in_channels, S, S) on the input's (normalised) scale: no output activation."""
        return self.decode(self.encode(x))

    def corrupt(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Denoising-AE input: add N(0, noise_std^2) noise, then zero each 8x8 patch with probability mask_prob.

        Returns `x` itself when both are off. Train with `loss(model(model.corrupt(x)), x)`.
        """
        noise_std, mask_prob = self.config.noise_std, self.config.mask_prob
        if noise_std == 0 and mask_prob == 0:
            return x
        out = x
        if noise_std > 0:
            out = out + noise_std * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        if mask_prob > 0:
            b, _, h, w = x.shape
            grid = (b, 1, -(-h // MASK_PATCH), -(-w // MASK_PATCH))
            keep = torch.rand(grid, generator=generator, device=x.device, dtype=x.dtype) >= mask_prob
            keep = keep.repeat_interleave(MASK_PATCH, 2).repeat_interleave(MASK_PATCH, 3)[:, :, :h, :w]
            out = out * keep.to(x.dtype)
        return out

    def reconstruction_error(self, x: Tensor) -> Tensor:
        """Mean squared reconstruction error per image (B,): the outlier score."""
        diff = self(x) - x  # (B, in_channels, S, S)
        return (diff * diff).flatten(1).mean(dim=1)


class AutoencoderScorer(nn.Module):
    """Export wrapper: `forward(x)` returns the per-image reconstruction error (B,) (what ONNX export traces)."""

    def __init__(self, model: ConvAutoencoder) -> None:
        super().__init__()
        self.model = model
        self.train(model.training)

    def forward(self, x: Tensor) -> Tensor:
        return self.model.reconstruction_error(x)
