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

from models.labels import DEFAULT_SET_LABELS
from models.registry import Registry
from training import common, train_autoencoder, train_classifier
from training.export import ExportOptions, export_checkpoint
from training.recipes import FAST_ADAMW

CLASSIFIER_NAME = "chest-classifier"
AUTOENCODER_NAME = "chest-outlier-ae"


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    description = "Train and export the default model set into the registry."
    parser = common.script_parser("python -m training.default_models", description, add_help)
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
    held_out = ["--test-images-under", str(nih_root / "test")]
    classifier_args = [
        *("--data", f"nih:{nih_csv}", "--data", f"medmnist:{pneumonia}"),
        *("--labels", ",".join(DEFAULT_SET_LABELS), *held_out, "--val-fraction", "0.1", "--epochs", str(args.epochs)),
        *FAST_ADAMW,
        "--pos-weight",
        *("--output-dir", str(args.work_dir / "classifier"), *common),
    ]
    autoencoder_args = [
        *("--data", f"nih:{nih_csv}", "--val-fraction", "0.15", *held_out, "--epochs", str(args.ae_epochs)),
        *("--output-dir", str(args.work_dir / "autoencoder"), *common),
    ]
    classifier = train_classifier.main(train_classifier.get_args_parser().parse_args(classifier_args))
    autoencoder = train_autoencoder.main(train_autoencoder.get_args_parser().parse_args(autoencoder_args))
    registry = Registry(args.registry)
    reports = {}
    for name, result in ((CLASSIFIER_NAME, classifier), (AUTOENCODER_NAME, autoencoder)):
        options = ExportOptions(int8=True, promote="production", threads=args.threads)
        reports[name] = export_checkpoint(result["checkpoint"], name, registry, options)
    registry.set_model_set(CLASSIFIER_NAME, AUTOENCODER_NAME)
    return reports


if __name__ == "__main__":
    main(get_args_parser().parse_args())
