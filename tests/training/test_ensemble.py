"""Classifier ensembles: per-label averaging of members' logits and maps, `xray train ensemble` (calibrated on the
members' shared validation split) and its export as one ONNX graph; the loss options the recipe search uses."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.classifier import ClassifierConfig
from models.ensemble import ClassifierEnsemble, EnsembleConfig
from models.preprocessing import PreprocessSpec
from models.registry import Registry
from tests.conftest import require_shared
from training import calibrate, checkpoints, common, ensemble, export, train_classifier
from training.augment import AugmentConfig
from training.datasets import preprocess_all

torch.set_num_threads(1)


def _ensemble(*label_sets: tuple[str, ...], backbone: str = "small_cnn") -> ClassifierEnsemble:
    torch.manual_seed(0)
    configs = tuple(ClassifierConfig(labels=labels, backbone=backbone, input_size=32, width=8) for labels in label_sets)
    return ClassifierEnsemble(EnsembleConfig(configs)).eval()


def test_a_label_gets_the_mean_logit_of_the_members_that_cover_it() -> None:
    model = _ensemble(("Abnormal", "Nodule"), ("Abnormal", "Mass"), ("Mass",))
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        first, second, third = (member(x) for member in model.members)
        logits = model(x)
    assert model.labels == ("Abnormal", "Nodule", "Mass")
    torch.testing.assert_close(logits[:, 0], (first[:, 0] + second[:, 0]) / 2)
    torch.testing.assert_close(logits[:, 1], first[:, 1])
    torch.testing.assert_close(logits[:, 2], (second[:, 1] + third[:, 0]) / 2)


def test_ensemble_maps_average_like_the_logits_and_keep_their_spatial_mean() -> None:
    model = _ensemble(("Abnormal", "Nodule"), ("Abnormal",))
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        logits, cam = model.forward_with_cam(x)
    assert cam.shape == (2, 2, 2, 2)  # small_cnn: stride 16
    torch.testing.assert_close(cam.mean(dim=(2, 3)), logits)
    torch.testing.assert_close(logits, model(x))


def test_members_must_take_the_same_input() -> None:
    small = ClassifierConfig(labels=("Abnormal",), input_size=32)
    large = ClassifierConfig(labels=("Abnormal",), input_size=64)
    with pytest.raises(ValueError, match="same input"):
        EnsembleConfig((small, large))


def _member(out_dir, labels: str, seed: int, *extra: str):
    argv = ["--data", "phantoms:240", "--labels", labels, "--input-size", "32", "--width", "8", "--epochs", "3",
            "--batch-size", "32", "--optimizer", "adamw", "--lr", "0.003", "--threads", "1", "--quiet",
            "--bootstrap", "0", "--seed", str(seed), "--output-dir", str(out_dir), *extra]  # fmt: skip
    return train_classifier.main(train_classifier.get_args_parser().parse_args(argv))["checkpoint"]


@pytest.fixture(scope="module")
def members(tmp_path_factory) -> list:
    root = tmp_path_factory.mktemp("members")
    return [_member(root / "a", "Abnormal,Nodule", 0), _member(root / "b", "Abnormal,Mass", 1)]


def test_train_ensemble_calibrates_the_union_and_exports_one_graph(members, tmp_path) -> None:
    args = ensemble.get_args_parser().parse_args(
        [*map(str, members), "--output-dir", str(tmp_path / "ens"), "--bootstrap", "0", "--threads", "1"]
    )
    result = ensemble.main(args)
    checkpoint = checkpoints.load_checkpoint(result["checkpoint"], kind="classifier")
    assert checkpoint["labels"] == ["Abnormal", "Nodule", "Mass"]
    assert set(checkpoint["thresholds"]) == set(checkpoint["labels"])
    assert {m["label"] for m in checkpoint["metrics"]["labels"]} == set(checkpoint["labels"])
    # the rebuilt ensemble gives the members' logits mixed as documented
    model = checkpoints.model_from_checkpoint(checkpoint)
    parts = [checkpoints.model_from_checkpoint(checkpoints.load_checkpoint(p)) for p in members]
    x = torch.randn(4, 1, 32, 32)
    with torch.no_grad():
        expected = torch.stack([(parts[0](x)[:, 0] + parts[1](x)[:, 0]) / 2, parts[0](x)[:, 1], parts[1](x)[:, 1]], 1)
        torch.testing.assert_close(model(x), expected)
    report = export.main(
        export.get_args_parser().parse_args(
            [
                str(result["checkpoint"]),
                "--name",
                "ens",
                "--registry",
                str(tmp_path / "reg"),
                "--threads",
                "1",
                "--quiet",
            ]  # fmt: skip
        )
    )
    assert report["parity"]["probabilities"]["max_abs_diff"] < 1e-4
    manifest = Registry(tmp_path / "reg").load_manifest("ens", 1)
    assert manifest.labels == ["Abnormal", "Nodule", "Mass"]
    assert len(manifest.architecture["members"]) == 2


def test_members_from_different_splits_are_refused(members, tmp_path) -> None:
    other = _member(tmp_path / "c", "Abnormal", 2, "--split-seed", "5")
    args = ensemble.get_args_parser().parse_args([str(members[0]), str(other), "--output-dir", str(tmp_path / "e")])
    with pytest.raises(ValueError, match="split_seed"):
        ensemble.main(args)


def test_label_weights_and_smoothing_shape_the_loss() -> None:
    logits = torch.tensor([[2.0, -1.0], [0.5, 3.0]])
    targets = torch.tensor([[1.0, 0.0], [0.0, float("nan")]])
    plain = common.masked_bce_with_logits(logits, targets)
    without_second = common.masked_bce_with_logits(logits, targets, label_weights=torch.tensor([1.0, 0.0]))
    only_first = common.masked_bce_with_logits(logits[:, :1], targets[:, :1])
    torch.testing.assert_close(without_second, only_first)
    assert plain > without_second
    smoothed = common.masked_bce_with_logits(logits, targets, smoothing=0.2)
    targets_smoothed = torch.tensor([[0.9, 0.1], [0.1, float("nan")]])
    torch.testing.assert_close(smoothed, common.masked_bce_with_logits(logits, targets_smoothed))


def test_label_weights_flag_is_parsed_and_checked() -> None:
    parser = train_classifier.get_args_parser()
    args = parser.parse_args(["--data", "phantoms:10", "--label-weights", "Pneumonia=0.5, Abnormal=2"])
    assert args.label_weights == {"Pneumonia": 0.5, "Abnormal": 2.0}
    for bad in ("Pneumonia", "Pneumonia=-1", "=2", "Pneumonia=x"):
        with pytest.raises(SystemExit):
            parser.parse_args(["--data", "phantoms:10", "--label-weights", bad])


def test_augmentation_strength_scales_the_default_ranges() -> None:
    assert AugmentConfig.scaled(1.0) == AugmentConfig()
    neutral = AugmentConfig.scaled(0.0)
    assert neutral == AugmentConfig.neutral()
    double = AugmentConfig.scaled(2.0)
    assert double.max_rotation == 2 * AugmentConfig().max_rotation
    assert np.allclose(double.scale, (0.8, 1.2))


def test_a_label_is_calibrated_on_the_validation_films_of_its_members_source(tmp_path) -> None:
    """NIH's table has a Pneumonia column too; the PneumoniaMNIST member's Pneumonia is fitted on PneumoniaMNIST
    validation films only (one-epoch members on the real sets: what matters is which rows are used)."""
    csv = require_shared("nih1000", "Data_Entry_subset.csv")
    npz = require_shared("pneumoniamnist", "pneumoniamnist.npz")
    split = ["--val-fraction", "0.15", "--test-images-under", str(csv.parent / "test"), "--input-size", "32",
             "--width", "8", "--epochs", "1", "--threads", "1", "--quiet", "--bootstrap", "0"]  # fmt: skip
    runs = {"nih": ["--data", f"nih:{csv}", "--labels", "Abnormal"], "pn": ["--data", f"medmnist:{npz}"]}
    members = [
        train_classifier.main(train_classifier.get_args_parser().parse_args([*argv, *split, "--output-dir",
                                                                             str(tmp_path / name)]))["checkpoint"]
        for name, argv in runs.items()
    ]  # fmt: skip
    args = ensemble.get_args_parser().parse_args([*map(str, members), "--output-dir", str(tmp_path / "e"), "--quiet"])
    checkpoint = checkpoints.load_checkpoint(ensemble.main(args)["checkpoint"])
    val = checkpoints.splits_from_checkpoint(checkpoint)["val"]
    assert set(val.origins) == {"nih:nih1000", "medmnist:pneumoniamnist:val"}
    assert np.isfinite(val.labels[val.origins == "nih:nih1000", 1]).any()  # NIH films do carry Pneumonia labels
    own = val.subset(np.flatnonzero(val.origins == "medmnist:pneumoniamnist:val"))
    x = torch.from_numpy(preprocess_all(own, PreprocessSpec.from_dict(checkpoint["spec"])))
    with torch.no_grad():
        raw = torch.sigmoid(checkpoints.model_from_checkpoint(checkpoint)(x)).numpy()
    expected = calibrate.platt_parameters(["Pneumonia"], own.labels[:, 1:], raw[:, 1:])
    fitted = checkpoint["calibration"]
    assert fitted["fitted_on"]["known_labels"]["Pneumonia"] == expected["fitted_on"]["known_labels"]["Pneumonia"]
    assert fitted["labels"]["Pneumonia"] == pytest.approx(expected["labels"]["Pneumonia"], rel=1e-4)
