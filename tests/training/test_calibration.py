"""Platt calibration: the numpy path the service uses equals the fit the trainer makes, and it fixes overconfidence."""

from __future__ import annotations

import numpy as np
import pytest

from models.calibration import calibrate, logit, sigmoid
from training.calibrate import platt_parameters
from training.metrics import auroc, calibration


def test_no_parameters_pass_probabilities_through() -> None:
    p = np.array([[0.1, 0.9]])
    assert np.array_equal(calibrate(p, ["A", "B"], {}), p)
    assert np.array_equal(calibrate(p, ["A", "B"], None), p)


def test_parameters_apply_per_label_by_name() -> None:
    p = np.array([[0.2, 0.7], [0.6, 0.3]])
    params = {"method": "platt", "labels": {"B": {"scale": 2.0, "bias": -1.0}}}
    out = calibrate(p, ["A", "B"], params)
    assert np.array_equal(out[:, 0], p[:, 0])  # A has no parameters
    assert out[:, 1] == pytest.approx(sigmoid(2.0 * logit(p[:, 1]) - 1.0))


def test_an_unknown_method_is_refused() -> None:
    with pytest.raises(ValueError, match="platt"):
        calibrate(np.array([[0.5]]), ["A"], {"method": "isotonic", "labels": {"A": {}}})


def test_fitted_platt_fixes_an_overconfident_label_and_keeps_its_ranking() -> None:
    rng = np.random.default_rng(0)
    n = 2000
    y = (rng.random(n) < 0.1).astype(np.float64)  # 10 % prevalence
    true_logit = np.where(y == 1, 1.0, -1.0) + rng.normal(0, 1.2, n)
    raw = sigmoid(true_logit + 2.5)  # a positively weighted model: every probability inflated
    labels = np.stack([y, np.full(n, np.nan)], axis=1)  # second label: nothing known, left alone
    params = platt_parameters(["A", "B"], labels, np.stack([raw, raw], axis=1))
    assert set(params["labels"]) == {"A"} and params["fitted_on"]["known_labels"] == {"A": n, "B": 0}
    fixed = calibrate(np.stack([raw, raw], axis=1), ["A", "B"], params)[:, 0]
    before, after = calibration(y, raw).ece, calibration(y, fixed).ece
    assert before > 0.3 and after < 0.03, (before, after)
    assert auroc(y, fixed) == pytest.approx(auroc(y, raw), abs=1e-12)
