"""add-label: a new head on the frozen encoder; the first K outputs stay bit-identical."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from models.classifier import ClassifierConfig, XRayClassifier
from models.preprocessing import PreprocessSpec
from training import add_label, checkpoints, train_autoencoder, train_classifier
from training.checkpoints import splits_from_checkpoint
from training.datasets import preprocess_all

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def base_checkpoint(tmp_path_factory) -> Path:
    """Abnormal + Mass on 1000 phantoms at 64 px (Pneumothorax left out, to be added); about 10 s."""
    out = tmp_path_factory.mktemp("base")
    argv = ["--data", "phantoms:1000", "--labels", "Abnormal,Mass", "--input-size", "64", "--width", "8"]
    argv += ["--epochs", "12", "--optimizer", "adamw", "--lr", "0.003", "--batch-size", "32", "--bootstrap", "0"]
    argv += ["--threads", "1", "--quiet", "--output-dir", str(out)]
    return train_classifier.main(train_classifier.get_args_parser().parse_args(argv))["checkpoint"]


def _model(checkpoint: dict) -> XRayClassifier:
    model = XRayClassifier(ClassifierConfig.from_dict(checkpoint["config"]))
    model.load_state_dict(checkpoint["model"])
    return model.eval()


def test_add_label_keeps_old_outputs_bit_identical_and_learns_the_new_one(base_checkpoint, tmp_path) -> None:
    argv = ["--base", str(base_checkpoint), "--label", "Pneumothorax", "--examples", "50", "--bootstrap", "0"]
    argv += ["--threads", "1", "--quiet", "--output-dir", str(tmp_path)]
    result = add_label.main(add_label.get_args_parser().parse_args(argv))
    base, grown = checkpoints.load_checkpoint(base_checkpoint), checkpoints.load_checkpoint(result["checkpoint"])
    assert grown["labels"] == ["Abnormal", "Mass", "Pneumothorax"]
    assert set(grown["thresholds"]) == {"Abnormal", "Mass", "Pneumothorax"}
    assert result["added"]["examples"] == 50 and result["added"]["positives"] == 25
    # every tensor of the base model is unchanged, only the head grew by one row
    for key, value in base["model"].items():
        if key.startswith("head."):
            assert torch.equal(grown["model"][key][: value.shape[0]], value)
        else:
            assert torch.equal(grown["model"][key], value), key
    splits = splits_from_checkpoint(grown)
    x = torch.from_numpy(preprocess_all(splits["test"], PreprocessSpec.from_dict(grown["spec"])))
    with torch.no_grad():
        old, new = _model(base)(x), _model(grown)(x)
    assert torch.equal(new[:, :2], old), "the first K outputs must not change by a single bit"
    auroc = result["added"]["metrics"]["auroc"]
    assert auroc is not None and auroc > 0.65, f"Pneumothorax from 50 examples on frozen phantom features: {auroc}"
    assert grown["metrics"]["added_labels"][0]["label"] == "Pneumothorax"


def test_add_label_refuses_an_existing_or_unknown_label(base_checkpoint, tmp_path) -> None:
    parser = add_label.get_args_parser()
    with pytest.raises(ValueError, match="already has 'Mass'"):
        add_label.main(parser.parse_args(["--base", str(base_checkpoint), "--label", "Mass", "--quiet"]))
    with pytest.raises(ValueError, match="not a label"):
        add_label.main(parser.parse_args(["--base", str(base_checkpoint), "--label", "Dragon", "--quiet"]))


def test_few_shot_index_balances_and_needs_both_classes() -> None:
    labels = np.array([1.0] * 5 + [0.0] * 100 + [np.nan] * 10)
    chosen = add_label.few_shot_index(labels, 50, np.random.default_rng(0))
    assert len(chosen) == 50 and np.all(np.diff(chosen) > 0)
    assert labels[chosen].sum() == 5 and not np.isnan(labels[chosen]).any()
    with pytest.raises(ValueError, match="at least 2 positive"):
        add_label.few_shot_index(np.array([1.0] + [0.0] * 10), 10, np.random.default_rng(0))


def test_fit_head_folds_the_standardisation_into_raw_weights() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(5.0, 3.0, size=(60, 8))
    y = (x[:, 0] + rng.normal(size=60) > 5).astype(float)
    weight, bias, c = add_label.fit_head(x, y, 1.0, seed=0)
    z = (x - x.mean(axis=0)) / x.std(axis=0)
    reference = LogisticRegression(C=1.0, max_iter=5000).fit(z, y).decision_function(z)
    np.testing.assert_allclose(x @ weight + bias, reference, rtol=1e-9, atol=1e-9)
    assert c == 1.0
    _, _, chosen = add_label.fit_head(x, y, None, seed=0)
    assert chosen in add_label.C_GRID


def test_c_is_chosen_on_validation_or_by_cv_when_validation_has_one_class() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(120, 6))
    y = (x[:, 0] + 0.5 * rng.normal(size=120) > 0).astype(float)
    chosen = add_label.choose_c_on_validation(x[:50], y[:50], x[50:], y[50:], seed=0)
    assert chosen in add_label.C_GRID
    weight, bias, _ = add_label.fit_head(x[:50], y[:50], chosen, seed=0)
    best = max(
        roc_auc_score(y[50:], x[50:] @ w + b)
        for w, b, _ in (add_label.fit_head(x[:50], y[:50], c, seed=0) for c in add_label.C_GRID)
    )
    assert roc_auc_score(y[50:], x[50:] @ weight + bias) == best
    assert add_label.choose_c_on_validation(x[:50], y[:50], x[50:], np.zeros(70), seed=0) in add_label.C_GRID


def test_init_encoder_transfers_the_autoencoder_encoder(tmp_path) -> None:
    """`--init-encoder ae.ckpt` with a zero learning rate: the classifier's encoder weights are the AE's, exactly."""
    ae_argv = ["--data", "phantoms:200", "--input-size", "32", "--width", "8", "--bottleneck", "16", "--epochs", "1"]
    ae_argv += ["--threads", "1", "--quiet", "--output-dir", str(tmp_path / "ae")]
    ae = train_autoencoder.main(train_autoencoder.get_args_parser().parse_args(ae_argv))["checkpoint"]
    argv = ["--data", "phantoms:200", "--labels", "Abnormal", "--input-size", "32", "--width", "8", "--epochs", "1"]
    argv += ["--optimizer", "adamw", "--lr", "0", "--weight-decay", "0", "--bootstrap", "0", "--threads", "1"]
    argv += ["--quiet", "--init-encoder", str(ae), "--output-dir", str(tmp_path / "clf")]
    classifier = train_classifier.main(train_classifier.get_args_parser().parse_args(argv))["checkpoint"]
    ae_weights = checkpoints.load_checkpoint(ae)["model"]
    clf = _model(checkpoints.load_checkpoint(classifier))
    parameters = dict(clf.encoder.named_parameters())
    assert parameters
    for name, value in parameters.items():
        assert torch.equal(value, ae_weights[f"encoder.{name}"]), name
    wrong = argv[:]
    wrong[wrong.index("--width") + 1] = "16"
    wrong[-1] = str(tmp_path / "wrong")
    with pytest.raises(ValueError, match="strict load"):
        train_classifier.main(train_classifier.get_args_parser().parse_args(wrong))
