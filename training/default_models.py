"""`make default-models`: train, check and export the default model set shipped in `registry/`.

Classifier: NIH ChestX-ray14 subset (Abnormal + the pathologies with enough positives) merged with PneumoniaMNIST
(Pneumonia), labels a source lacks masked out of the loss. The NIH1000 `test/` folder, widened to all images of its
patients, is the held-out test split, so the shipped metrics and the registry test score images no model saw.
Autoencoder: the outlier gate, trained on the same NIH chest films. Both are exported (int8 variants where the
AUROC / error-ranking checks pass), promoted to `production` and named in `registry/model_set.json`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from models.registry import Registry
from training import export, train_autoencoder, train_classifier

CLASSIFIER_NAME = "chest-classifier"
AUTOENCODER_NAME = "chest-outlier-ae"
LABELS = "Abnormal,Effusion,Infiltration,Atelectasis,Cardiomegaly,Pneumonia"


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.default_models",
        description="Train and export the default model set into the registry.",
        add_help=add_help,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    root = Path(__file__).resolve().parents[1]
    parser.add_argument("--shared-data", type=Path, default=root.parent / "shared" / "data", help="real data root")
    parser.add_argument("--registry", type=Path, default=root / "registry", help="registry root to export into")
    parser.add_argument("--work-dir", type=Path, default=root / "runs" / "default-models", help="checkpoints")
    parser.add_argument("--epochs", type=int, default=15, help="classifier epochs")
    parser.add_argument("--ae-epochs", type=int, default=15, help="autoencoder epochs")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    return parser


def main(args: argparse.Namespace) -> dict[str, dict]:
    nih_root = args.shared_data / "nih1000"
    nih_csv = nih_root / "Data_Entry_subset.csv"
    pneumonia = args.shared_data / "pneumoniamnist" / "pneumoniamnist.npz"
    for path in (nih_csv, pneumonia):
        if not path.exists():
            raise FileNotFoundError(f"expected the real training data at {path} (see ../shared/data/README.md)")
    common = ["--input-size", "64", "--threads", str(args.threads), "--quiet"]
    classifier = train_classifier.main(
        train_classifier.get_args_parser().parse_args(
            [
                "--data",
                f"nih:{nih_csv}",
                "--data",
                f"medmnist:{pneumonia}",
                "--labels",
                LABELS,
                "--test-images-under",
                str(nih_root / "test"),
                "--val-fraction",
                "0.1",
                "--epochs",
                str(args.epochs),
                "--optimizer",
                "adamw",
                "--lr",
                "3e-3",
                "--weight-decay",
                "0.01",
                "--pos-weight",
                "--ema-decay",
                "0.99",
                "--output-dir",
                str(args.work_dir / "classifier"),
                *common,
            ]
        )  # fmt: skip
    )
    autoencoder = train_autoencoder.main(
        train_autoencoder.get_args_parser().parse_args(
            [
                "--data",
                f"nih:{nih_csv}",
                "--val-fraction",
                "0.15",
                "--test-images-under",
                str(nih_root / "test"),
                "--epochs",
                str(args.ae_epochs),
                "--output-dir",
                str(args.work_dir / "autoencoder"),
                *common,
            ]
        )  # fmt: skip
    )
    registry = Registry(args.registry)
    reports = {}
    for name, result in ((CLASSIFIER_NAME, classifier), (AUTOENCODER_NAME, autoencoder)):
        reports[name] = export.export_checkpoint(
            result["checkpoint"], name, registry, int8=True, promote="production", threads=args.threads
        )
    registry.set_model_set(CLASSIFIER_NAME, AUTOENCODER_NAME)
    return reports


if __name__ == "__main__":
    main(get_args_parser().parse_args())
