"""`xray calibrate`: adopt a registered model at a new site without retraining.

    xray calibrate --model chest-classifier --data csv:/pacs-export/labels.csv --promote

The site's own films are split by patient into a fitting half and a checking half (`--fit-fraction`). On the
fitting half the classifier's per-label Platt parameters and thresholds (Youden's J, or `--target-sensitivity`) are
refitted; for an autoencoder (labels not needed) the gate's error and code-distance thresholds are set at
`--outlier-percentile` of the site's films and the combined threshold at the gate's own percentile. Labels the
site's data does not carry keep their previous calibration and threshold. The result is a new version of the model
with the SAME ONNX file (and of its int8 variant, if any), whose manifest records what it was recalibrated on and
the checking half's AUROC and ECE before and after; `--promote` points an alias at it.
Inference runs through ONNX Runtime, exactly the graph the service serves.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from models.calibration import calibrate
from models.outlier_gate import component_scores, mahalanobis
from models.preprocessing import PreprocessSpec
from models.registry import INT8_SUFFIX, Manifest, Registry, ResolvedModel, check_name
from models.settings import default_registry_dir
from training import calibrate as fitting
from training import common, metrics
from training.datasets import LabelledImages, preprocess_all
from training.export.manifest import portable
from training.export.onnx_check import ort_session, run_ort
from training.sources import SPEC_HELP, SplitPolicy, load_splits

_REGISTERED = ("name", "version", "onnx_sha256", "onnx_bytes", "created_at")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    description = "Refit a registered model's calibration, thresholds or outlier threshold on a site's own films."
    parser = common.script_parser("xray calibrate", description, add_help)
    parser.add_argument("--model", required=True, help="NAME (the version its --alias points at) or NAME@VERSION")
    parser.add_argument("--data", action="append", required=True, help=SPEC_HELP)
    parser.add_argument("--registry", type=Path, default=default_registry_dir(), help="registry root folder")
    parser.add_argument("--alias", default="production", help="alias that names the version when --model has none")
    parser.add_argument("--fit-fraction", type=float, default=0.5, help="patients whose films fit (the rest check)")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the patient-level fit/check split")
    parser.add_argument(
        "--target-sensitivity", type=float, default=None, help="thresholds for this sensitivity instead of Youden's J"
    )
    parser.add_argument(
        "--outlier-percentile", type=float, default=99.0, help="autoencoders: percentile of the site's errors"
    )
    parser.add_argument("--promote", nargs="?", const="production", default=None, help="alias to point at the result")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def resolve(registry: Registry, text: str, alias: str) -> ResolvedModel:
    name, _, version = text.partition("@")
    check_name(name)
    if name.endswith(INT8_SUFFIX):
        raise ValueError(f"calibrate the fp32 model ({name.removesuffix(INT8_SUFFIX)}); its int8 variant follows it")
    return registry.get(name, int(version)) if version else registry.resolve(name, alias)


def site_halves(specs: list[str], fit_fraction: float, seed: int, size: int) -> tuple[LabelledImages, LabelledImages]:
    """(fitting, checking) halves of the site's films, split by patient (official val/test splits where they exist)."""
    if not 0.0 < fit_fraction < 1.0:
        raise ValueError(f"expected a fit fraction in (0, 1), got {fit_fraction}")
    policy = SplitPolicy(val_fraction=fit_fraction, test_fraction=1.0 - fit_fraction, seed=seed, phantom_size=size)
    splits = load_splits(specs, policy)
    if len(splits["val"]) == 0:
        raise ValueError(f"expected films to fit on in {specs}, found none")
    return splits["val"], splits["test"]


def recalibrate_classifier(
    manifest: Manifest, session, fit: LabelledImages, fit_x: np.ndarray, check: LabelledImages, args, spec
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(manifest updates, report): Platt parameters and thresholds refitted for the labels the site carries."""
    labels = list(manifest.labels)
    fit_y = fit.select_labels(labels).labels.astype(np.float64)
    fit_raw = run_ort(session, fit_x)[0]
    refitted = fitting.platt_parameters(labels, fit_y, fit_raw)
    carried = [name for k, name in enumerate(labels) if (~np.isnan(fit_y[:, k])).any()]
    parameters = {
        name: value
        for name, value in (manifest.calibration.get("labels") or {}).items()
        if name not in carried  # labels the site does not carry keep their calibration
    }
    parameters.update({name: refitted["labels"][name] for name in carried if name in refitted["labels"]})
    calibration = {**refitted, "labels": parameters}
    new_thresholds = fitting.label_thresholds(
        labels, fit_y, calibrate(fit_raw, labels, calibration), target_sensitivity=args.target_sensitivity
    )
    thresholds = {name: new_thresholds[name] if name in carried else manifest.thresholds[name] for name in labels}
    report = {"labels_refitted": carried, "fit_images": len(fit)}
    if len(check):
        check_y = check.select_labels(labels).labels.astype(np.float64)
        check_raw = run_ort(session, preprocess_all(check, spec, not args.quiet))[0]
        report["check"] = _before_after(labels, check_y, check_raw, manifest, calibration, thresholds)
    return {"calibration": calibration, "thresholds": thresholds}, report


def _before_after(labels, y, raw, manifest: Manifest, calibration, thresholds) -> dict[str, Any]:
    """AUROC and ECE on the checking half with the model's previous and its new calibration."""
    rows = {}
    for when, params, limits in (
        ("before", manifest.calibration, manifest.thresholds),
        ("after", calibration, thresholds),
    ):
        probabilities = calibrate(raw, labels, params)
        table = metrics.label_metrics(labels, y, probabilities, limits, n_boot=0)
        for k, row in enumerate(table):
            reliability = metrics.calibration(y[:, k], probabilities[:, k])
            rows.setdefault(row.label, {})[when] = {
                "auroc": row.auroc,
                "ece": reliability.ece if reliability is not None else None,
                "sensitivity": row.sensitivity,
                "specificity": row.specificity,
            }
    return {"images": int(len(y)), "labels": rows}


def recalibrate_autoencoder(manifest: Manifest, session, fit_x: np.ndarray, args) -> tuple[dict, dict]:
    """(manifest updates, report): the error threshold at `--outlier-percentile` of the site's films; with a feature
    component, its distance threshold likewise, and the combined threshold at the gate's own percentile of them."""
    outputs = run_ort(session, fit_x)
    errors = outputs[0]
    threshold = fitting.outlier_threshold(errors, args.outlier_percentile)
    outlier = {**manifest.outlier, "threshold": threshold, "percentile": args.outlier_percentile}
    report = {"fit_images": len(fit_x), "previous_threshold": manifest.outlier_threshold, "threshold": threshold}
    if "feature" in outlier and len(outputs) > 1:
        feature, combined = dict(outlier["feature"]), dict(outlier.get("combined") or {})
        distances = mahalanobis(outputs[1], np.asarray(feature["mean"]), np.asarray(feature["precision"]))
        feature.update(threshold=fitting.outlier_threshold(distances, args.outlier_percentile))
        scores = component_scores(errors, outputs[1], {"threshold": threshold, "feature": feature})["combined"]
        percentile = float(combined.get("percentile", 98.0))
        combined.update(threshold=fitting.outlier_threshold(scores, percentile), percentile=percentile)
        outlier.update(feature=feature, combined=combined)
        report.update(feature_threshold=feature["threshold"], combined_threshold=combined["threshold"])
    return {"outlier_threshold": threshold, "outlier": outlier}, report


def register(registry: Registry, model: ResolvedModel, updates: dict[str, Any], report: dict[str, Any]) -> Manifest:
    """The recalibrated model as a new version with the same ONNX file; the int8 variant follows, if any."""
    fields = model.manifest.model_dump(exclude=set(_REGISTERED))
    fields.update(updates, recalibration=portable(report))
    manifest = registry.add_version(model.name, model.path, fields)
    int8 = registry.int8_variant(model)
    if int8 is not None:
        int8_fields = int8.manifest.model_dump(exclude=set(_REGISTERED))
        int8_fields.update(updates, recalibration=fields["recalibration"])
        int8_fields["variant_of"] = {"name": manifest.name, "version": manifest.version}
        if "outlier_threshold" in updates:  # the int8 graph's own errors set its threshold
            threshold = report["int8_threshold"]
            int8_fields.update(outlier_threshold=threshold, outlier={**updates["outlier"], "threshold": threshold})
        registry.add_version(int8.name, int8.path, int8_fields)
    return manifest


def main(args: argparse.Namespace) -> dict[str, Any]:
    registry = Registry(args.registry)
    model = resolve(registry, args.model, args.alias)
    manifest = model.manifest
    spec = PreprocessSpec.from_dict(manifest.preprocess)
    fit, check = site_halves(list(args.data), args.fit_fraction, args.split_seed, spec.size)
    session = ort_session(model.path, args.threads)
    fit_x = preprocess_all(fit, spec, not args.quiet)  # decoded once, scored by every graph below
    if manifest.kind == "classifier":
        updates, report = recalibrate_classifier(manifest, session, fit, fit_x, check, args, spec)
    else:
        updates, report = recalibrate_autoencoder(manifest, session, fit_x, args)
        int8 = registry.int8_variant(model)
        if int8 is not None:
            errors = run_ort(ort_session(int8.path, args.threads), fit_x)[0]
            report["int8_threshold"] = fitting.outlier_threshold(errors, args.outlier_percentile)
    report.update(source=model.ref, data=list(args.data), fit_fraction=args.fit_fraction, split_seed=args.split_seed)
    new = register(registry, model, updates, report)
    print(f"registered {new.ref}: {model.ref} recalibrated on {len(fit)} films of {', '.join(args.data)}")
    if args.promote:
        registry.promote(new.name, new.version, args.promote)
        print(f"promoted {new.ref} to {args.promote!r}")
    return {"manifest": new, "report": report}


if __name__ == "__main__":
    main(get_args_parser().parse_args())
