"""`xray demo`: make sure demo models exist, training them (a few minutes on CPU) when they are missing.

Real data (../shared/data's NIH ChestX-ray14 subset) when present, synthetic phantoms otherwise; the output says
which. The settings are the ones the real-data tests check (tests/training/test_train_real.py).
"""

from __future__ import annotations

from pathlib import Path

from training import train_autoencoder, train_classifier

NIH_DEMO_LABELS = "Abnormal,Effusion,Infiltration,Atelectasis,Cardiomegaly"
_FAST_ADAMW = ["--optimizer", "adamw", "--lr", "3e-3", "--weight-decay", "0.01", "--ema-decay", "0.99"]


def demo_training_args(shared_data: Path, out_dir: Path) -> tuple[list[str], list[str], str]:
    """Command-line args for the demo classifier and autoencoder, and a sentence naming the data."""
    nih_csv = shared_data / "nih1000" / "Data_Entry_subset.csv"
    if nih_csv.exists():
        data = ["--data", f"nih:{nih_csv}", "--test-fraction", "0.25", "--val-fraction", "0.10"]
        classifier = ["--labels", NIH_DEMO_LABELS, "--epochs", "25", "--pos-weight"]
        source = "real radiographs: NIH ChestX-ray14 subset, 1000 images (CC0)"
    else:
        data = ["--data", "phantoms:6000"]
        classifier = ["--epochs", "10", "--batch-size", "32"]
        source = "synthetic phantoms (../shared/data is absent)"
    shared = [*data, "--input-size", "64", "--threads", "2"]
    classifier_args = [*shared, *classifier, *_FAST_ADAMW, "--output-dir", str(out_dir / "classifier")]
    autoencoder_args = [*shared, "--epochs", "15", "--output-dir", str(out_dir / "autoencoder")]
    return classifier_args, autoencoder_args, source


def ensure_demo_models(out_dir: Path, shared_data: Path) -> dict[str, Path]:
    classifier_ckpt = out_dir / "classifier" / "model.ckpt"
    autoencoder_ckpt = out_dir / "autoencoder" / "model.ckpt"
    classifier_args, autoencoder_args, source = demo_training_args(shared_data, out_dir)
    if not classifier_ckpt.exists():
        print(f"demo classifier missing: training it on {source}")
        train_classifier.main(train_classifier.get_args_parser().parse_args(classifier_args))
    if not autoencoder_ckpt.exists():
        print(f"demo outlier autoencoder missing: training it on {source}")
        train_autoencoder.main(train_autoencoder.get_args_parser().parse_args(autoencoder_args))
    print(f"demo models ready in {out_dir}:\n  {classifier_ckpt}\n  {autoencoder_ckpt}")
    print("serving them needs the service (open issue #6); `xray export` puts them into the registry.")
    return {"classifier": classifier_ckpt, "autoencoder": autoencoder_ckpt}
