from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torchvision

from models.classifier import (
    BACKBONES,
    ClassifierConfig,
    ClassifierWithCam,
    XRayClassifier,
    adapt_first_conv,
    build_encoder,
    load_encoder_weights,
)
from models.labels import PHANTOM_FINDINGS

LABELS = ("Abnormal", "Effusion", "Nodule")


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Small models run fastest on one thread, and do not collapse when the CPUs are shared (OpenMP spin-waits)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


def _model(backbone: str = "small_cnn", labels: tuple[str, ...] = LABELS, **kwargs) -> XRayClassifier:
    return XRayClassifier(ClassifierConfig(labels=labels, backbone=backbone, **kwargs)).eval()


@pytest.mark.parametrize("backbone", BACKBONES)
def test_every_backbone_gives_logits_and_cams_whose_mean_is_the_logit(backbone: str) -> None:
    model = _model(backbone, width=8)
    first_conv = next(m for m in model.encoder.modules() if isinstance(m, torch.nn.Conv2d))
    assert first_conv.in_channels == 1
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        logits = model(x)
        cam_logits, cams = model.forward_with_cam(x)
        feats = model.features(x)
    assert logits.shape == (2, len(LABELS))
    assert cams.shape == (2, len(LABELS), *feats.shape[-2:])
    assert feats.shape[1] == model.head.in_features
    torch.testing.assert_close(cam_logits, logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cams.mean(dim=(2, 3)), logits, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("size, grid", [(28, 2), (64, 4), (96, 6)])
def test_small_cnn_has_stride_16(size: int, grid: int) -> None:
    encoder, channels = build_encoder("small_cnn", in_channels=1, width=8)
    assert channels == 64
    assert encoder(torch.zeros(2, 1, size, size)).shape == (2, 64, grid, grid)
    model = _model(width=8)
    assert model(torch.zeros(2, 1, size, size)).shape == (2, len(LABELS))


def test_cam_at_each_location_is_the_head_applied_to_that_location() -> None:
    model = _model(width=8)
    x = torch.randn(2, 1, 64, 48)  # non-square: a swapped h/w would show
    with torch.no_grad():
        feats = model.features(x)  # (B, C, 4, 3)
        _, cams = model.forward_with_cam(x)
    assert cams.shape == (2, len(LABELS), 4, 3)
    for i, j in [(0, 0), (3, 0), (1, 2), (3, 2)]:
        torch.testing.assert_close(cams[:, :, i, j], model.head(feats[:, :, i, j]), atol=1e-5, rtol=1e-5)


def test_config_round_trips_and_rejects_bad_values() -> None:
    config = ClassifierConfig(labels=("Abnormal",), backbone="resnet18", input_size=128, width=16, dropout=0.2)
    data = config.to_dict()
    assert data["labels"] == ["Abnormal"]
    assert ClassifierConfig.from_dict(data) == config
    with pytest.raises(ValueError, match="backbone"):
        ClassifierConfig(labels=("a",), backbone="vgg16")
    with pytest.raises(ValueError, match="label"):
        ClassifierConfig(labels=())
    with pytest.raises(ValueError, match="unknown ClassifierConfig fields"):
        ClassifierConfig.from_dict({**data, "depth": 3})


def test_add_head_keeps_existing_logits_bit_identical() -> None:
    model = _model(width=8, dropout=0.3)
    x = torch.randn(3, 1, 64, 64)
    with torch.no_grad():
        before = model(x)
        model.add_head("Mass")
        after = model(x)
        _, cams = model.forward_with_cam(x)
    assert model.config.labels == (*LABELS, "Mass")
    assert model.head.out_features == len(LABELS) + 1
    assert after.shape == (3, len(LABELS) + 1) and cams.shape[1] == len(LABELS) + 1
    assert torch.equal(after[:, : len(LABELS)], before)
    with pytest.raises(ValueError, match="already"):
        model.add_head("Mass")


def test_new_head_trains_on_a_frozen_encoder() -> None:
    model = _model(width=8)
    model.add_head("Mass")
    model.freeze_encoder()
    encoder_before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    head_before = model.head.weight.detach().clone()
    optimiser = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    loss = model(torch.randn(4, 1, 32, 32))[:, -1].sum()
    loss.backward()
    optimiser.step()
    assert all(torch.equal(v, model.encoder.state_dict()[k]) for k, v in encoder_before.items())
    assert not torch.equal(model.head.weight[-1], head_before[-1])


def test_adapt_first_conv_sums_rgb_into_grey() -> None:
    state = {"conv1.weight": torch.randn(64, 3, 7, 7), "fc.weight": torch.randn(10, 512)}
    grey = adapt_first_conv(state, "conv1.weight", 1)
    assert grey["conv1.weight"].shape == (64, 1, 7, 7)
    torch.testing.assert_close(grey["conv1.weight"], state["conv1.weight"].sum(dim=1, keepdim=True))
    assert grey["fc.weight"] is state["fc.weight"]
    two = adapt_first_conv(state, "conv1.weight", 2)["conv1.weight"]
    assert two.shape == (64, 2, 7, 7)
    # a grey image fed to every channel responds as it did through the RGB conv
    torch.testing.assert_close(two.sum(dim=1), state["conv1.weight"].sum(dim=1))
    torch.testing.assert_close(two[:, 0], two[:, 1])


def test_imagenet_shaped_resnet18_weights_load_into_a_one_channel_classifier() -> None:
    imagenet = torchvision.models.resnet18(weights=None).state_dict()  # the shape of a file a user brings
    model = _model("resnet18")
    loaded = load_encoder_weights(model, imagenet, strict=True)
    encoder_state = model.encoder.state_dict()
    assert set(loaded) == set(encoder_state)
    torch.testing.assert_close(encoder_state["conv1.weight"], imagenet["conv1.weight"].sum(dim=1, keepdim=True))
    for key in loaded:
        if key != "conv1.weight":
            assert torch.equal(encoder_state[key], imagenet[key]), key


def test_slim_resnet18_at_width_64_is_resnet18_and_narrower_widths_scale_the_stages() -> None:
    imagenet = torchvision.models.resnet18(weights=None).state_dict()
    full = _model("slim_resnet18", width=64)
    assert len(load_encoder_weights(full, imagenet, strict=True)) == len(full.encoder.state_dict())
    slim = _model("slim_resnet18", width=16)
    assert slim.head.in_features == 128
    with torch.no_grad():
        assert slim.features(torch.zeros(1, 1, 64, 64)).shape == (1, 128, 2, 2)  # stride 32
    assert sum(p.numel() for p in slim.parameters()) < sum(p.numel() for p in full.parameters()) / 15


def test_imagenet_shaped_densenet_with_old_key_names_loads() -> None:
    imagenet = torchvision.models.densenet121(weights=None).state_dict()
    old_names = {k.replace("norm1.", "norm.1.").replace("conv2.", "conv.2."): v for k, v in imagenet.items()}
    model = _model("densenet121")
    loaded = load_encoder_weights(model, old_names, strict=True)
    assert len(loaded) == len(model.encoder.state_dict())
    assert torch.equal(
        model.encoder.state_dict()["features.denseblock1.denselayer1.norm1.weight"],
        imagenet["features.denseblock1.denselayer1.norm1.weight"],
    )


def test_classifier_checkpoint_encoder_loads_into_another_classifier() -> None:
    source, target = _model(width=8), _model(width=8, labels=("Abnormal",))
    loaded = load_encoder_weights(target, source.state_dict(), strict=True)
    assert loaded and all(torch.equal(source.encoder.state_dict()[k], target.encoder.state_dict()[k]) for k in loaded)


def test_load_encoder_weights_names_expected_and_received_keys_when_nothing_matches() -> None:
    model = _model("resnet18")
    with pytest.raises(ValueError, match=r"expected keys like .*conv1\.weight.*got keys like .*vit"):
        load_encoder_weights(model, {"vit.patch_embed.weight": torch.zeros(3)})
    small = _model(width=8)
    with pytest.raises(ValueError, match="no encoder weights matched"):
        load_encoder_weights(small, torchvision.models.resnet18(weights=None).state_dict())


@pytest.mark.parametrize("backbone", ["small_cnn", "slim_resnet18", "resnet18"])
def test_onnx_export_of_logits_and_cams_matches_torch(backbone: str, tmp_path: Path) -> None:
    model = _model(backbone, width=8)
    path = tmp_path / "model.onnx"
    batch = torch.export.Dim("batch")
    torch.onnx.export(
        ClassifierWithCam(model),
        (torch.randn(2, 1, 64, 64),),
        str(path),
        dynamo=True,
        opset_version=18,
        input_names=["image"],
        output_names=["logits", "cam"],
        dynamic_shapes={"x": {0: batch}},
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for size in (1, 3):
        x = torch.randn(size, 1, 64, 64)
        logits, cams = session.run(["logits", "cam"], {"image": x.numpy()})
        with torch.no_grad():
            expected_logits, expected_cams = model.forward_with_cam(x)
        assert logits.shape == (size, len(LABELS))
        assert np.abs(logits - expected_logits.numpy()).max() <= 1e-4
        assert np.abs(cams - expected_cams.numpy()).max() <= 1e-4


def test_small_cnn_learns_cardiomegaly_from_phantoms() -> None:
    """~150 SGD steps on 64 px phantoms: the heart-size finding must be learnt (a broken pipeline stays near 0.5)."""
    from sklearn.metrics import roc_auc_score

    from models.phantoms import phantom_set
    from models.preprocessing import PreprocessSpec, preprocess

    spec = PreprocessSpec(size=64)

    def dataset(n: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
        images, labels, _ = phantom_set(n, size=64, seed=seed, prevalence=0.4)
        return torch.from_numpy(np.stack([preprocess(image, spec) for image in images])), labels  # (N, 1, 64, 64)

    x, labels = dataset(256, seed=0)
    y = torch.from_numpy(labels)  # (N, K)
    model = XRayClassifier(ClassifierConfig(labels=PHANTOM_FINDINGS, backbone="small_cnn", input_size=64, width=16))
    optimiser = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(150):
        idx = torch.randint(0, len(x), (32,), generator=generator)
        loss = loss_fn(model(x[idx]), y[idx])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()

    def aurocs(inputs: torch.Tensor, targets: np.ndarray) -> dict[str, float]:
        with torch.no_grad():
            scores = torch.sigmoid(model(inputs)).numpy()
        return {
            name: round(float(roc_auc_score(targets[:, k], scores[:, k])), 3) for k, name in enumerate(PHANTOM_FINDINGS)
        }

    train = aurocs(x, labels)
    held_out = aurocs(*dataset(128, seed=1))
    print(f"AUROC after 150 steps: training set {train}; held-out {held_out}")
    assert train["Cardiomegaly"] > 0.8, train
    assert held_out["Cardiomegaly"] > 0.75, held_out  # learnt the heart, not the 256 films
