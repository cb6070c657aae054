"""`xray demo`: make sure demo models exist, training them (a few minutes on CPU) when they are missing.

Real data (../shared/data: NIH ChestX-ray14 subset + PneumoniaMNIST) when present, synthetic phantoms otherwise;
the output says which.
"""

from __future__ import annotations

from pathlib import Path

from training import train_autoencoder, train_classifier


def demo_training_args(shared_data: Path, out_dir: Path) -> tuple[list[str], list[str], str]:
    """Command-line args for the demo classifier and autoencoder, and a sentence naming the data."""
    nih_csv = shared_data / "nih1000" / "Data_Entry_subset.csv"
    if nih_csv.exists():
        data = [f"nih:{nih_csv}"]
        pneumonia = shared_data / "pneumoniamnist" / "pneumoniamnist.npz"
        source = "real radiographs: NIH ChestX-ray14 subset (CC0)"
        size = "64"
        classifier_extra = ["--labels", "Abnormal,Effusion,Infiltration,Atelectasis,Cardiomegaly", "--epochs", "12"]
        if pneumonia.exists():
            source += " (PneumoniaMNIST is used by the default model set, not the quick demo)"
    else:
        data = ["phantoms:1500"]
        source = "synthetic phantoms (../shared/data is absent)"
        size = "64"
        classifier_extra = ["--epochs", "10"]
    common = [*sum((["--data", d] for d in data), []), "--input-size", size, "--threads", "2"]
    classifier = [
        *common,
        *classifier_extra,
        "--test-fraction",
        "0.25",
        "--ema-decay",
        "0.99",
        "--output-dir",
        str(out_dir / "classifier"),
    ]
    autoencoder = [*common, "--epochs", "25", "--output-dir", str(out_dir / "autoencoder")]
    return classifier, autoencoder, source


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
    print("serving them needs the ONNX export and the service (open issues: export #5, service #6).")
    return {"classifier": classifier_ckpt, "autoencoder": autoencoder_ckpt}
