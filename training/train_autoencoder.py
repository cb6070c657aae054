"""Train the outlier autoencoder (plain or denoising) on chest radiographs.

    xray train autoencoder --data nih:../shared/data/nih1000/Data_Entry_subset.csv --epochs 30 --output-dir runs/ae

The reconstruction error of an image says how unlike the training radiographs it is. The outlier threshold is a
stated percentile of the validation errors (in-distribution films), stored in the checkpoint with the error
distribution, so the service flags CT slices, other body parts and photos while real chest films pass.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from models.autoencoder import AutoencoderConfig, ConvAutoencoder
from models.classifier import BACKBONES
from training import calibrate, checkpoints, common
from training.augment import AugmentConfig, RandomRadiographAugment
from training.datasets import ImageTensorDataset
from training.sources import SPEC_HELP, load_splits, policy_from_args


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    description = "Train a convolutional autoencoder whose reconstruction error flags non-chest images."
    parser = common.script_parser("xray train autoencoder", description, add_help)
    parser.add_argument("--data", action="append", required=True, help=SPEC_HELP + "; labels are not used")
    parser.add_argument("--val-fraction", type=float, default=0.15, help="patients held out to set the threshold")
    parser.add_argument("--test-fraction", type=float, default=0.0, help="patients held out for a final check")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the patient-level split")
    parser.add_argument(
        "--test-images-under", type=Path, default=None, help="hold out every patient with an image under this folder"
    )
    parser.add_argument("--backbone", choices=BACKBONES, default="small_cnn", help="encoder (same as classifiers)")
    parser.add_argument("--width", type=int, default=32, help="base width of small_cnn")
    parser.add_argument("--input-size", type=int, default=64, help="square input size in pixels")
    parser.add_argument("--bottleneck", type=int, default=64, help="size k of the code")
    parser.add_argument("--noise-std", type=float, default=0.0, help="denoising: Gaussian noise std on the input")
    parser.add_argument("--mask-prob", type=float, default=0.0, help="denoising: fraction of 8x8 patches zeroed")
    common.add_preprocess_arguments(parser)
    parser.add_argument("--epochs", type=int, default=30, help="training epochs")
    parser.add_argument("--batch-size", type=int, default=64, help="images per step")
    parser.add_argument("--lr", type=float, default=2e-3, help="AdamW peak learning rate (cosine schedule)")
    parser.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay")
    parser.add_argument("--no-augment", action="store_true", help="turn off shift/rotation/zoom/exposure augmentation")
    parser.add_argument(
        "--outlier-percentile", type=float, default=99.0, help="validation error percentile used as outlier threshold"
    )
    parser.add_argument(
        "--gate-percentile",
        type=float,
        default=98.0,
        help="validation percentile of the combined gate score (error and code distance) above which films are gated",
    )
    common.add_run_arguments(
        parser,
        output_dir=Path("runs/autoencoder"),
        output_help="checkpoints and metrics",
        seed_help="seed for init, shuffling, augmentation and noise",
    )
    return parser


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Train, keep the epoch with the lowest validation error, set the outlier threshold, save the checkpoint."""
    generator, device, out_dir = common.start_run(args)

    splits = load_splits(args.data, policy_from_args(args))
    if len(splits["val"]) == 0:
        raise ValueError("expected a non-empty validation split: the outlier threshold is set on it")
    spec = common.spec_from_args(args)
    config = config_from_args(args)
    model = ConvAutoencoder(config).to(device)
    augment = None if args.no_augment else RandomRadiographAugment(AugmentConfig(), spec, generator=generator)
    progress = not args.quiet
    train_set = ImageTensorDataset(splits["train"], spec, progress=progress)
    val_set = ImageTensorDataset(splits["val"], spec, progress=progress)
    train_loader = common.loader(train_set, args.batch_size, shuffle=True, generator=generator)
    val_loader = common.loader(val_set, 256, shuffle=False)

    print(f"training autoencoder ({args.backbone}, k={args.bottleneck}) on {len(train_set)} images ({device})")
    history, best_weights = train_epochs(model, augment, train_loader, val_loader, args, device)

    model.load_state_dict(best_weights)
    train_codes = common.loader(train_set, 256, shuffle=False)  # un-augmented, in order
    outlier = outlier_summary(model, train_codes, val_loader, args, device)
    payload = {
        "kind": "autoencoder",
        "args": checkpoints.jsonable_args(args),
        "config": config.to_dict(),
        "spec": spec.to_dict(),
        "model": best_weights,
        "outlier": outlier,
        "history": history,
        "data": {name: split.summary() for name, split in splits.items()},
        "code_version": checkpoints.code_version(),
    }
    checkpoints.save_checkpoint(out_dir / "model.ckpt", payload)
    (out_dir / "metrics.json").write_text(json.dumps({"outlier": outlier, "history": history}, indent=2))
    print(
        f"outlier threshold {outlier['threshold']:.4f} (p{args.outlier_percentile:g} of {outlier['val_images']} "
        f"validation errors); combined gate threshold {outlier['combined']['threshold']:.3f} "
        f"(p{args.gate_percentile:g} of the validation films' combined scores)"
    )
    return {"checkpoint": out_dir / "model.ckpt", "outlier": outlier, "model": model.cpu().eval(), "spec": spec}


def config_from_args(args: argparse.Namespace) -> AutoencoderConfig:
    """The network's configuration from the command line."""
    return AutoencoderConfig(
        backbone=args.backbone,
        input_size=args.input_size,
        width=args.width,
        bottleneck=args.bottleneck,
        noise_std=args.noise_std,
        mask_prob=args.mask_prob,
    )


def train_epochs(
    model: ConvAutoencoder,
    augment: RandomRadiographAugment | None,
    train_loader: DataLoader,
    val_loader: DataLoader,
    args: argparse.Namespace,
    device: torch.device,
) -> tuple[list[dict[str, Any]], dict[str, torch.Tensor] | None]:
    """AdamW with a cosine schedule for --epochs; (per-epoch history, weights of the lowest validation error)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    total_steps = max(1, args.epochs * len(train_loader))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step / total_steps, 1.0)))
    )
    noise_generator = torch.Generator(device=device).manual_seed(args.seed)
    history: list[dict[str, Any]] = []
    best_error, best_weights = math.inf, None
    for epoch in range(args.epochs):
        started = time.perf_counter()
        model.train()
        total, count = 0.0, 0
        for x, _ in tqdm(train_loader, desc=f"epoch {epoch + 1}/{args.epochs}", leave=False, disable=args.quiet):
            x = x.to(device)
            if augment is not None:
                x = augment(x)
            reconstruction = model(model.corrupt(x, generator=noise_generator))
            loss = torch.nn.functional.mse_loss(reconstruction, x)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += float(loss.detach()) * x.shape[0]
            count += x.shape[0]
        val_error = float(np.mean(reconstruction_errors(model, val_loader, device)))
        history.append(
            {
                "epoch": epoch + 1,
                "loss": total / count,
                "val_error": val_error,
                "seconds": time.perf_counter() - started,
            }
        )
        improved = val_error < best_error
        if improved:
            best_error, best_weights = val_error, {k: v.detach().clone() for k, v in model.state_dict().items()}
        print(
            f"epoch {epoch + 1:>3}/{args.epochs} loss {total / count:.4f} val error {val_error:.4f}"
            f"{' *' if improved else ''} {history[-1]['seconds']:.1f}s",
            flush=True,
        )
    return history, best_weights


def outlier_summary(
    model: ConvAutoencoder, train_loader: DataLoader, val_loader: DataLoader, args: argparse.Namespace, device
) -> dict[str, Any]:
    """The gate's parameters: the error threshold (`--outlier-percentile` of the validation errors) and error
    distribution, the feature-space distance of the codes, and the combined threshold (`--gate-percentile`)."""
    model.eval()
    val_errors = reconstruction_errors(model, val_loader, device)
    threshold = calibrate.outlier_threshold(val_errors, args.outlier_percentile)
    train_codes, _ = common.predict(model.encode, train_loader, device)
    val_codes, _ = common.predict(model.encode, val_loader, device)
    feature, combined = calibrate.feature_gate(
        train_codes, val_codes, val_errors, threshold, percentile=args.outlier_percentile,
        gate_percentile=args.gate_percentile,
    )  # fmt: skip
    return {
        "threshold": threshold,
        "percentile": args.outlier_percentile,
        "val_error_quantiles": {str(q): float(np.percentile(val_errors, q)) for q in (1, 5, 25, 50, 75, 95, 99)},
        "val_images": int(val_errors.size),
        "feature": feature,
        "combined": combined,
    }


@torch.no_grad()
def reconstruction_errors(model: ConvAutoencoder, loader, device: torch.device) -> np.ndarray:
    """Per-image reconstruction error (N,) of clean inputs."""
    model.eval()
    errors, _ = common.predict(model.reconstruction_error, loader, device)
    return errors


if __name__ == "__main__":
    main(get_args_parser().parse_args())
