"""Loss, metrics, calibration and the training loop's bookkeeping, on small real runs (phantoms, seconds)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from models.preprocessing import PreprocessSpec
from training import calibrate, checkpoints, common, metrics, train_classifier
from training.sources import parse_spec


def test_masked_bce_ignores_missing_labels() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.1, 3.0, -2.0]], requires_grad=True)
    targets = torch.tensor([[1.0, float("nan"), 0.0], [float("nan"), 1.0, float("nan")]])
    loss = common.masked_bce_with_logits(logits, targets)
    loss.backward()
    known = ~torch.isnan(targets)
    expected = (
        torch.nn.functional.binary_cross_entropy_with_logits(logits.detach()[known], targets[known], reduction="sum")
        / 2
    )
    torch.testing.assert_close(loss.detach(), expected)
    assert torch.all(logits.grad[~known] == 0)
    assert torch.all(logits.grad[known] != 0)


def test_fast_bootstrap_auroc_equals_sklearn_with_ties() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.random(300) + 0.3 * y, 1)  # rounded: many ties
    assert metrics._fast_auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    low, high = metrics.bootstrap_auroc_ci(y.astype(float), s, n_boot=300)
    assert low < roc_auc_score(y, s) < high


def test_auroc_is_undefined_for_one_class_and_masks_nan() -> None:
    assert metrics.auroc(np.array([1.0, 1.0, np.nan]), np.array([0.2, 0.3, 0.9])) is None
    y = np.array([0.0, 1.0, np.nan, 1.0])
    assert metrics.auroc(y, np.array([0.1, 0.8, 0.0, 0.7])) == 1.0


def test_thresholds_youden_and_target_sensitivity() -> None:
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1], dtype=float)
    p = np.array([0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.8, 0.9])
    youden = calibrate.youden_threshold(y, p)
    assert youden == pytest.approx(0.7)  # sens 0.75, spec 1.0
    full = calibrate.sensitivity_threshold(y, p, 1.0)
    assert full == pytest.approx(0.4)
    assert ((p >= full)[y == 1]).all()
    thresholds = calibrate.label_thresholds(["a"], y[:, None], p[:, None], target_sensitivity=1.0)
    assert thresholds == {"a": pytest.approx(0.4)}
    with pytest.raises(ValueError, match="target sensitivity"):
        calibrate.sensitivity_threshold(y, p, 0.0)


def test_outlier_threshold_is_the_stated_percentile() -> None:
    errors = np.arange(1, 101, dtype=float)
    assert calibrate.outlier_threshold(errors, 99.0) == pytest.approx(np.percentile(errors, 99))
    with pytest.raises(ValueError, match="empty"):
        calibrate.outlier_threshold(np.array([]))


@pytest.mark.parametrize("spec", ["nih", "nih:", "mnist:x.npz", "x.csv"])
def test_bad_data_spec_says_what_is_expected(spec: str) -> None:
    with pytest.raises(ValueError, match="KIND:PATH"):
        parse_spec(spec)


def _tiny_run(out_dir, *extra: str) -> dict:
    args = train_classifier.get_args_parser().parse_args(
        ["--data", "phantoms:160", "--input-size", "32", "--width", "8", "--batch-size", "32", "--threads", "2",
         "--quiet", "--bootstrap", "50", "--output-dir", str(out_dir), *extra]
    )  # fmt: skip
    return train_classifier.main(args)


def test_checkpoint_carries_everything_export_needs(tmp_path) -> None:
    result = _tiny_run(tmp_path, "--epochs", "2")
    checkpoint = checkpoints.load_checkpoint(result["checkpoint"], kind="classifier")
    assert checkpoint["labels"][0] == "Abnormal"
    assert set(checkpoint["thresholds"]) == set(checkpoint["labels"])
    assert PreprocessSpec.from_dict(checkpoint["spec"]).size == 32
    assert checkpoint["config"]["backbone"] == "small_cnn"
    assert checkpoint["args"]["epochs"] == 2
    assert checkpoint["data"]["train"]["n"] > 0 and checkpoint["data"]["test"]["n"] > 0
    assert len(checkpoint["history"]) == 2
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert {m["label"] for m in metrics["labels"]} == set(checkpoint["labels"])
    for name in ("last.ckpt", "best.ckpt", "model.ckpt"):
        assert (tmp_path / name).exists()


def test_same_seed_same_weights_and_exact_resume(tmp_path) -> None:
    straight = _tiny_run(tmp_path / "a", "--epochs", "2", "--seed", "3")
    again = _tiny_run(tmp_path / "b", "--epochs", "2", "--seed", "3")
    first = checkpoints.load_checkpoint(straight["checkpoint"])["model"]
    for key, value in checkpoints.load_checkpoint(again["checkpoint"])["model"].items():
        assert torch.equal(value, first[key]), key
    # one epoch, then resume for the second: the same weights as two epochs in one go
    _tiny_run(tmp_path / "c", "--epochs", "1", "--seed", "3")
    resumed = _tiny_run(tmp_path / "d", "--epochs", "2", "--seed", "3", "--resume", str(tmp_path / "c" / "last.ckpt"))
    last_straight = checkpoints.load_checkpoint(tmp_path / "a" / "last.ckpt")["model"]
    for key, value in checkpoints.load_checkpoint(tmp_path / "d" / "last.ckpt")["model"].items():
        assert torch.equal(value, last_straight[key]), key
    assert [entry["epoch"] for entry in checkpoints.load_checkpoint(resumed["checkpoint"])["history"]] == [1, 2]


def test_resume_refuses_a_checkpoint_without_training_state(tmp_path) -> None:
    result = _tiny_run(tmp_path / "a", "--epochs", "1")
    with pytest.raises(ValueError, match="cannot resume"):
        _tiny_run(tmp_path / "b", "--epochs", "2", "--resume", str(result["checkpoint"]))


def test_unknown_label_is_refused_with_the_available_ones(tmp_path) -> None:
    with pytest.raises(ValueError, match="available"):
        _tiny_run(tmp_path, "--epochs", "1", "--labels", "Effusion,Fracture")
