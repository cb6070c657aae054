"""`xray eval`: a checkpoint's evaluation as JSON and an HTML report with plots.

Classifier: per-label AUROC (bootstrap 95% CI), AUPRC, sensitivity/specificity at the stored thresholds, ROC
curves, calibration (ECE + reliability plot), training curves, the learned first-layer filters, and a reference
row from the classic filter-bank model trained on the same split (what learning the convolutions buys).

Autoencoder: outlier AUROC against the images given with --outliers, the error distributions, a reconstruction
gallery (input / reconstruction / error map) and the bottleneck codes in 2-D (the codes themselves when the
bottleneck is 2, else their first two principal components) coloured by label.

The split is rebuilt from the checkpoint's own data and split settings, so "test" means the patients the model
never saw.
"""

from __future__ import annotations

import argparse
import html
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from models.autoencoder import AutoencoderConfig, ConvAutoencoder  # noqa: E402
from models.classifier import ClassifierConfig, XRayClassifier, first_conv_key  # noqa: E402
from models.imaging import ImagingError, decode_file  # noqa: E402
from models.preprocessing import PreprocessSpec, preprocess  # noqa: E402
from training import checkpoints, common, metrics
from training.datasets import LabelledImages, preprocess_all  # noqa: E402
from training.filterbank import FilterBankClassifier  # noqa: E402
from training.sources import SPEC_HELP, limit_labelled_training, load_splits, policy_from_args  # noqa: E402

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")
DPI = 100


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xray eval",
        description="Evaluate a classifier or autoencoder checkpoint: report.json + index.html with plots.",
        add_help=add_help,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
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
    parser.add_argument("--output-dir", type=Path, default=None, help="default: report/ beside the checkpoint")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


# ------------------------------------------------------------------------------------------------ data
def rebuild_splits(checkpoint: dict[str, Any], data: list[str] | None) -> dict[str, LabelledImages]:
    saved = argparse.Namespace(**checkpoint["args"])
    splits = load_splits(data or saved.data, policy_from_args(saved))
    labels = checkpoint.get("labels")
    if labels:
        splits = {name: split.select_labels(labels) for name, split in splits.items()}
    return limit_labelled_training(splits, getattr(saved, "label_fraction", 1.0), saved.split_seed)


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


# ------------------------------------------------------------------------------------------------ plots
def _save(fig, path: Path) -> str:
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path.name


def plot_roc(label: str, curves: dict[str, tuple[np.ndarray, np.ndarray, float]], path: Path) -> str:
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for name, (fpr, tpr, auc) in curves.items():
        ax.plot(fpr, tpr, label=f"{name} (AUROC {auc:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=f"ROC: {label}", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def plot_reliability(tables: dict[str, metrics.Calibration], path: Path) -> str:
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="perfect calibration")
    for label, table in tables.items():
        points = [(m, f) for m, f in zip(table.mean_predicted, table.fraction_positive, strict=True) if m is not None]
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker="o", markersize=3, label=f"{label} (ECE {table.ece:.3f})")
    ax.set(
        xlabel="mean predicted probability", ylabel="fraction positive", title="Reliability", xlim=(0, 1), ylim=(0, 1)
    )
    ax.legend(fontsize=7, loc="upper left")
    return _save(fig, path)


def plot_training_curves(history: list[dict[str, Any]], path: Path, score_key: str, score_name: str) -> str:
    epochs = [entry["epoch"] for entry in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    left.plot(epochs, [entry.get("loss", np.nan) for entry in history], marker=".")
    if any("val_loss" in entry for entry in history):
        left.plot(epochs, [entry.get("val_loss", np.nan) for entry in history], marker=".", label="validation")
        left.legend(["training", "validation"], fontsize=8)
    left.set(xlabel="epoch", ylabel="loss", title="Training loss")
    right.plot(epochs, [entry.get(score_key, np.nan) for entry in history], marker=".", color="tab:green")
    right.set(xlabel="epoch", ylabel=score_name, title=f"Validation {score_name}")
    fig.tight_layout()
    return _save(fig, path)


def plot_first_layer_filters(encoder: torch.nn.Module, path: Path) -> tuple[str, list[int]]:
    weight = encoder.state_dict()[first_conv_key(encoder)].detach().cpu().float().numpy()  # (F, C, k, k)
    kernels = weight.mean(axis=1)  # grey input: one channel (means over channels otherwise)
    count = kernels.shape[0]
    cols = min(16, count)
    rows = -(-count // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(max(cols * 0.8, 4.0), rows * 0.8 + 0.8), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < count:
            limit = float(np.abs(kernels[i]).max()) or 1.0
            ax.imshow(kernels[i], cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
    fig.suptitle(f"First-layer filters ({count} of {kernels.shape[1]}x{kernels.shape[2]}; red +, blue -)", fontsize=9)
    return _save(fig, path), list(weight.shape)


def plot_error_histogram(chest: np.ndarray, outliers: np.ndarray, threshold: float | None, path: Path) -> str:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    high = float(np.percentile(np.concatenate([chest, outliers]) if outliers.size else chest, 99.5))
    bins = np.linspace(0, max(high, threshold or 0) * 1.05, 50)
    ax.hist(chest, bins=bins, alpha=0.6, label=f"chest films ({chest.size})")
    if outliers.size:
        ax.hist(np.clip(outliers, 0, bins[-1]), bins=bins, alpha=0.6, label=f"non-chest images ({outliers.size})")
    if threshold is not None:
        ax.axvline(threshold, color="black", linestyle="--", label=f"outlier threshold {threshold:.3g}")
    ax.set(xlabel="reconstruction error (MSE)", ylabel="images", title="Reconstruction error")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_gallery(inputs: np.ndarray, outputs: np.ndarray, titles: list[str], path: Path) -> str:
    n = len(inputs)
    fig, axes = plt.subplots(3, n, figsize=(n * 1.6, 5.2), squeeze=False)
    errors = (outputs - inputs) ** 2
    error_max = float(errors.max()) or 1.0
    for i in range(n):
        for row, (image, cmap, limits) in enumerate(
            [
                (inputs[i, 0], "gray", None),
                (outputs[i, 0], "gray", (inputs[i, 0].min(), inputs[i, 0].max())),
                (errors[i, 0], "magma", (0, error_max)),
            ]
        ):
            ax = axes[row, i]
            ax.imshow(
                image, cmap=cmap, vmin=None if limits is None else limits[0], vmax=None if limits is None else limits[1]
            )
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(titles[i], fontsize=7)
    for row, name in enumerate(("input", "reconstruction", "squared error")):
        axes[row, 0].set_ylabel(name, fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_codes(points: np.ndarray, groups: list[str], method: str, path: Path) -> str:
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for group in dict.fromkeys(groups):
        chosen = np.array([g == group for g in groups])
        ax.scatter(
            points[chosen, 0],
            points[chosen, 1],
            s=10,
            alpha=0.7,
            label=f"{group} ({int(chosen.sum())})",
            marker="x" if group.startswith("non-chest") else "o",
        )
    ax.set(xlabel=f"{method} 1", ylabel=f"{method} 2", title=f"Bottleneck codes ({method})")
    ax.legend(fontsize=7)
    return _save(fig, path)


def two_dimensions(codes: np.ndarray) -> tuple[np.ndarray, str, list[float]]:
    """The codes themselves when 2-D, else their first two principal components (+ explained variance)."""
    if codes.shape[1] == 2:
        return codes, "code", [1.0]
    centred = codes - codes.mean(axis=0)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    explained = (singular**2 / max(float((singular**2).sum()), 1e-12))[:2]
    return centred @ vt[:2].T, "PC", [float(v) for v in explained]


# ------------------------------------------------------------------------------------------------ models
@torch.no_grad()
def _batched(fn, x: np.ndarray, device, batch: int = 256) -> np.ndarray:
    out = [fn(torch.from_numpy(x[i : i + batch]).to(device)).cpu().numpy() for i in range(0, len(x), batch)]
    return np.concatenate(out) if out else np.zeros((0,))


def evaluate_classifier(checkpoint: dict, args, out: Path, device) -> dict[str, Any]:
    spec = PreprocessSpec.from_dict(checkpoint["spec"])
    labels = list(checkpoint["labels"])
    thresholds = checkpoint.get("thresholds", {})
    model = XRayClassifier(ClassifierConfig.from_dict(checkpoint["config"]))
    model.load_state_dict(checkpoint["model"])
    model.to(device).eval()
    splits = rebuild_splits(checkpoint, args.data)
    split = evaluation_split(splits, args.split)
    progress = not args.quiet
    x = preprocess_all(splits[split], spec, progress)
    y = splits[split].labels.astype(np.float64)
    probabilities = _batched(lambda t: torch.sigmoid(model(t)), x, device).astype(np.float64)
    table = metrics.label_metrics(labels, y, probabilities, thresholds, n_boot=args.bootstrap, seed=args.seed)

    baseline = None
    baseline_p = None
    if not args.no_baseline:
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
            if baseline_p is not None and not np.isnan(baseline_p[:, k]).all():
                base_points = metrics.roc_points(y[:, k], baseline_p[:, k])
                if base_points is not None:
                    curves["filter bank"] = (*base_points, baseline["labels"][k]["auroc"])
            images["roc"][label] = plot_roc(label, curves, out / f"roc_{_slug(label)}.png")
        if baseline is not None:
            row["baseline_auroc"] = baseline["labels"][k]["auroc"]
        rows.append(row)
    if calibrations:
        images["reliability"] = plot_reliability(calibrations, out / "reliability.png")
    history = checkpoint.get("history") or []
    if history:
        images["training_curves"] = plot_training_curves(
            history, out / "training_curves.png", "val_mean_auroc", "mean AUROC"
        )
    images["filters"], filter_shape = plot_first_layer_filters(model.encoder, out / "first_layer_filters.png")
    comparison = [{"model": f"CNN ({model.config.backbone})", "mean_auroc": metrics.mean_auroc(m.auroc for m in table)}]
    if baseline is not None:
        comparison.append({"model": "filter bank + logistic regression", "mean_auroc": baseline["mean_auroc"]})
    return {
        "split": split,
        "labels": rows,
        "mean_auroc": metrics.mean_auroc(m.auroc for m in table),
        "images_evaluated": int(len(x)),
        "baseline": baseline,
        "comparison": comparison,
        "first_layer_filters_shape": filter_shape,
        "plots": images,
        "table": metrics.format_metrics(table),
    }


def evaluate_autoencoder(checkpoint: dict, args, out: Path, device) -> dict[str, Any]:
    spec = PreprocessSpec.from_dict(checkpoint["spec"])
    model = ConvAutoencoder(AutoencoderConfig.from_dict(checkpoint["config"]))
    model.load_state_dict(checkpoint["model"])
    model.to(device).eval()
    threshold = (checkpoint.get("outlier") or {}).get("threshold")
    splits = rebuild_splits(checkpoint, args.data)
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
    result["plots"]["error_histogram"] = plot_error_histogram(
        errors, outlier_errors, threshold, out / "error_histogram.png"
    )
    # gallery: chest films spread over the error range, then up to 4 outliers
    order = np.argsort(errors)
    picks = order[np.linspace(0, len(order) - 1, min(args.gallery, len(order))).round().astype(int)]
    gallery_x = [x[i] for i in picks] + [outlier_x[i] for i in range(min(4, len(outlier_x)))]
    titles = [f"chest, err {errors[i]:.3g}" for i in picks]
    titles += [f"{outlier_names[i][:14]}, err {outlier_errors[i]:.3g}" for i in range(min(4, len(outlier_x)))]
    if gallery_x:
        stacked = np.stack(gallery_x)
        result["plots"]["gallery"] = plot_gallery(
            stacked, _batched(model, stacked, device), titles, out / "reconstruction_gallery.png"
        )
    codes = _batched(model.encode, np.concatenate([x, outlier_x]), device)
    points, method, explained = two_dimensions(codes)
    label_name = chest.label_names[0] if chest.label_names else None
    groups = []
    for value in chest.labels[:, 0] if label_name else np.full(len(x), np.nan):
        groups.append("chest, label unknown" if np.isnan(value) else f"chest, {label_name} {'+' if value else '-'}")
    groups += ["non-chest"] * len(outlier_x)
    result["plots"]["codes"] = plot_codes(points, groups, method, out / "bottleneck_codes.png")
    result["codes"] = {
        "bottleneck": int(codes.shape[1]),
        "method": method,
        "explained_variance": explained,
        "coloured_by": label_name,
    }
    history = checkpoint.get("history") or []
    if history:
        key = "val_error" if "val_error" in history[0] else "val_loss"
        result["plots"]["training_curves"] = plot_training_curves(
            history, out / "training_curves.png", key, key.replace("_", " ")
        )
    return result


# ------------------------------------------------------------------------------------------------ HTML
def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text).strip("_").lower() or "label"


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}"
    return html.escape(str(value))


def _img(name: str | None, alt: str) -> str:
    return (
        f'<figure><img src="{html.escape(name)}" alt="{html.escape(alt)}"><figcaption>{html.escape(alt)}'
        "</figcaption></figure>"
        if name
        else ""
    )


def render_html(report: dict[str, Any]) -> str:
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>Evaluation: {html.escape(report['checkpoint'])}</title>",
        "<style>body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f3f3f3}"
        "td:first-child,th:first-child{text-align:left}figure{display:inline-block;margin:0 1em 1em 0}"
        "img{max-width:100%}</style></head><body>",
        f"<h1>Evaluation of {html.escape(report['kind'])}</h1>",
        f"<p>checkpoint <code>{html.escape(report['checkpoint'])}</code>, split <b>{report['split']}</b> "
        f"({report['images_evaluated']} images), data {html.escape(', '.join(report['data']))}. Research use only.</p>",
    ]
    plots = report["plots"]
    if report["kind"] == "classifier":
        parts.append(
            "<h2>Per label</h2><table><tr><th>label</th><th>AUROC</th><th>95% CI</th><th>AUPRC</th>"
            "<th>threshold</th><th>sensitivity</th><th>specificity</th><th>ECE</th><th>pos</th><th>neg</th>"
            "<th>filter bank AUROC</th></tr>"
        )
        for row in report["labels"]:
            ci = f"{row['ci_low']:.3f}–{row['ci_high']:.3f}" if row.get("ci_low") is not None else "–"
            parts.append(
                f"<tr><td>{html.escape(row['label'])}</td><td>{_fmt(row['auroc'])}</td><td>{ci}</td>"
                f"<td>{_fmt(row.get('auprc'))}</td><td>{_fmt(row.get('threshold'))}</td>"
                f"<td>{_fmt(row.get('sensitivity'))}</td><td>{_fmt(row.get('specificity'))}</td>"
                f"<td>{_fmt(row.get('ece'))}</td><td>{row['positives']}</td><td>{row['negatives']}</td>"
                f"<td>{_fmt(row.get('baseline_auroc'))}</td></tr>"
            )
        parts.append(
            "</table><h2>What learning the convolutions buys</h2><table><tr><th>model</th><th>mean AUROC</th></tr>"
        )
        parts += [
            f"<tr><td>{html.escape(r['model'])}</td><td>{_fmt(r['mean_auroc'])}</td></tr>" for r in report["comparison"]
        ]
        parts.append("</table><h2>ROC curves</h2>")
        parts += [_img(name, f"ROC {label}") for label, name in plots["roc"].items()]
        parts.append("<h2>Calibration</h2>" + _img(plots.get("reliability"), "reliability diagram"))
        parts.append("<h2>Training</h2>" + _img(plots.get("training_curves"), "training curves"))
        parts.append("<h2>Learned first-layer filters</h2>" + _img(plots.get("filters"), "first-layer filters"))
    else:
        parts.append("<h2>Outlier detection</h2><table>")
        for key in (
            "threshold",
            "chest_flagged_fraction",
            "outlier_images",
            "outlier_auroc",
            "outliers_flagged_fraction",
        ):
            parts.append(f"<tr><td>{key.replace('_', ' ')}</td><td>{_fmt(report.get(key))}</td></tr>")
        parts.append("</table>")
        if report.get("outlier_images_skipped"):
            parts.append(f"<p>not readable: {html.escape(', '.join(report['outlier_images_skipped']))}</p>")
        parts.append(_img(plots.get("outlier_roc"), "outlier ROC") + _img(plots.get("error_histogram"), "errors"))
        parts.append("<h2>Reconstructions</h2>" + _img(plots.get("gallery"), "input / reconstruction / error"))
        parts.append("<h2>Bottleneck codes</h2>" + _img(plots.get("codes"), "bottleneck codes in 2-D"))
        parts.append("<h2>Training</h2>" + _img(plots.get("training_curves"), "training curves"))
    parts.append("</body></html>")
    return "\n".join(part for part in parts if part)


def main(args: argparse.Namespace) -> dict[str, Any]:
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
        print("\n".join(f"{row['model']}: mean AUROC {_fmt(row['mean_auroc'])}" for row in body["comparison"]))
    else:
        print(f"outlier AUROC {_fmt(body.get('outlier_auroc'))} on {body['outlier_images']} non-chest images")
    print(f"report: {out / 'index.html'}")
    return {"report": report, "output_dir": out}


if __name__ == "__main__":
    main(get_args_parser().parse_args())
