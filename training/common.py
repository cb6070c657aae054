"""What every training loop shares: device, seeding, masked loss, batched prediction, weight averaging, loaders.

Checkpoints (write, read, rebuild a model or its split) live in `training.checkpoints`.
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader

from models.preprocessing import PreprocessSpec


def script_parser(prog: str, description: str, add_help: bool = True) -> argparse.ArgumentParser:
    """The argparse parser every training script starts from: help text that states each default."""
    return argparse.ArgumentParser(
        prog=prog,
        description=description,
        add_help=add_help,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )


def add_run_arguments(group, *, output_dir: Path | None, output_help: str, seed_help: str) -> None:
    """The run flags every training script shares: output folder, seed, device, CPU threads, quiet."""
    group.add_argument("--output-dir", type=Path, default=output_dir, help=output_help)
    group.add_argument("--seed", type=int, default=0, help=seed_help)
    group.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:1")
    group.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    group.add_argument("--quiet", action="store_true", help="no progress bars")


def start_run(args: argparse.Namespace) -> tuple[torch.Generator, torch.device, Path]:
    """Threads, seeds, device and output folder of a training run: (generator, device, output dir)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    generator = seed_everything(args.seed)
    device = select_device(args.device)
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return generator, device, out_dir


def add_preprocess_arguments(group) -> None:
    """The PreprocessSpec flags every trainer shares (the size stays per trainer: its default differs)."""
    group.add_argument("--resize", choices=("letterbox", "crop", "stretch"), default="letterbox", help="resize policy")
    group.add_argument(
        "--normalisation",
        choices=("percentile", "minmax", "histeq", "none"),
        default="percentile",
        help="per-image intensity normalisation",
    )


def spec_from_args(args) -> PreprocessSpec:
    return PreprocessSpec(size=args.input_size, resize=args.resize, normalisation=args.normalisation)


def select_device(name: str = "auto") -> torch.device:
    """ "auto" picks CUDA when a GPU is really usable, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"expected a usable CUDA device for --device {name}, but torch sees none")
    return device


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def masked_bce_with_logits(
    logits: torch.Tensor,
    targets: torch.Tensor,
    pos_weight: torch.Tensor | None = None,
    *,
    smoothing: float = 0.0,
    label_weights: torch.Tensor | None = None,
):
    """Sum over labels of the logistic loss, missing labels (NaN) masked out; averaged over images.  # (B, K)

    `smoothing` pulls the targets towards 1/2 (0 -> s/2, 1 -> 1 - s/2); `label_weights` (K,) scales each label's
    loss (with one source per label, the weighting between sources)."""
    known = ~torch.isnan(targets)
    safe_targets = torch.where(known, targets, torch.zeros_like(targets))
    if smoothing:
        safe_targets = safe_targets * (1.0 - smoothing) + 0.5 * smoothing
    losses = nn.functional.binary_cross_entropy_with_logits(
        logits, safe_targets, pos_weight=pos_weight, reduction="none"
    )
    if label_weights is not None:
        losses = losses * label_weights
    return (losses * known).sum() / logits.shape[0]


def make_ema(model: nn.Module, decay: float) -> AveragedModel | None:
    """Exponential moving average of the weights (and BN buffers): steadier validation on small data sets."""
    if decay <= 0:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


@torch.no_grad()
def predict(
    model: Callable[[torch.Tensor], torch.Tensor], loader: DataLoader, device: torch.device
) -> tuple[np.ndarray, np.ndarray]:
    """Run `model` over a loader of (x, y): returns (outputs (N, ...) float32, targets (N, K))."""
    outputs, targets = [], []
    for x, y in loader:
        out = model(x.to(device, non_blocking=True))
        outputs.append(out.float().cpu().numpy())
        targets.append(y.numpy())
    return np.concatenate(outputs), np.concatenate(targets)


def loader(dataset, batch_size: int, *, shuffle: bool, generator: torch.Generator | None = None, workers: int = 0):
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        num_workers=workers,
        drop_last=False,
        persistent_workers=workers > 0,
    )
