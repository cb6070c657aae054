"""What the registry manifest says about an exported model: provenance, inputs/outputs, data, metrics, variants."""

from __future__ import annotations

import re
from typing import Any

from models.classifier import ENCODER_STRIDE
from models.preprocessing import PreprocessSpec
from models.registry import BATCH_DIM, INTENDED_USE
from training import checkpoints
from training.export.onnx_check import INPUT_NAME, OPSET
from training.sources import parse_spec

# what the manifest says about a training source, by data-spec kind
PROVENANCE = {
    "nih": "NIH ChestX-ray14 (NIH Clinical Center): released without restriction, public domain / CC0.",
    "medmnist": (
        "MedMNIST v2 (Yang et al., Scientific Data 2023), e.g. PneumoniaMNIST from Kermany et al. (Cell 2018): "
        "CC BY 4.0 - attribution required."
    ),
    "chexpert": (
        "CheXpert (Stanford ML Group / AIMI): Stanford University CheXpert Dataset Research Use Agreement, "
        "non-commercial research only."
    ),
    "phantoms": "Synthetic phantoms from models.phantoms (no patient data): for tests and demos only.",
    "csv": "User-supplied images (csv table): licence not recorded - state it with --provenance.",
    "folder": "User-supplied images (image folder): licence not recorded - state it with --provenance.",
}


def provenance_text(specs: list[str], extra: str | None = None) -> str:
    """The licence/provenance lines of the data kinds in `specs` (once each), then `extra`."""
    kinds = []
    for spec in specs:
        try:
            kinds.append(parse_spec(spec)[0])
        except ValueError:
            continue
    lines = [PROVENANCE[k] for k in dict.fromkeys(kinds) if k in PROVENANCE]
    if extra:
        lines.append(extra)
    return " ".join(lines)


def _data_fields(train_args: dict[str, Any], checkpoint: dict[str, Any], spec: PreprocessSpec) -> dict[str, Any]:
    return {
        "sources": list(train_args.get("data") or []),
        "split_policy": {
            key: train_args.get(key)
            for key in ("val_fraction", "test_fraction", "split_seed", "views", "uncertain")
            if key in train_args
        },
        "splits": checkpoint.get("data") or {},
        "input_size": spec.size,
    }


def _classifier_fields(checkpoint: dict[str, Any], fields: dict[str, Any], shapes: dict[str, list[int | str]]) -> None:
    labels = list(checkpoint["labels"])
    thresholds = checkpoint.get("thresholds")
    if not thresholds:
        raise ValueError(
            "expected per-label thresholds in the checkpoint: export the calibrated model.ckpt written at the "
            "end of training, not best.ckpt/last.ckpt"
        )
    config = checkpoint["config"]
    # an ensemble's maps are resized to its finest member map
    stride = min(ENCODER_STRIDE[member.get("backbone", "small_cnn")] for member in config.get("members", [config]))
    fields.update(
        labels=labels,
        thresholds={name: float(thresholds[name]) for name in labels},
        calibration=checkpoint.get("calibration") or {},
        metrics=checkpoint.get("metrics") or {},
        cam={
            "output": "cam",
            "units": "logit",
            "stride": stride,
            "shape": shapes["cam"][1:],
            "note": "the spatial mean of cam[:, k] is label k's logit; upsample bilinearly for a heatmap",
        },
    )
    fields["outputs"][0]["description"] = (
        "per-label sigmoid probabilities, in the order of `labels`, before the manifest's `calibration`"
    )
    fields["outputs"][1]["description"] = "class activation maps in logit units, one per label"


def _autoencoder_fields(checkpoint: dict[str, Any], fields: dict[str, Any]) -> None:
    outlier = checkpoint.get("outlier") or {}
    if "threshold" not in outlier:
        raise ValueError("expected an outlier threshold in the autoencoder checkpoint (outlier.threshold)")
    fields.update(
        outlier_threshold=float(outlier["threshold"]),
        outlier=outlier,
        metrics={
            "outlier": {key: value for key, value in outlier.items() if key != "feature"},
            "final_val_error": (checkpoint.get("history") or [{}])[-1].get("val_error"),
        },
    )
    fields["outputs"][0]["description"] = "mean squared reconstruction error per image (outlier score)"
    fields["outputs"][1]["description"] = "bottleneck code per image (the gate's feature-space distance uses it)"


def manifest_fields(
    checkpoint: dict[str, Any],
    checkpoint_sha: str,
    *,
    kind: str,
    spec: PreprocessSpec,
    names: list[str],
    shapes: dict[str, list[int | str]],
    provenance: str,
    max_batch_size: int,
    export_report: dict[str, Any],
) -> dict[str, Any]:
    """The fp32 model's manifest fields (the registry adds name, version, file hash and size)."""
    fields: dict[str, Any] = {
        "kind": kind,
        "precision": "fp32",
        "preprocess": spec.to_dict(),
        "inputs": [{"name": INPUT_NAME, "shape": [BATCH_DIM, 1, spec.size, spec.size], "dtype": "float32"}],
        "outputs": [{"name": n, "shape": shapes[n], "dtype": "float32"} for n in names],
        "architecture": dict(checkpoint.get("config") or {}),
        "data": _data_fields(checkpoint.get("args") or {}, checkpoint, spec),
        "provenance": provenance,
        "intended_use": INTENDED_USE,
        "opset": OPSET,
        "max_batch_size": max_batch_size,
        "source_checkpoint_sha256": checkpoint_sha,
        "code_version": str(checkpoint.get("code_version") or "unknown"),
        "export_code_version": checkpoints.code_version(),
        "export": export_report,
    }
    if kind == "classifier":
        _classifier_fields(checkpoint, fields, shapes)
    else:
        _autoencoder_fields(checkpoint, fields)
    return portable(fields)


def int8_manifest_fields(
    fields: dict[str, Any],
    report: dict[str, Any],
    *,
    kind: str,
    variant_of: dict[str, Any],
    outlier_threshold: float | None = None,
) -> dict[str, Any]:
    """The int8 variant's manifest fields: the fp32 model's `fields`, marked int8 and pointing at `variant_of`
    ({"name", "version"}); a classifier's metrics say what was measured on int8 next to the fp32 reference."""
    int8_fields = {
        **fields,
        "precision": "int8",
        "variant_of": variant_of,
        "export": {**report, "int8": report["int8"]},
    }
    if kind == "classifier":  # the training metrics are the fp32 model's; say what was measured on int8
        int8_fields["metrics"] = {
            "fp32_reference": fields["metrics"],
            "int8_vs_fp32": {
                key: report["int8"].get(key)
                for key in ("evaluation_images", "mean_auroc_fp32", "mean_auroc_int8", "auroc_int8")
            },
        }
    if outlier_threshold is not None:
        int8_fields["outlier_threshold"] = outlier_threshold
    return portable(int8_fields)


# an absolute POSIX path inside a string ("nih:/data/nih1000/Data_Entry.csv", "/home/me/runs/model.ckpt")
_ABSOLUTE_PATH = re.compile(r"(?<![\w.~/-])/(?:[^/\s:'\"]+/)*[^/\s:'\"]+")


def portable(value: Any) -> Any:
    """`value` with every absolute path shortened to its last two parts ("nih1000/Data_Entry_subset.csv"): a
    manifest names data sets and files, never the folders of the machine that trained or exported the model."""
    if isinstance(value, str):
        return _ABSOLUTE_PATH.sub(lambda match: "/".join(match.group(0).split("/")[-2:]), value)
    if isinstance(value, dict):
        return {portable(key): portable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [portable(item) for item in value]
    return value
