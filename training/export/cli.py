"""`xray export`: the command line (flags -> ExportOptions), --from-torchxrayvision conversion, --report."""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path
from typing import Any

import torch

from models.registry import Registry
from models.settings import default_registry_dir
from training import common
from training.export.run import ExportOptions, export_checkpoint
from training.sources import SPEC_HELP


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "checkpoint", type=Path, nargs="?", help="a model.ckpt written by `xray train classifier|autoencoder`"
    )
    parser.add_argument(
        "--from-torchxrayvision",
        metavar="XRV_NAME",
        default=None,
        help="convert a torchxrayvision model instead (e.g. densenet121-res224-all; needs the xrv extra)",
    )
    parser.add_argument(
        "--xrv-no-weights", action="store_true", help="build the xrv architecture without downloading its weights"
    )
    parser.add_argument("--name", required=True, help="registry model name (the int8 variant is NAME-int8)")
    parser.add_argument("--registry", type=Path, default=default_registry_dir(), help="registry root folder")
    parser.add_argument(
        "--promote",
        nargs="?",
        const="production",
        default=None,
        help="point this alias at the new version (bare --promote: production; default: do not promote)",
    )
    parser.add_argument("--int8", action="store_true", help="also build a static QDQ int8 variant (NAME-int8)")
    parser.add_argument(
        "--reconstruction", action="store_true", help="autoencoders: also output the reconstruction [N, 1, S, S]"
    )


def _add_data_arguments(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("real images for parity, calibration and the int8 check")
    data.add_argument(
        "--calibration-data",
        action="append",
        default=None,
        help="use these data specs instead of the checkpoint's own (default: the checkpoint's); " + SPEC_HELP,
    )
    data.add_argument("--parity-images", type=int, default=64, help="validation images in the parity check")
    data.add_argument(
        "--parity-tolerance", type=float, default=1e-4, help="max |torch - ORT| of probabilities (AE: relative error)"
    )
    data.add_argument(
        "--evaluation-images", type=int, default=2000, help="at most this many validation images for fp32 vs int8"
    )
    data.add_argument("--calibration-images", type=int, default=128, help="training images that calibrate int8")
    data.add_argument(
        "--calibration-method", choices=("minmax", "entropy", "percentile"), default="minmax", help="int8 calibration"
    )
    data.add_argument(
        "--int8-full-range",
        action="store_true",
        help="8-bit instead of 7-bit int8 weights: only for CPUs with VNNI or GPUs (plain AVX2 kernels saturate)",
    )
    data.add_argument(
        "--max-auroc-drop", type=float, default=0.005, help="refuse the int8 classifier if mean AUROC drops more"
    )
    data.add_argument(
        "--min-error-correlation",
        type=float,
        default=0.98,
        help="refuse the int8 autoencoder if the rank correlation of its errors with fp32 is lower",
    )
    data.add_argument("--seed", type=int, default=0, help="seed of the image samples")


def _add_serving_and_run_arguments(parser: argparse.ArgumentParser) -> None:
    serving = parser.add_argument_group("serving and provenance")
    serving.add_argument("--max-batch-size", type=int, default=32, help="Triton max_batch_size in config.pbtxt")
    serving.add_argument(
        "--provenance", default=None, help="extra provenance/licence text for the manifest (default: from data kinds)"
    )
    run = parser.add_argument_group("run")
    run.add_argument("--threads", type=int, default=1, help="torch and ONNX Runtime threads (timing uses the same)")
    run.add_argument("--benchmark-batch", type=int, default=32, help="batch size of the fp32 vs int8 timing")
    run.add_argument("--benchmark-repeats", type=int, default=20, help="timed runs per precision")
    run.add_argument("--report", type=Path, default=None, help="also write the export report as JSON here")
    run.add_argument("--quiet", action="store_true", help="print only errors")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """The `xray export` argument parser."""
    description = "Export a checkpoint to ONNX (checked against torch on real images) into the model registry."
    parser = common.script_parser("xray export", description, add_help)
    _add_model_arguments(parser)
    _add_data_arguments(parser)
    _add_serving_and_run_arguments(parser)
    return parser


def options_from_args(args: argparse.Namespace) -> ExportOptions:
    """The export settings of parsed `xray export` flags."""
    return ExportOptions(
        int8=args.int8,
        reconstruction=args.reconstruction,
        calibration_data=args.calibration_data,
        parity_images=args.parity_images,
        parity_tolerance=args.parity_tolerance,
        evaluation_images=args.evaluation_images,
        calibration_images=args.calibration_images,
        calibration_method=args.calibration_method,
        reduce_range=not args.int8_full_range,
        max_auroc_drop=args.max_auroc_drop,
        min_error_correlation=args.min_error_correlation,
        max_batch_size=args.max_batch_size,
        provenance=args.provenance,
        promote=args.promote,
        threads=max(1, args.threads),
        benchmark_batch=args.benchmark_batch,
        benchmark_repeats=args.benchmark_repeats,
        seed=args.seed,
    )


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Run `xray export` (converting a torchxrayvision model first if asked); returns the export report."""
    if args.threads:
        torch.set_num_threads(args.threads)
    log = (lambda *_a, **_k: None) if args.quiet else print
    if (args.checkpoint is None) == (args.from_torchxrayvision is None):
        raise ValueError("expected either a CHECKPOINT or --from-torchxrayvision NAME, not both or neither")
    with tempfile.TemporaryDirectory(prefix="xray-xrv-") as tmp:
        checkpoint, provenance = args.checkpoint, args.provenance
        if args.from_torchxrayvision is not None:
            if not args.calibration_data:
                raise ValueError("--from-torchxrayvision needs --calibration-data: real images for the parity check")
            from training import xrv_import

            download = not args.xrv_no_weights
            checkpoint = xrv_import.convert(
                args.from_torchxrayvision, Path(tmp) / "xrv.ckpt", download_weights=download
            )
            provenance = " ".join(
                filter(None, [xrv_import.provenance(args.from_torchxrayvision, download), provenance])
            )
        options = dataclasses.replace(options_from_args(args), provenance=provenance)
        report = export_checkpoint(checkpoint, args.name, Registry(args.registry), options, log=log)
    if args.report is not None:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return report
