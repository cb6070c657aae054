from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from models.autoencoder import MASK_PATCH, AutoencoderConfig, AutoencoderScorer, ConvAutoencoder
from models.classifier import ClassifierConfig, XRayClassifier, load_encoder_weights


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Small models run fastest on one thread, and do not collapse when the CPUs are shared (OpenMP spin-waits)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


def _ae(backbone: str = "small_cnn", size: int = 64, **kwargs) -> ConvAutoencoder:
    config = AutoencoderConfig(backbone=backbone, input_size=size, width=8, bottleneck=16, **kwargs)
    return ConvAutoencoder(config).eval()


@pytest.mark.parametrize("backbone", ["small_cnn", "resnet18"])
@pytest.mark.parametrize("size", [28, 64, 128])
def test_reconstruction_has_the_input_shape(backbone: str, size: int) -> None:
    model = _ae(backbone, size)
    x = torch.randn(2, 1, size, size)
    with torch.no_grad():
        recon = model(x)
        code = model.encode(x)
        errors = model.reconstruction_error(x)
    assert recon.shape == x.shape
    assert code.shape == (2, 16)
    assert errors.shape == (2,)
    torch.testing.assert_close(errors, ((recon - x) ** 2).mean(dim=(1, 2, 3)))


def test_decoder_output_is_linear_not_squashed() -> None:
    model = _ae()
    with torch.no_grad():
        model.decoder[-1].bias.fill_(-3.0)  # normalised inputs go below 0; a sigmoid/ReLU output could not
        recon = model(torch.randn(1, 1, 64, 64))
    assert recon.max() < 0


def test_config_round_trips_and_rejects_bad_values() -> None:
    config = AutoencoderConfig(backbone="resnet18", input_size=128, bottleneck=32, noise_std=0.1, mask_prob=0.25)
    assert AutoencoderConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="mask_prob"):
        AutoencoderConfig(mask_prob=1.0)
    with pytest.raises(ValueError, match="backbone"):
        AutoencoderConfig(backbone="unet")
    with pytest.raises(ValueError, match="unknown AutoencoderConfig fields"):
        AutoencoderConfig.from_dict({"latent": 3})


def test_corrupt_is_identity_when_off() -> None:
    model = _ae()
    x = torch.randn(2, 1, 64, 64)
    assert torch.equal(model.corrupt(x), x)


def test_corrupt_adds_noise_of_the_configured_size() -> None:
    model = _ae(noise_std=0.2)
    x = torch.zeros(4, 1, 64, 64)
    noisy = model.corrupt(x, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(noisy, x)
    assert abs(float(noisy.std()) - 0.2) < 0.01
    again = model.corrupt(x, generator=torch.Generator().manual_seed(1))
    assert torch.equal(noisy, again)


def test_corrupt_zeroes_whole_patches() -> None:
    model = _ae(mask_prob=0.5)
    x = torch.ones(8, 1, 64, 64)
    masked = model.corrupt(x, generator=torch.Generator().manual_seed(2))
    assert set(masked.unique().tolist()) == {0.0, 1.0}
    assert 0.35 < float((masked == 0).float().mean()) < 0.65
    patches = masked.unfold(2, MASK_PATCH, MASK_PATCH).unfold(3, MASK_PATCH, MASK_PATCH)  # (B, 1, 8, 8, p, p)
    per_patch = patches.reshape(*patches.shape[:4], -1)
    assert torch.all(per_patch.min(dim=-1).values == per_patch.max(dim=-1).values)  # each patch all-0 or all-1


def test_corrupt_masks_sizes_that_are_not_a_multiple_of_the_patch() -> None:
    model = _ae(size=28, mask_prob=0.3, noise_std=0.1)
    x = torch.randn(2, 1, 28, 28)
    assert model.corrupt(x).shape == x.shape


@pytest.mark.parametrize("backbone", ["small_cnn", "resnet18"])
def test_autoencoder_encoder_initialises_a_classifier_bit_for_bit(backbone: str) -> None:
    ae = _ae(backbone)
    with torch.no_grad():  # make every tensor differ from a fresh init, BN statistics included
        for tensor in ae.encoder.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(torch.rand_like(tensor))
    config = ClassifierConfig(labels=("Abnormal",), backbone=backbone, input_size=64, width=8)

    direct = XRayClassifier(config)
    direct.encoder.load_state_dict(ae.encoder.state_dict())

    via_loader = XRayClassifier(config)
    loaded = load_encoder_weights(via_loader, ae.state_dict(), strict=True)  # keys "encoder.*"; decoder ignored
    assert set(loaded) == set(ae.encoder.state_dict())

    for classifier in (direct, via_loader):
        target = classifier.encoder.state_dict()
        assert target.keys() == ae.encoder.state_dict().keys()
        for key, value in ae.encoder.state_dict().items():
            assert torch.equal(target[key], value), key


def test_denoising_training_step_reduces_the_loss() -> None:
    x = torch.randn(8, 1, 32, 32).cumsum(dim=-1) / 8  # smooth-ish images
    model = ConvAutoencoder(AutoencoderConfig(input_size=32, width=8, bottleneck=16, noise_std=0.1, mask_prob=0.1))
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(30):
        loss = torch.nn.functional.mse_loss(model(model.corrupt(x, generator)), x)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])


def test_onnx_export_of_reconstruction_error_matches_torch(tmp_path: Path) -> None:
    model = _ae()
    path = tmp_path / "autoencoder.onnx"
    torch.onnx.export(
        AutoencoderScorer(model),
        (torch.randn(2, 1, 64, 64),),
        str(path),
        dynamo=True,
        opset_version=18,
        input_names=["image"],
        output_names=["error"],
        dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for size in (1, 3):
        x = torch.randn(size, 1, 64, 64)
        (errors,) = session.run(["error"], {"image": x.numpy()})
        with torch.no_grad():
            expected = model.reconstruction_error(x).numpy()
        assert errors.shape == (size,)
        assert np.abs(errors - expected).max() <= 1e-4
