"""Training-time augmentation of preprocessed radiographs (torch, on CPU or GPU, per image or per batch).

Works on the model input `(1, S, S)` / `(B, 1, S, S)` produced by `models.preprocessing.preprocess`, i.e. after the
intensity normalisation and `(x - mean) / std`. It imitates what differs between hospitals and films: field of view and
patient position (shift, rotation, zoom) and exposure (gamma on the [0, 1] scale, contrast, brightness, noise).
Horizontal flips are off by default because chest anatomy is not symmetric (heart on the left).

Randomness comes from one `torch.Generator`, so a seeded augmenter repeats itself. Note that DataLoader workers each
get a copy of the generator (and so the same draws); use `num_workers=0` with the in-memory `ImageTensorDataset`, or
pass `generator=None` to draw from torch's per-worker-seeded default generator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from models.preprocessing import PreprocessSpec


@dataclass
class AugmentConfig:
    """Ranges of the random transforms; every value drawn uniformly. Neutral values switch a transform off."""

    max_shift: float = 0.06  # fraction of the image size, each axis
    max_rotation: float = 7.0  # degrees
    scale: tuple[float, float] = (0.9, 1.1)  # zoom (> 1 magnifies): field-of-view variation
    brightness: float = 0.1  # additive, in normalised units
    contrast: tuple[float, float] = (0.85, 1.15)  # multiplies the deviation from the image mean
    gamma: tuple[float, float] = (0.85, 1.15)  # exposure, applied on the un-normalised [0, 1] scale
    noise_std: float = 0.0  # Gaussian noise, normalised units
    hflip: bool = False  # off by default: anatomy is not symmetric
    fill: Literal["min", "pad"] = "min"  # what moves in at the borders: the image's minimum, or the spec's pad value

    def __post_init__(self) -> None:
        for name in ("max_shift", "max_rotation", "brightness", "noise_std"):
            if getattr(self, name) < 0:
                raise ValueError(f"expected {name} >= 0, got {getattr(self, name)!r}")
        for name in ("scale", "contrast", "gamma"):
            low, high = getattr(self, name)
            if not 0 < low <= high:
                raise ValueError(f"expected {name} as (low, high) with 0 < low <= high, got {getattr(self, name)!r}")
            setattr(self, name, (float(low), float(high)))
        if self.fill not in ("min", "pad"):
            raise ValueError(f"expected fill in ('min', 'pad'), got {self.fill!r}")

    @classmethod
    def scaled(cls, strength: float, *, hflip: bool = False) -> AugmentConfig:
        """The default ranges widened (strength > 1) or narrowed (< 1) about their neutral values; 0 = neutral."""
        if strength < 0:
            raise ValueError(f"expected an augmentation strength >= 0, got {strength}")
        default = cls()

        def around_one(pair: tuple[float, float]) -> tuple[float, float]:
            low, high = pair
            return (max(0.05, 1.0 - (1.0 - low) * strength), 1.0 + (high - 1.0) * strength)

        return cls(
            max_shift=default.max_shift * strength,
            max_rotation=default.max_rotation * strength,
            scale=around_one(default.scale),
            brightness=default.brightness * strength,
            contrast=around_one(default.contrast),
            gamma=around_one(default.gamma),
            noise_std=default.noise_std * strength,
            hflip=hflip,
        )

    @classmethod
    def neutral(cls) -> AugmentConfig:
        """A configuration that changes nothing (a starting point for enabling single transforms)."""
        return cls(
            max_shift=0.0,
            max_rotation=0.0,
            scale=(1.0, 1.0),
            brightness=0.0,
            contrast=(1.0, 1.0),
            gamma=(1.0, 1.0),
            noise_std=0.0,
            hflip=False,
        )


@dataclass
class AugmentParams:
    """The drawn parameters for a batch of B images (all tensors on the images' device)."""

    shift: torch.Tensor  # (B, 2) (dx, dy) as fractions of the size; +dx moves the content right, +dy down
    rotation: torch.Tensor  # (B,) degrees, positive = counter-clockwise as displayed
    scale: torch.Tensor  # (B,) zoom factor, > 1 magnifies
    gamma: torch.Tensor  # (B,)
    contrast: torch.Tensor  # (B,)
    brightness: torch.Tensor  # (B,)
    flip: torch.Tensor  # (B,) bool
    noise: torch.Tensor | None = None  # (B, C, H, W) already scaled, or None


class RandomRadiographAugment:
    """Callable on a `(C, S, S)` or `(B, C, S, S)` float tensor; returns a new tensor of the same shape and dtype.

    Order: exposure (gamma on [0, 1], contrast, brightness) -> geometry (one affine resampling: rotation, zoom,
    shift; bilinear, borders filled with the image minimum or the spec's pad value) -> flip -> noise.
    """

    def __init__(self, config: AugmentConfig, spec: PreprocessSpec, generator: torch.Generator | None = None) -> None:
        self.config = config
        self.spec = spec
        self.generator = generator

    def __repr__(self) -> str:
        return f"RandomRadiographAugment({self.config!r})"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        batched = _as_batch(x)
        out = self.apply(batched, self.sample(batched.shape))
        return out if x.ndim == 4 else out[0]

    def sample(self, shape: torch.Size | tuple[int, ...]) -> AugmentParams:
        """Draw parameters for a batch of shape (B, C, H, W), always in the same order (repeatable per seed)."""
        c = self.config
        b = shape[0]

        def uniform(low: float, high: float, *size: int) -> torch.Tensor:
            r = torch.rand(*size, generator=self.generator, device=self._device)
            return (low + (high - low) * r).cpu()

        params = AugmentParams(
            shift=uniform(-c.max_shift, c.max_shift, b, 2),
            rotation=uniform(-c.max_rotation, c.max_rotation, b),
            scale=uniform(*c.scale, b),
            gamma=uniform(*c.gamma, b),
            contrast=uniform(*c.contrast, b),
            brightness=uniform(-c.brightness, c.brightness, b),
            flip=(uniform(0.0, 1.0, b) < 0.5) & torch.tensor(c.hflip),
        )
        if c.noise_std > 0:
            noise = torch.randn(*shape, generator=self.generator, device=self._device)
            params.noise = (noise * c.noise_std).cpu()
        return params

    def apply(self, x: torch.Tensor, params: AugmentParams) -> torch.Tensor:
        """Apply given parameters to a (B, C, H, W) batch; a transform whose parameters are all neutral is skipped,
        so neutral parameters return the input values exactly."""
        if x.ndim != 4:
            raise ValueError(f"expected a (B, C, H, W) batch, got shape {tuple(x.shape)}")
        dtype, device = x.dtype, x.device
        b = x.shape[0]

        def col(t: torch.Tensor) -> torch.Tensor:  # (B,) -> (B, 1, 1, 1) on x's device
            return t.to(device=device, dtype=dtype).view(b, 1, 1, 1)

        mean, std = self.spec.mean, self.spec.std
        out = x
        if (params.gamma != 1).any():
            unit = (out * std + mean).clamp(0.0, 1.0)  # back to the [0, 1] scale of the normalised film
            out = (unit ** col(params.gamma) - mean) / std
        if (params.contrast != 1).any():
            centre = out.mean(dim=(1, 2, 3), keepdim=True)
            out = (out - centre) * col(params.contrast) + centre
        if (params.brightness != 0).any():
            out = out + col(params.brightness)
        if (params.shift != 0).any() or (params.rotation != 0).any() or (params.scale != 1).any():
            out = self._warp(out, params)
        if params.flip.any():
            out = torch.where(params.flip.to(device).view(b, 1, 1, 1), out.flip(-1), out)
        if params.noise is not None:
            out = out + params.noise.to(device=device, dtype=dtype)
        return out if out is not x else x.clone()

    # -- internals -----------------------------------------------------------------------------------------------
    @property
    def _device(self) -> torch.device:
        return self.generator.device if self.generator is not None else torch.device("cpu")

    def _warp(self, x: torch.Tensor, params: AugmentParams) -> torch.Tensor:
        """One bilinear resampling for rotation + zoom + shift. In grid_sample's normalised coordinates (x right,
        y down, [-1, 1] across the image) the content moves by p' = s R p + t, so each output pixel samples the input
        at p = R^T (p' - t) / s."""
        b = x.shape[0]
        angle = params.rotation.double() * (math.pi / 180.0)
        cos, sin = torch.cos(angle), torch.sin(angle)
        # R^T for a counter-clockwise (as displayed, y down) rotation R = [[cos, sin], [-sin, cos]]
        inverse = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)  # (B, 2, 2)
        inverse = inverse / params.scale.double().view(b, 1, 1)
        t = 2.0 * params.shift.double().view(b, 2, 1)
        theta = torch.cat([inverse, -inverse @ t], dim=2).to(device=x.device, dtype=x.dtype)  # (B, 2, 3)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        if self.config.fill == "min":
            background = x.amin(dim=(1, 2, 3), keepdim=True)
        else:
            background = torch.full(
                (b, 1, 1, 1), (self.spec.pad_value - self.spec.mean) / self.spec.std, dtype=x.dtype, device=x.device
            )
        # zeros padding on (x - background) fills the borders with `background`
        warped = F.grid_sample(x - background, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return warped + background


def _as_batch(x: torch.Tensor) -> torch.Tensor:
    if x.ndim == 3:
        return x.unsqueeze(0)
    if x.ndim == 4:
        return x
    raise ValueError(f"expected a (C, S, S) image or a (B, C, S, S) batch, got shape {tuple(x.shape)}")
