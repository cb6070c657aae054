"""`xray eval`: a checkpoint's evaluation as JSON and an HTML report with plots.

Classifier: per-label AUROC (bootstrap 95% CI), AUPRC, sensitivity/specificity at the stored thresholds, ROC
curves, calibration (ECE + reliability plot), training curves, the learned first-layer filters, and a reference
row from the classic filter-bank model trained on the same split (what learning the convolutions buys).

Autoencoder: outlier AUROC against the images given with --outliers, the error distributions, a reconstruction
gallery (input / reconstruction / error map) and the bottleneck codes in 2-D (the codes themselves when the
bottleneck is 2, else their first two principal components) coloured by label.

The split is rebuilt from the checkpoint's own data and split settings (`checkpoints.splits_from_checkpoint`), so
"test" means the patients the model never saw. This module computes the numbers; the figures are drawn by
`training.evaluation_plots` and the HTML page by `training.evaluation_html`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.calibration import calibrate
from models.imaging import ImagingError, decode_file
from models.outlier_gate import combined_threshold, component_scores
from models.preprocessing import PreprocessSpec, preprocess
from training import checkpoints, common, metrics
from training.datasets import LabelledImages, preprocess_all
from training.evaluation_html import format_value, render_html, slug
from training.evaluation_plots import (
    plot_codes,
    plot_error_histogram,
    plot_first_layer_filters,
    plot_gallery,
    plot_reliability,
    plot_roc,
    plot_training_curves,
)
from training.filterbank import FilterBankClassifier
from training.sources import SPEC_HELP

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    description = "Evaluate a classifier or autoencoder checkpoint: report.json + index.html with plots."
    parser = common.script_parser("xray eval", description, add_help)
    parser.add_argument("--checkpoint", type=Path, required=True, help="model.ckpt of a classifier or autoencoder")
    parser.add_argument("--data", action="append", default=None, help=SPEC_HELP + " (default: the checkpoint's)")
    parser.add_argument("--split", choices=("test", "val"), default="test", help="the split to evaluate on")
    parser.add_argument(
        "--outliers",
        action="append",
        type=Path,
        default=[],
        help="non-chest images (files or folders, PNG/JPEG/DICOM) for the autoencoder's outlier AUROC; repeatable",
    )
    parser.add_argument("--no-baseline", action="store_true", help="skip the classic filter-bank reference model")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for AUROC CIs")
    parser.add_argument("--gallery", type=int, default=6, help="chest films in the reconstruction gallery")
    common.add_run_arguments(
        parser, output_dir=None, output_help="default: report/ beside the checkpoint", seed_help="bootstrap seed"
    )
    return parser


# ------------------------------------------------------------------------------------------------ data
def evaluation_split(splits: dict[str, LabelledImages], wanted: str) -> str:
    """`wanted`, or "val" when the checkpoint was trained without a test split (as the autoencoder is by default)."""
    if len(splits[wanted]):
        return wanted
    if len(splits["val"]):
        print(f"the {wanted} split is empty for this checkpoint's data settings; evaluating on val")
        return "val"
    raise ValueError(f"expected a non-empty {wanted} or val split, both are empty")


def load_outlier_images(paths: list[Path], spec: PreprocessSpec) -> tuple[np.ndarray, list[str], list[str]]:
    """(N, 1, S, S) inputs from every decodable image under `paths`; names; and what could not be read (why)."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"expected an image file or folder for --outliers, {path} does not exist")
    inputs, names, skipped = [], [], []
    for file in files:
        try:
            inputs.append(preprocess(decode_file(file), spec))
            names.append(file.name)
        except ImagingError as error:
            skipped.append(f"{file.name}: {error.code}")
    size = spec.size
    return (np.stack(inputs) if inputs else np.zeros((0, 1, size, size), np.float32)), names, skipped


def two_dimensions(codes: np.ndarray) -> tuple[np.ndarray, str, list[float]]:
    """The codes themselves when 2-D, else their first two principal components (+ explained variance)."""
    if codes.shape[1] == 2:
        return codes, "code", [1.0]
    centred = codes - codes.mean(axis=0)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    explained = (singular**2 / max(float((singular**2).sum()), 1e-12))[:2]
    return centred @ vt[:2].T, "PC", [float(v) for v in explained]


# ------------------------------------------------------------------------------------------------ shared steps
@torch.no_grad()
def _batched(fn, x: np.ndarray, device, batch: int = 256) -> np.ndarray:
    """`fn` applied to `x` in batches on `device`, as one numpy array."""
    out = [fn(torch.from_numpy(x[i : i + batch]).to(device)).cpu().numpy() for i in range(0, len(x), batch)]
    return np.concatenate(out) if out else np.zeros((0,))


def _training_curves(history: list[dict[str, Any]], out: Path, key: str, name: str) -> dict[str, str]:
    """{"training_curves": file} when the checkpoint has a training history, else {}."""
    if not history:
        return {}
    return {"training_curves": plot_training_curves(history, out / "training_curves.png", key, name)}


# ------------------------------------------------------------------------------------------------ classifier
def evaluate_classifier(checkpoint: dict, args, out: Path, device) -> dict[str, Any]:
    """Per-label metrics, plots and the filter-bank reference of a classifier checkpoint on the evaluation split."""
    spec = PreprocessSpec.from_dict(checkpoint["spec"])
    labels = list(checkpoint["labels"])
    thresholds = checkpoint.get("thresholds", {})
    model = checkpoints.model_from_checkpoint(checkpoint).to(device)
    splits = checkpoints.splits_from_checkpoint(checkpoint, args.data)
    split = evaluation_split(splits, args.split)
    x = preprocess_all(splits[split], spec, not args.quiet)
    y = splits[split].labels.astype(np.float64)
    raw = _batched(lambda t: torch.sigmoid(model(t)), x, device).astype(np.float64)
    probabilities = calibrate(raw, labels, checkpoint.get("calibration"))  # what the service shows
    origins = splits[split].origins
    table, per_source = metrics.per_source_metrics(
        labels, y, probabilities, origins, thresholds, n_boot=args.bootstrap, seed=args.seed
    )
    baseline, baseline_p = (None, None) if args.no_baseline else filter_bank_baseline(splits, spec, labels, x, y, args)
    rows, images = label_rows(labels, table, y, probabilities, baseline, baseline_p, out)
    images.update(uncalibrated_reliability(labels, y, raw, rows, out))
    images.update(_training_curves(checkpoint.get("history") or [], out, "val_mean_auroc", "mean AUROC"))
    images["filters"], filter_shape = plot_first_layer_filters(model.encoder, out / "first_layer_filters.png")
    comparison = [{"model": f"CNN ({model.config.backbone})", "mean_auroc": metrics.mean_auroc(m.auroc for m in table)}]
    if baseline is not None:
        comparison.append({"model": "filter bank + logistic regression", "mean_auroc": baseline["mean_auroc"]})
    return {
        "split": split,
        "labels": rows,
        "mean_auroc": metrics.mean_auroc(m.auroc for m in table),
        "per_source": per_source,
        "calibration": checkpoint.get("calibration") or {},
        "images_evaluated": int(len(x)),
        "baseline": baseline,
        "comparison": comparison,
        "first_layer_filters_shape": filter_shape,
        "plots": images,
        "table": metrics.format_metrics(table),
    }


def filter_bank_baseline(
    splits: dict[str, LabelledImages], spec: PreprocessSpec, labels: list[str], x: np.ndarray, y: np.ndarray, args
) -> tuple[dict[str, Any], np.ndarray]:
    """The classic filter-bank model fitted on the same train/val split and scored on `x`: (summary, probabilities)."""
    progress = not args.quiet
    train_x = preprocess_all(splits["train"], spec, progress)
    val_x = preprocess_all(splits["val"], spec, progress)
    classic = FilterBankClassifier(spec.size, labels).fit(
        train_x, splits["train"].labels.astype(np.float64), val_x, splits["val"].labels.astype(np.float64)
    )
    baseline_p = classic.predict_proba(x)
    baseline_table = metrics.label_metrics(
        labels, y, np.nan_to_num(baseline_p, nan=0.5), None, n_boot=args.bootstrap, seed=args.seed
    )
    baseline = {
        "model": f"filter bank ({len(classic.bank)} fixed filters: Gaussian, LoG, Gabor) + pooling + "
        "logistic regression",
        "filters": list(classic.bank),
        "C": classic.chosen_c,
        "mean_auroc": metrics.mean_auroc(m.auroc for m in baseline_table),
        "labels": [m.to_dict() for m in baseline_table],
    }
    return baseline, baseline_p


def label_rows(
    labels: list[str],
    table: list[metrics.LabelMetrics],
    y: np.ndarray,
    probabilities: np.ndarray,
    baseline: dict[str, Any] | None,
    baseline_p: np.ndarray | None,
    out: Path,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One report row per label (AUROC, AUPRC, calibration, baseline AUROC) and the ROC + reliability plots."""
    rows, images = [], {"roc": {}}
    calibrations = {}
    for k, (label, scored) in enumerate(zip(labels, table, strict=True)):
        row = scored.to_dict()
        row["auprc"] = metrics.auprc(y[:, k], probabilities[:, k])
        table_k = metrics.calibration(y[:, k], probabilities[:, k])
        if table_k is not None:
            calibrations[label] = table_k
            row["ece"] = table_k.ece
            row["reliability"] = table_k.to_dict()
        curves = {}
        points = metrics.roc_points(y[:, k], probabilities[:, k])
        if points is not None:
            curves["CNN"] = (*points, scored.auroc)
            if baseline is not None and baseline_p is not None and not np.isnan(baseline_p[:, k]).all():
                base_points = metrics.roc_points(y[:, k], baseline_p[:, k])
                if base_points is not None:
                    curves["filter bank"] = (*base_points, baseline["labels"][k]["auroc"])
            images["roc"][label] = plot_roc(label, curves, out / f"roc_{slug(label)}.png")
        if baseline is not None:
            row["baseline_auroc"] = baseline["labels"][k]["auroc"]
        rows.append(row)
    if calibrations:
        images["reliability"] = plot_reliability(calibrations, out / "reliability.png")
    return rows, images


def uncalibrated_reliability(
    labels: list[str], y: np.ndarray, raw: np.ndarray, rows: list[dict[str, Any]], out: Path
) -> dict[str, str]:
    """ECE of the network's raw probabilities beside each row's calibrated ECE, and their reliability plot."""
    tables = {}
    for k, (label, row) in enumerate(zip(labels, rows, strict=True)):
        table = metrics.calibration(y[:, k], raw[:, k])
        row["ece_uncalibrated"] = table.ece if table is not None else None
        if table is not None:
            tables[label] = table
    if not tables:
        return {}
    return {"reliability_uncalibrated": plot_reliability(tables, out / "reliability_uncalibrated.png")}


# ------------------------------------------------------------------------------------------------ autoencoder
def evaluate_autoencoder(checkpoint: dict, args, out: Path, device) -> dict[str, Any]:
    """Outlier AUROC against --outliers, error distributions, a reconstruction gallery and the codes in 2-D."""
    spec = PreprocessSpec.from_dict(checkpoint["spec"])
    model = checkpoints.model_from_checkpoint(checkpoint).to(device)
    threshold = (checkpoint.get("outlier") or {}).get("threshold")
    splits = checkpoints.splits_from_checkpoint(checkpoint, args.data)
    split = evaluation_split(splits, args.split)
    chest = splits[split]
    x = preprocess_all(chest, spec, not args.quiet)
    errors = _batched(model.reconstruction_error, x, device)
    outlier_x, outlier_names, skipped = load_outlier_images(args.outliers, spec)
    outlier_errors = _batched(model.reconstruction_error, outlier_x, device) if len(outlier_x) else np.zeros(0)
    result: dict[str, Any] = {
        "split": split,
        "images_evaluated": int(len(x)),
        "outlier_images": int(len(outlier_x)),
        "outlier_images_skipped": skipped,
        "threshold": threshold,
        "chest_error_quantiles": {str(q): float(np.percentile(errors, q)) for q in (50, 95, 99)},
        "chest_flagged_fraction": float((errors > threshold).mean()) if threshold is not None else None,
        "plots": {},
    }
    if len(outlier_x):
        score_outliers(result, errors, outlier_errors, threshold, args, out)
        result["gate"] = gate_components(model, checkpoint.get("outlier") or {}, x, outlier_x, device)
    result["plots"]["error_histogram"] = plot_error_histogram(
        errors, outlier_errors, threshold, out / "error_histogram.png"
    )
    gallery = reconstruction_gallery(model, x, errors, outlier_x, outlier_names, outlier_errors, args.gallery, device)
    if gallery is not None:
        result["plots"]["gallery"] = plot_gallery(*gallery, out / "reconstruction_gallery.png")
    result["plots"]["codes"], result["codes"] = code_plot(model, chest, x, outlier_x, device, out)
    history = checkpoint.get("history") or []
    if history:
        key = "val_error" if "val_error" in history[0] else "val_loss"
        result["plots"].update(_training_curves(history, out, key, key.replace("_", " ")))
    return result


def score_outliers(
    result: dict[str, Any], errors: np.ndarray, outlier_errors: np.ndarray, threshold: float | None, args, out: Path
) -> None:
    """Add the chest-vs-non-chest AUROC (bootstrap CI), the flagged fraction and the outlier ROC plot to `result`."""
    truth = np.concatenate([np.zeros(len(errors)), np.ones(len(outlier_errors))])
    scores = np.concatenate([errors, outlier_errors])
    result["outlier_auroc"] = metrics.auroc(truth, scores)
    ci = metrics.bootstrap_auroc_ci(truth, scores, n_boot=args.bootstrap, seed=args.seed)
    result["outlier_auroc_ci"] = list(ci) if ci else None
    if threshold is not None:
        result["outliers_flagged_fraction"] = float((outlier_errors > threshold).mean())
    fpr, tpr = metrics.roc_points(truth, scores)
    result["plots"]["outlier_roc"] = plot_roc(
        "chest vs non-chest", {"reconstruction error": (fpr, tpr, result["outlier_auroc"])}, out / "outlier_roc.png"
    )


def gate_components(model, outlier: dict[str, Any], x: np.ndarray, outlier_x: np.ndarray, device) -> dict[str, Any]:
    """The gate's AUROC (chest vs --outliers) per component and combined, and the share gated on each side at the
    combined threshold: what the service decides from the same manifest parameters (models.outlier_gate)."""
    if "threshold" not in outlier:
        return {}
    both = np.concatenate([x, outlier_x])
    scores = component_scores(_batched(model.reconstruction_error, both, device), _batched(model.encode, both, device),
                              outlier)  # fmt: skip
    truth = np.concatenate([np.zeros(len(x)), np.ones(len(outlier_x))])
    gated = scores["combined"] > combined_threshold(outlier)
    return {
        "auroc": {name: metrics.auroc(truth, values) for name, values in scores.items()},
        "threshold": combined_threshold(outlier),
        "chest_gated_fraction": float(gated[: len(x)].mean()),
        "outliers_gated_fraction": float(gated[len(x) :].mean()),
    }


def reconstruction_gallery(
    model: torch.nn.Module,
    x: np.ndarray,
    errors: np.ndarray,
    outlier_x: np.ndarray,
    outlier_names: list[str],
    outlier_errors: np.ndarray,
    count: int,
    device,
) -> tuple[np.ndarray, np.ndarray, list[str]] | None:
    """(inputs, reconstructions, titles): `count` chest films spread over the error range, then up to 4 outliers."""
    order = np.argsort(errors)
    picks = order[np.linspace(0, len(order) - 1, min(count, len(order))).round().astype(int)]
    gallery_x = [x[i] for i in picks] + [outlier_x[i] for i in range(min(4, len(outlier_x)))]
    titles = [f"chest, err {errors[i]:.3g}" for i in picks]
    titles += [f"{outlier_names[i][:14]}, err {outlier_errors[i]:.3g}" for i in range(min(4, len(outlier_x)))]
    if not gallery_x:
        return None
    stacked = np.stack(gallery_x)
    return stacked, _batched(model, stacked, device), titles


def code_plot(
    model: torch.nn.Module, chest: LabelledImages, x: np.ndarray, outlier_x: np.ndarray, device, out: Path
) -> tuple[str, dict[str, Any]]:
    """The bottleneck codes of chest films and outliers in 2-D, coloured by the first label: (plot, summary)."""
    codes = _batched(model.encode, np.concatenate([x, outlier_x]), device)
    points, method, explained = two_dimensions(codes)
    label_name = chest.label_names[0] if chest.label_names else None
    groups = []
    for value in chest.labels[:, 0] if label_name else np.full(len(x), np.nan):
        groups.append("chest, label unknown" if np.isnan(value) else f"chest, {label_name} {'+' if value else '-'}")
    groups += ["non-chest"] * len(outlier_x)
    plot = plot_codes(points, groups, method, out / "bottleneck_codes.png")
    summary = {
        "bottleneck": int(codes.shape[1]),
        "method": method,
        "explained_variance": explained,
        "coloured_by": label_name,
    }
    return plot, summary


# ------------------------------------------------------------------------------------------------ command
def main(args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate the checkpoint; write report.json, index.html and the plots; print the summary."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = common.select_device(args.device)
    checkpoint = checkpoints.load_checkpoint(args.checkpoint)
    kind = checkpoint.get("kind")
    out = Path(args.output_dir or Path(args.checkpoint).parent / "report")
    out.mkdir(parents=True, exist_ok=True)
    if kind == "classifier":
        body = evaluate_classifier(checkpoint, args, out, device)
    elif kind == "autoencoder":
        body = evaluate_autoencoder(checkpoint, args, out, device)
    else:
        raise ValueError(f"expected a classifier or autoencoder checkpoint, got kind {kind!r}")
    report = {
        "kind": kind,
        "checkpoint": str(args.checkpoint),
        "data": list(args.data or checkpoint["args"]["data"]),
        **body,
    }
    (out / "report.json").write_text(json.dumps(report, indent=2, default=float))
    (out / "index.html").write_text(render_html(report), encoding="utf-8")
    if kind == "classifier":
        print(body["table"])
        print("\n".join(f"{row['model']}: mean AUROC {format_value(row['mean_auroc'])}" for row in body["comparison"]))
    else:
        print(f"outlier AUROC {format_value(body.get('outlier_auroc'))} on {body['outlier_images']} non-chest images")
    print(f"report: {out / 'index.html'}")
    return {"report": report, "output_dir": out}


if __name__ == "__main__":
    main(get_args_parser().parse_args())
