"""`xray train ...` hands its arguments to the training scripts' argparse parsers."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import PROJECT_ROOT


def _xray(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "xray", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120
    )


def test_train_help_lists_flags_with_defaults() -> None:
    result = _xray("train", "classifier", "--help")
    assert result.returncode == 0, result.stderr
    assert "xray train classifier" in result.stdout
    assert "--backbone" in result.stdout and "(default: small_cnn)" in result.stdout
    result = _xray("train", "autoencoder", "--help")
    assert result.returncode == 0, result.stderr
    assert "--bottleneck" in result.stdout and "(default: 64)" in result.stdout


def test_train_without_data_says_what_is_missing() -> None:
    result = _xray("train", "classifier", "--epochs", "1")
    assert result.returncode != 0
    assert "--data" in result.stderr


def test_train_classifier_runs_end_to_end(tmp_path) -> None:
    result = _xray(
        "train", "classifier", "--data", "phantoms:120", "--input-size", "32", "--width", "8", "--epochs", "1",
        "--threads", "1", "--quiet", "--bootstrap", "0", "--output-dir", str(tmp_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "mean AUROC" in result.stdout
    assert (tmp_path / "model.ckpt").exists()
