"""`xray train add-label`: a new label on a frozen encoder, from few examples (the lecture's "new class").

The base classifier's encoder is kept as it is. Its pooled features for N labelled training images feed an L2
logistic regression (convex, so a few dozen examples suffice and the answer does not depend on a seed); the fitted
weights become one more row of the linear head. Its strength C is chosen by AUROC on the validation split, as the
trainers choose their epochs (5-fold CV on the examples alone was noisier: see experiments/results/). The head
computes each label's logit on its own row (`XRayClassifier._logits`), so the first K outputs of the new model are
bit-identical to the base model's.

The train/val/test split is rebuilt from the base checkpoint (`checkpoints.splits_from_checkpoint`: its split
settings and its --label-fraction), so the examples come from the base model's training images (only those it was
trained on when it used a --label-fraction below 1) and the new label is tested on its test patients.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score

from models.classifier import XRayClassifier
from models.preprocessing import PreprocessSpec
from models.registry import sha256_file
from training import calibrate, checkpoints, common, metrics
from training.datasets import ImageTensorDataset, LabelledImages
from training.sources import SPEC_HELP

C_GRID = (0.0001, 0.001, 0.01, 0.1, 1.0, 10.0)  # ascending: ties go to the stronger regularisation


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    description = "Add a label to a trained classifier: logistic regression on its frozen encoder's features."
    parser = common.script_parser("xray train add-label", description, add_help)
    parser.add_argument("--base", type=Path, required=True, help="the classifier checkpoint (model.ckpt) to extend")
    parser.add_argument("--label", required=True, help="the new label (a column of the data)")
    parser.add_argument("--data", action="append", default=None, help=SPEC_HELP + " (default: the base model's --data)")
    parser.add_argument(
        "--examples",
        type=int,
        default=50,
        help="labelled training images used; up to half of them positives (few positives are the usual case)",
    )
    parser.add_argument("--C", type=float, default=None, help="inverse L2 strength (default: chosen, see --select-c)")
    parser.add_argument(
        "--select-c",
        choices=("val", "cv"),
        default="val",
        help="choose C by AUROC on the validation split (as the trainers choose epochs), or by 5-fold CV on the "
        "examples alone",
    )
    parser.add_argument(
        "--target-sensitivity",
        type=float,
        default=None,
        help="threshold for this sensitivity on validation (default: Youden's J)",
    )
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the AUROC CI")
    common.add_run_arguments(
        parser,
        output_dir=Path("runs/add-label"),
        output_help="where model.ckpt goes",
        seed_help="seed for choosing the examples",
    )
    return parser


def few_shot_index(labels: np.ndarray, examples: int, rng: np.random.Generator) -> np.ndarray:
    """Up to examples/2 positives, the rest negatives, among rows whose label is known; sorted indices."""
    known = ~np.isnan(labels)
    positives = np.flatnonzero(known & (labels == 1))
    negatives = np.flatnonzero(known & (labels == 0))
    if len(positives) < 2 or len(negatives) < 2:
        raise ValueError(
            f"expected at least 2 positive and 2 negative training images for the new label, got "
            f"{len(positives)} and {len(negatives)}"
        )
    n_pos = min(len(positives), examples // 2)
    n_neg = min(len(negatives), examples - n_pos)
    chosen = np.concatenate([rng.choice(positives, n_pos, replace=False), rng.choice(negatives, n_neg, replace=False)])
    return np.sort(chosen)


@torch.no_grad()
def pooled_features(model: XRayClassifier, images: LabelledImages, spec: PreprocessSpec, device, progress: bool):
    """(N, C) float64 pooled encoder features (what the head sees, dropout off) and the (N,) labels."""
    model.eval()
    loader = common.loader(ImageTensorDataset(images, spec, progress=progress), 256, shuffle=False)
    feats, targets = [], []
    for x, y in loader:
        feats.append(model.features(x.to(device)).mean(dim=(2, 3)).double().cpu())
        targets.append(y)
    return torch.cat(feats).numpy(), torch.cat(targets).numpy()[:, 0]


def choose_c_on_validation(
    train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray, seed: int
) -> float:
    """The C whose head ranks the validation images best (falls back to CV when validation has one class)."""
    known = ~np.isnan(val_y)
    if not known.any() or val_y[known].min() == val_y[known].max():
        return fit_head(train_x, train_y, None, seed)[2]
    scores = []
    for value in C_GRID:
        weight, bias, _ = fit_head(train_x, train_y, value, seed)
        scores.append(metrics.auroc(val_y, val_x @ weight + bias) or 0.0)
    return C_GRID[int(np.argmax(scores))]


def fit_head(features: np.ndarray, labels: np.ndarray, c: float | None, seed: int) -> tuple[np.ndarray, float, float]:
    """Standardised L2 logistic regression folded back into raw-feature (weight, bias); returns (w, b, C).

    With `c` None, C comes from 5-fold cross-validation on these examples."""
    mean, std = features.mean(axis=0), features.std(axis=0)
    std[std < 1e-12] = 1.0
    z = (features - mean) / std
    if c is None:
        folds = min(5, int(labels.sum()), int((1 - labels).sum()))
        if folds >= 2:
            cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
            scores = [
                cross_val_score(LogisticRegression(C=value, max_iter=5000), z, labels, cv=cv, scoring="roc_auc").mean()
                for value in C_GRID
            ]
            c = C_GRID[int(np.argmax(scores))]
        else:
            c = 1.0
    fitted = LogisticRegression(C=c, max_iter=5000).fit(z, labels)
    weight = fitted.coef_[0] / std
    bias = float(fitted.intercept_[0] - np.sum(fitted.coef_[0] * mean / std))
    return weight, bias, float(c)


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Fit the new label's head row on the base encoder's features, score it, save the grown checkpoint."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = common.select_device(args.device)
    base = checkpoints.load_checkpoint(args.base, kind="classifier")
    model = cast(XRayClassifier, checkpoints.model_from_checkpoint(base).to(device))
    if args.label in model.labels:
        raise ValueError(f"the base model already has {args.label!r}; its labels are {list(model.labels)}")
    spec = PreprocessSpec.from_dict(base["spec"])
    splits = label_splits(base, args)
    rng = np.random.default_rng(args.seed)
    chosen = few_shot_index(splits["train"].labels[:, 0], args.examples, rng)
    progress = not args.quiet
    train_x, train_y = pooled_features(model, splits["train"].subset(chosen), spec, device, progress)
    val_x, val_y = pooled_features(model, splits["val"], spec, device, progress)
    c = args.C
    if c is None and args.select_c == "val":
        c = choose_c_on_validation(train_x, train_y, val_x, val_y, args.seed)
    weight, bias, c = fit_head(train_x, train_y, c, args.seed)
    append_head(model, args.label, weight, bias)
    threshold, test_name, table = score_new_label(model, splits, spec, device, args, (weight, bias), (val_x, val_y))
    added = {
        "label": args.label,
        "examples": len(chosen),
        "positives": int(train_y.sum()),
        "C": c,
        "C_selected_by": "given" if args.C is not None else args.select_c,
        "split": test_name,
        "metrics": table[0].to_dict(),
        "base": str(args.base),
        "base_sha256": sha256_file(args.base),
    }
    print(
        f"{args.label}: {len(chosen)} examples ({added['positives']} positive), C={c:g}\n"
        f"{metrics.format_metrics(table)}"
    )
    out_dir = Path(args.output_dir)
    save_grown_checkpoint(out_dir / "model.ckpt", base, model, threshold, added)
    (out_dir / "add_label.json").write_text(json.dumps(added, indent=2))
    return {"checkpoint": out_dir / "model.ckpt", "added": added, "model": model}


def label_splits(base: dict[str, Any], args: argparse.Namespace) -> dict[str, LabelledImages]:
    """The base checkpoint's train/val/test split (of --data, if given) with the new label as the only column."""
    return checkpoints.splits_from_checkpoint(base, args.data, labels=[args.label])


def append_head(model: XRayClassifier, label: str, weight: np.ndarray, bias: float) -> None:
    """One more row of the linear head, for `label`, with the fitted raw-feature weight and bias."""
    model.add_head(label)
    with torch.no_grad():
        model.head.weight[-1] = torch.as_tensor(weight, dtype=model.head.weight.dtype)
        model.head.bias[-1] = torch.as_tensor(bias, dtype=model.head.bias.dtype)


def score_new_label(
    model: XRayClassifier,
    splits: dict[str, LabelledImages],
    spec: PreprocessSpec,
    device,
    args: argparse.Namespace,
    head: tuple[np.ndarray, float],
    validation: tuple[np.ndarray, np.ndarray],
) -> tuple[dict[str, float], str, list[metrics.LabelMetrics]]:
    """(threshold chosen on validation, the split scored, its metrics): test, or validation when test is empty."""
    weight, bias = head
    val_x, val_y = validation

    def probabilities(x: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(x @ weight + bias)))

    val_p = probabilities(val_x)
    threshold = calibrate.label_thresholds(
        [args.label], val_y[:, None], val_p[:, None], target_sensitivity=args.target_sensitivity
    )
    test_name = "test" if len(splits["test"]) else "val"
    if test_name == "test":
        test_x, test_y = pooled_features(model, splits["test"], spec, device, not args.quiet)
        test_p = probabilities(test_x)
    else:
        test_p, test_y = val_p, val_y
    table = metrics.label_metrics(
        [args.label], test_y[:, None], test_p[:, None], threshold, n_boot=args.bootstrap, seed=args.seed
    )
    return threshold, test_name, table


def save_grown_checkpoint(
    path: Path, base: dict[str, Any], model: XRayClassifier, threshold: dict[str, float], added: dict[str, Any]
) -> None:
    """The base checkpoint with the grown model, the new label's threshold and its metrics appended."""
    grown_metrics = dict(base.get("metrics", {}))
    grown_metrics["labels"] = [*grown_metrics.get("labels", []), dict(added["metrics"])]
    grown_metrics["added_labels"] = [*grown_metrics.get("added_labels", []), added]
    path.parent.mkdir(parents=True, exist_ok=True)
    checkpoint = {
        **{k: v for k, v in base.items() if k not in ("model", "config", "labels", "thresholds", "metrics")},
        "model": model.state_dict(),
        "config": model.config.to_dict(),
        "labels": list(model.labels),
        "thresholds": {**base.get("thresholds", {}), **threshold},
        "metrics": grown_metrics,
    }
    checkpoints.save_checkpoint(path, checkpoint)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
