"""`make default-models`: train, check and export the default model set shipped in `registry/`.

Classifier: an ensemble (training.ensemble) of models trained on NIH ChestX-ray14 (nih1000: Abnormal and four
pathologies) and of models trained on PneumoniaMNIST (Pneumonia), one model per source behind one manifest, members
of one source averaged; the recipe is in training.recipes. The NIH1000 `test/` folder, widened to all images of its
patients, is the held-out test split (with PneumoniaMNIST's official test split), so the shipped metrics and the
registry test score images no model saw; calibration and thresholds come from the validation splits.
Autoencoder: the outlier gate, trained on the same NIH chest films. Both are exported (int8 variants where the
AUROC / error-ranking checks pass), promoted to `production` and named in `registry/model_set.json`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from models.labels import NIH1000_LABELS
from models.registry import Registry
from training import common, ensemble, train_autoencoder, train_classifier
from training.export import ExportOptions, export_checkpoint
from training.recipes import (
    DEFAULT_AUTOENCODER,
    DEFAULT_NIH_MEMBER,
    DEFAULT_NIH_MEMBERS,
    DEFAULT_PNEUMONIA_MEMBER,
    DEFAULT_PNEUMONIA_MEMBERS,
)

CLASSIFIER_NAME = "chest-classifier"
AUTOENCODER_NAME = "chest-outlier-ae"
NIH_VAL_FRACTION = "0.15"


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    description = "Train and export the default model set into the registry."
    parser = common.script_parser("python -m training.default_models", description, add_help)
    root = Path(__file__).resolve().parents[1]
    parser.add_argument("--shared-data", type=Path, default=root.parent / "shared" / "data", help="real data root")
    parser.add_argument("--registry", type=Path, default=root / "registry", help="registry root to export into")
    parser.add_argument("--work-dir", type=Path, default=root / "runs" / "default-models", help="checkpoints")
    parser.add_argument("--seed", type=int, default=0, help="split seed; members are initialised from seed + 100 j")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    return parser


def data_paths(shared_data: Path) -> dict[str, Path]:
    paths = {
        "nih_csv": shared_data / "nih1000" / "Data_Entry_subset.csv",
        "nih_test": shared_data / "nih1000" / "test",
        "pneumonia": shared_data / "pneumoniamnist" / "pneumoniamnist.npz",
    }
    for path in paths.values():
        if not path.exists():
            raise FileNotFoundError(f"expected the real training data at {path} (see ../shared/data/README.md)")
    return paths


def member_argvs(shared_data: Path, seed: int) -> list[tuple[str, list[str]]]:
    """(run name, trainer flags without output/threads) of every classifier member for split seed `seed`."""
    paths = data_paths(shared_data)
    # one split policy for every member (the ensemble rebuilds their validation images from it); PneumoniaMNIST
    # keeps its official splits whatever the policy says
    split = [
        "--val-fraction",
        NIH_VAL_FRACTION,
        "--test-images-under",
        str(paths["nih_test"]),
        "--split-seed",
        str(seed),
    ]
    nih = ["--data", f"nih:{paths['nih_csv']}", "--labels", ",".join(NIH1000_LABELS), *split, *DEFAULT_NIH_MEMBER]
    pneumonia = ["--data", f"medmnist:{paths['pneumonia']}", *split, *DEFAULT_PNEUMONIA_MEMBER]
    runs = [(f"nih-{j}", [*nih, "--seed", str(seed + 100 * j)]) for j in range(DEFAULT_NIH_MEMBERS)]
    runs += [(f"pneumonia-{j}", [*pneumonia, "--seed", str(seed + 100 * j)]) for j in range(DEFAULT_PNEUMONIA_MEMBERS)]
    return runs


def train_classifier_ensemble(args: argparse.Namespace) -> dict:
    members = []
    for name, argv in member_argvs(args.shared_data, args.seed):
        run = [*argv, "--output-dir", str(args.work_dir / name), "--threads", str(args.threads), "--quiet"]
        members.append(train_classifier.main(train_classifier.get_args_parser().parse_args(run))["checkpoint"])
    run = [*map(str, members), "--output-dir", str(args.work_dir / "classifier"), "--threads", str(args.threads)]
    return ensemble.main(ensemble.get_args_parser().parse_args(run))


def train_gate_autoencoder(args: argparse.Namespace) -> dict:
    paths = data_paths(args.shared_data)
    argv = [
        *("--data", f"nih:{paths['nih_csv']}", "--val-fraction", NIH_VAL_FRACTION),
        *("--test-images-under", str(paths["nih_test"]), "--split-seed", str(args.seed), *DEFAULT_AUTOENCODER),
        *("--output-dir", str(args.work_dir / "autoencoder"), "--threads", str(args.threads), "--quiet"),
    ]
    return train_autoencoder.main(train_autoencoder.get_args_parser().parse_args(argv))


def main(args: argparse.Namespace) -> dict[str, dict]:
    classifier = train_classifier_ensemble(args)
    autoencoder = train_gate_autoencoder(args)
    registry = Registry(args.registry)
    reports = {}
    for name, result in ((CLASSIFIER_NAME, classifier), (AUTOENCODER_NAME, autoencoder)):
        options = ExportOptions(int8=True, promote="production", threads=args.threads)
        reports[name] = export_checkpoint(result["checkpoint"], name, registry, options)
    registry.set_model_set(CLASSIFIER_NAME, AUTOENCODER_NAME)
    return reports


if __name__ == "__main__":
    main(get_args_parser().parse_args())
