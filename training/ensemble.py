"""`xray train ensemble`: trained classifiers combined into one calibrated classifier checkpoint.

    xray train ensemble runs/nih-s0/model.ckpt runs/nih-s1/model.ckpt runs/pneumonia/model.ckpt --output-dir OUT

Members with the same labels are averaged (a seed ensemble); members with different labels sit side by side (one
model per data source behind one manifest). Every member must take the same preprocessed input and come from the
same split settings, so the union of their data specs rebuilds each member's own validation and test images. The
ensemble is then calibrated (Platt, thresholds) on that validation split and scored on the test split like any
trained classifier; `xray export` turns OUT/model.ckpt into one ONNX graph.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from models.classifier import ClassifierConfig
from models.ensemble import ClassifierEnsemble, EnsembleConfig, is_ensemble_config
from models.preprocessing import PreprocessSpec
from training import checkpoints, common
from training.train_classifier import calibrate_and_test

# the saved trainer arguments that decide the split and the preprocessing: every member must agree on them
SPLIT_SETTINGS = (
    "val_fraction", "test_fraction", "split_seed", "test_images_under", "views", "uncertain", "label_fraction",
    "input_size",
)  # fmt: skip


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = common.script_parser("xray train ensemble", __doc__.split("\n\n")[0], add_help)
    parser.add_argument("members", nargs="+", type=Path, help="calibrated member checkpoints (a run's model.ckpt)")
    parser.add_argument("--target-sensitivity", type=float, default=None, help="thresholds for this sensitivity")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for AUROC CIs (0 = none)")
    common.add_run_arguments(
        parser, output_dir=Path("runs/ensemble"), output_help="model.ckpt and metrics.json", seed_help="bootstrap seed"
    )
    return parser


def _member_configs(members: list[dict[str, Any]], paths: list[Path]) -> list[ClassifierConfig]:
    configs = []
    for member, path in zip(members, paths, strict=True):
        if is_ensemble_config(member["config"]):
            raise ValueError(f"expected a single classifier at {path}, got an ensemble; name its members instead")
        configs.append(ClassifierConfig.from_dict(member["config"]))
    return configs


def _shared_settings(members: list[dict[str, Any]], paths: list[Path]) -> dict[str, Any]:
    """The members' common split settings and spec; a clear error naming the first disagreement."""
    first_args = members[0].get("args") or {}
    for member, path in zip(members[1:], paths[1:], strict=True):
        args = member.get("args") or {}
        for key in SPLIT_SETTINGS:
            if args.get(key) != first_args.get(key):
                raise ValueError(
                    f"expected every member trained with the same {key} (it decides the split), got "
                    f"{first_args.get(key)!r} in {paths[0]} and {args.get(key)!r} in {path}"
                )
        if member["spec"] != members[0]["spec"]:
            raise ValueError(f"expected the same preprocessing in every member, {paths[0]} and {path} differ")
    data = list(dict.fromkeys(spec for member in members for spec in member["args"]["data"]))
    return {**{key: first_args.get(key) for key in SPLIT_SETTINGS}, "data": data}


def _calibration_origins(members: list[dict[str, Any]]) -> dict[str, set[str]]:
    """{label: the sources of the validation images of the members that predict it}: PneumoniaMNIST's Pneumonia is
    calibrated on PneumoniaMNIST films, not on the NIH films whose table also has a Pneumonia column."""
    origins: dict[str, set[str]] = {}
    by_data: dict[str, set[str]] = {}
    for member in members:
        key = json.dumps(member["args"]["data"])
        if key not in by_data:
            by_data[key] = set(checkpoints.splits_from_checkpoint(member)["val"].origins)
        for label in member["labels"]:
            origins.setdefault(label, set()).update(by_data[key])
    return origins


def main(args: argparse.Namespace) -> dict[str, Any]:
    _, device, out_dir = common.start_run(args)
    paths = [Path(p) for p in args.members]
    members = [checkpoints.load_checkpoint(path, kind="classifier") for path in paths]
    config = EnsembleConfig(tuple(_member_configs(members, paths)))
    model = ClassifierEnsemble(config)
    for module, member in zip(model.members, members, strict=True):
        module.load_state_dict(member["model"])
    labels = config.labels
    saved_args = {**_shared_settings(members, paths), "labels": ",".join(labels)}
    payload: dict[str, Any] = {
        "kind": "classifier",
        "args": saved_args,
        "config": config.to_dict(),
        "spec": members[0]["spec"],
        "labels": list(labels),
        "model": model.state_dict(),
        "code_version": checkpoints.code_version(),
        "members": [
            {"checkpoint": str(path), "labels": list(member["labels"]), "metrics": member.get("metrics")}
            for path, member in zip(paths, members, strict=True)
        ],
    }
    splits = checkpoints.splits_from_checkpoint(payload)
    payload["data"] = {name: split.summary() for name, split in splits.items()}
    spec = PreprocessSpec.from_dict(payload["spec"])
    origins = _calibration_origins(members)
    scored = calibrate_and_test(model.to(device).eval(), splits, spec, labels, device, args, origins)
    result = scored.save(out_dir, payload, scored.summary)
    print(f"ensemble of {len(members)} members, labels {', '.join(labels)} -> {out_dir / 'model.ckpt'}")
    return result


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main(get_args_parser().parse_args())
