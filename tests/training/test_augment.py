"""Augmentation of preprocessed radiographs: shapes, neutrality, repeatability and the direction of each transform."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from models.preprocessing import PreprocessSpec, preprocess
from training.augment import AugmentConfig, AugmentParams, RandomRadiographAugment

NIH = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "nih1000"
SPEC = PreprocessSpec(size=64)
S = 64


def _blob(row: float, col: float, size: int = S, sigma: float = 3.0) -> torch.Tensor:
    """(1, S, S) normalised image: a bright Gaussian spot on the darkest background."""
    rows, cols = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                                indexing="ij")  # fmt: skip
    unit = torch.exp(-((rows - row) ** 2 + (cols - col) ** 2) / (2 * sigma**2))
    return ((unit - SPEC.mean) / SPEC.std).unsqueeze(0)


def _centre_of_mass(x: torch.Tensor) -> tuple[float, float]:
    weight = (x - x.min()).squeeze(0)
    rows, cols = torch.meshgrid(torch.arange(weight.shape[0]), torch.arange(weight.shape[1]), indexing="ij")
    total = weight.sum()
    return float((weight * rows).sum() / total), float((weight * cols).sum() / total)


def _params(b: int = 1, **values) -> AugmentParams:
    neutral = {
        "shift": torch.zeros(b, 2),
        "rotation": torch.zeros(b),
        "scale": torch.ones(b),
        "gamma": torch.ones(b),
        "contrast": torch.ones(b),
        "brightness": torch.zeros(b),
        "flip": torch.zeros(b, dtype=torch.bool),
    }
    neutral.update({k: torch.as_tensor(v, dtype=neutral[k].dtype).reshape(neutral[k].shape) for k, v in values.items()})
    return AugmentParams(**neutral)


def _real_or_blobs() -> torch.Tensor:
    """(4, 1, S, S): real nih1000 radiographs when the shared data is present, else blobs."""
    files = sorted(NIH.glob("train/*/*.png"))[:4]
    if len(files) == 4:
        from models.imaging import decode_file

        return torch.from_numpy(np.stack([preprocess(decode_file(f), SPEC) for f in files]))
    return torch.stack([_blob(20 + 5 * i, 30) for i in range(4)])


def _seeded(config: AugmentConfig | None = None, seed: int = 0) -> RandomRadiographAugment:
    return RandomRadiographAugment(config or AugmentConfig(), SPEC, torch.Generator().manual_seed(seed))


def test_shape_and_dtype_preserved():
    batch = _real_or_blobs()
    augment = _seeded(AugmentConfig(noise_std=0.05, hflip=True))
    out = augment(batch)
    assert out.shape == batch.shape and out.dtype == torch.float32 and torch.isfinite(out).all()
    single = augment(batch[0])
    assert single.shape == (1, S, S) and single.dtype == torch.float32
    double = augment(batch.double())
    assert double.dtype == torch.float64
    with pytest.raises(ValueError, match="expected"):
        augment(batch[0, 0])


def test_neutral_config_is_the_identity():
    batch = _real_or_blobs()
    out = _seeded(AugmentConfig.neutral())(batch)
    assert torch.equal(out, batch) and out is not batch
    assert torch.equal(_seeded(AugmentConfig.neutral())(batch[1]), batch[1])


def test_default_config_changes_the_image_within_the_normalised_range():
    batch = _real_or_blobs()
    out = _seeded()(batch)
    assert not torch.equal(out, batch) and torch.isfinite(out).all()
    for a, b in zip(out, batch, strict=True):
        assert not torch.equal(a, b)
        # exposure changes are mild: the values stay near the preprocessed range (here [-2, 2])
        assert b.min() - 1.0 < a.min() and a.max() < b.max() + 1.0


def test_same_seed_repeats_and_other_seeds_differ():
    batch = _real_or_blobs()
    first, again, other = _seeded(seed=7), _seeded(seed=7), _seeded(seed=8)
    for _ in range(3):
        a, b, c = first(batch), again(batch), other(batch)
        assert torch.equal(a, b)
        assert not torch.equal(a, c)
    # each image in a batch gets its own draw
    same = torch.stack([batch[0]] * 2)
    out = _seeded(seed=1)(same)
    assert not torch.equal(out[0], out[1])


@pytest.mark.parametrize(("dx", "dy"), [(0.1, 0.0), (-0.1, 0.0), (0.0, 0.1), (0.08, -0.05)])
def test_explicit_shift_moves_the_centre_of_mass(dx, dy):
    image = _blob(32, 32).unsqueeze(0)
    out = _seeded().apply(image, _params(shift=[dx, dy]))
    row, col = _centre_of_mass(out[0])
    row0, col0 = _centre_of_mass(image[0])
    assert col - col0 == pytest.approx(dx * S, abs=0.3)  # +dx moves the content right
    assert row - row0 == pytest.approx(dy * S, abs=0.3)  # +dy moves it down


def test_random_shift_moves_the_centre_of_mass_by_the_drawn_amount():
    config = dataclasses.replace(AugmentConfig.neutral(), max_shift=0.1)
    augment = _seeded(config, seed=5)
    image = torch.stack([_blob(32, 32)] * 6)
    params = augment.sample(image.shape)
    assert (params.shift.abs() <= 0.1).all() and (params.shift.abs() > 0).all()
    out = augment.apply(image, params)
    row0, col0 = _centre_of_mass(image[0])
    for i in range(6):
        row, col = _centre_of_mass(out[i])
        assert col - col0 == pytest.approx(float(params.shift[i, 0]) * S, abs=0.3)
        assert row - row0 == pytest.approx(float(params.shift[i, 1]) * S, abs=0.3)


def test_rotation_is_counter_clockwise_as_displayed_and_zoom_magnifies():
    image = _blob(31.5, 47.5).unsqueeze(0)  # a spot 16 px right of the centre (31.5, 31.5)
    rotated = _seeded().apply(image, _params(rotation=90.0))
    row, col = _centre_of_mass(rotated[0])
    assert row == pytest.approx(15.5, abs=0.3) and col == pytest.approx(31.5, abs=0.3)  # now 16 px above it

    spot = _blob(32, 32).unsqueeze(0)
    zoomed = _seeded().apply(spot, _params(scale=1.5))
    above = lambda x: int((x > 0).sum())  # noqa: E731 - pixels brighter than mid-grey
    assert above(zoomed) > 1.8 * above(spot)


def test_borders_fill_with_minimum_or_pad_value():
    image = _real_or_blobs()[:1] + 1.0  # background well above the pad value
    shifted = _seeded().apply(image, _params(shift=[0.25, 0.0]))
    assert torch.allclose(shifted[0, 0, :, :10], image.amin(), atol=1e-5)
    pad_config = dataclasses.replace(AugmentConfig(), fill="pad")
    padded = RandomRadiographAugment(pad_config, SPEC).apply(image, _params(shift=[0.25, 0.0]))
    pad = (SPEC.pad_value - SPEC.mean) / SPEC.std
    assert torch.allclose(padded[0, 0, :, :10], torch.tensor(pad), atol=1e-5)


def test_gamma_works_on_the_unit_scale_and_contrast_keeps_the_mean():
    unit = torch.tensor([0.0, 0.25, 0.5, 1.0]).view(1, 1, 2, 2)
    x = (unit - SPEC.mean) / SPEC.std
    out = _seeded().apply(x, _params(gamma=2.0))
    torch.testing.assert_close(out * SPEC.std + SPEC.mean, unit**2)
    contrasted = _seeded().apply(x, _params(contrast=1.5))
    torch.testing.assert_close(contrasted.mean(), x.mean())
    torch.testing.assert_close(contrasted.std(), 1.5 * x.std())
    brighter = _seeded().apply(x, _params(brightness=0.1))
    torch.testing.assert_close(brighter, x + 0.1)


def test_flip_off_by_default_and_noise_level():
    augment = _seeded()
    assert not augment.sample((256, 1, S, S)).flip.any()
    flipping = _seeded(dataclasses.replace(AugmentConfig.neutral(), hflip=True))
    flips = flipping.sample((256, 1, S, S)).flip
    assert 0.3 < flips.float().mean() < 0.7
    image = _blob(32, 20).unsqueeze(0)
    mirrored = flipping.apply(image, _params(flip=True))
    torch.testing.assert_close(mirrored, image.flip(-1))

    noisy = _seeded(dataclasses.replace(AugmentConfig.neutral(), noise_std=0.2))
    zeros = torch.zeros(4, 1, S, S)
    assert float(noisy(zeros).std()) == pytest.approx(0.2, rel=0.05)


def test_config_validation():
    with pytest.raises(ValueError, match="max_shift"):
        AugmentConfig(max_shift=-0.1)
    with pytest.raises(ValueError, match="gamma"):
        AugmentConfig(gamma=(1.2, 0.8))
    with pytest.raises(ValueError, match="fill"):
        AugmentConfig(fill="mean")
