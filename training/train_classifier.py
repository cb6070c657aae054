"""Train the classifier: an "Abnormal" head and k pathology heads on one shared CNN encoder.

    xray train classifier --data nih:../shared/data/nih1000/Data_Entry_subset.csv --epochs 20 --output-dir runs/nih

Loss: logistic loss summed over labels with missing labels masked out (the lecture's multi-label recipe).
Every epoch writes `last.ckpt`; the best validation mean AUROC is kept in `best.ckpt`; at the end the best weights
are calibrated on the validation split (per-label thresholds) and scored on the test split into `model.ckpt` and
`metrics.json`. Checkpoints carry args, model config, PreprocessSpec, labels, thresholds and data summaries.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from models.calibration import calibrate as apply_calibration
from models.classifier import BACKBONES, ClassifierConfig, XRayClassifier, load_encoder_weights
from training import calibrate, checkpoints, common, metrics
from training.augment import AugmentConfig, RandomRadiographAugment
from training.datasets import ImageTensorDataset, LabelledImages, positive_weights
from training.sources import SPEC_HELP, choose_labels, limit_labelled_training, load_splits, policy_from_args


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    description = "Train a CNN classifier (abnormal + pathology heads) on labelled radiographs."
    parser = common.script_parser("xray train classifier", description, add_help)
    _add_data_arguments(parser.add_argument_group("data"))
    model = parser.add_argument_group("model")
    model.add_argument("--backbone", choices=BACKBONES, default="small_cnn", help="encoder architecture")
    model.add_argument("--width", type=int, default=32, help="base width of small_cnn and slim_resnet18")
    model.add_argument("--input-size", type=int, default=128, help="square input size in pixels")
    model.add_argument("--dropout", type=float, default=0.0, help="dropout before the heads")
    common.add_preprocess_arguments(model)
    model.add_argument(
        "--init-encoder",
        "--init-from",
        dest="init_from",
        type=Path,
        default=None,
        help="initialise the encoder from an autoencoder .ckpt (unsupervised pre-training), a classifier .ckpt or a "
        "torchvision state dict; every encoder tensor must match (same --backbone/--width)",
    )
    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--epochs", type=int, default=20, help="training epochs")
    optim.add_argument("--batch-size", type=int, default=64, help="images per step")
    optim.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd", help="SGD with momentum, or AdamW")
    optim.add_argument("--lr", type=float, default=0.05, help="peak learning rate")
    optim.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (Nesterov)")
    optim.add_argument("--weight-decay", type=float, default=1e-4, help="weight decay")
    optim.add_argument(
        "--schedule", choices=("cosine", "onecycle", "constant"), default="cosine", help="learning-rate schedule"
    )
    optim.add_argument("--warmup-epochs", type=float, default=1.0, help="linear warm-up (cosine schedule)")
    optim.add_argument(
        "--pos-weight", action="store_true", help="weight positives by neg/pos per label (either class rarer)"
    )
    optim.add_argument("--ema-decay", type=float, default=0.0, help="weight averaging (EMA) decay, 0 = off")
    optim.add_argument("--label-smoothing", type=float, default=0.0, help="targets 0/1 -> s/2 and 1 - s/2")
    optim.add_argument(
        "--label-weights",
        type=_label_weights,
        default={},
        help="loss weight per label, e.g. Pneumonia=0.5 (the weighting between sources); unnamed labels 1",
    )
    optim.add_argument("--no-augment", action="store_true", help="turn off shift/rotation/zoom/exposure augmentation")
    optim.add_argument(
        "--augment-strength", type=float, default=1.0, help="scale of the augmentation ranges (1 = the defaults)"
    )
    optim.add_argument("--hflip", action="store_true", help="also flip horizontally (off: anatomy is not symmetric)")
    optim.add_argument(
        "--early-stop", type=int, default=0, help="stop after N epochs without a better val AUROC (0 = off)"
    )
    calib = parser.add_argument_group("calibration and evaluation")
    calib.add_argument(
        "--target-sensitivity", type=float, default=None, help="threshold for this sensitivity instead of Youden's J"
    )
    calib.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for AUROC CIs (0 = none)")
    run = parser.add_argument_group("run")
    common.add_run_arguments(
        run,
        output_dir=Path("runs/classifier"),
        output_help="checkpoints and metrics",
        seed_help="seed for init, shuffling and augmentation",
    )
    run.add_argument("--resume", type=Path, default=None, help="continue from a last.ckpt")
    run.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    return parser


def _add_data_arguments(data: argparse._ArgumentGroup) -> None:
    """Which images and labels, and how they are split (saved in the checkpoint so the split can be rebuilt)."""
    data.add_argument("--data", action="append", required=True, help=SPEC_HELP)
    data.add_argument(
        "--labels", type=_comma_list, default=None, help="comma-separated labels (default: all with enough positives)"
    )
    data.add_argument("--min-positives", type=int, default=10, help="labels with fewer training positives are left out")
    data.add_argument("--val-fraction", type=float, default=0.1, help="patients held out for validation/calibration")
    data.add_argument("--test-fraction", type=float, default=0.2, help="patients held out for the final test")
    data.add_argument("--split-seed", type=int, default=0, help="seed of the patient-level split")
    data.add_argument(
        "--uncertain",
        choices=("ignore", "positive", "negative"),
        default="ignore",
        help="CheXpert uncertain (-1) labels: missing, U-Ones or U-Zeros",
    )
    data.add_argument(
        "--test-images-under",
        type=Path,
        default=None,
        help="hold out every patient with an image under this folder as the test split (e.g. a published test set)",
    )
    data.add_argument(
        "--label-fraction",
        type=float,
        default=1.0,
        help="train on this random fraction of the labelled training images (fixed by --split-seed; label-scarce "
        "experiments)",
    )
    data.add_argument("--views", type=_comma_list, default=(), help="keep only these view positions, e.g. PA,AP")


def _label_weights(text: str) -> dict[str, float]:
    weights = {}
    for item in _comma_list(text):
        name, _, value = item.partition("=")
        try:
            weight = float(value)
        except ValueError:
            weight = -1.0
        if not name.strip() or weight < 0:
            raise argparse.ArgumentTypeError(f"expected LABEL=WEIGHT pairs with weights >= 0, got {item!r}")
        weights[name.strip()] = weight
    return weights


def _comma_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


@dataclass
class Trainer:
    """What one training run holds: the network, its optimiser state, the data loaders and the run state."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    ema: Any
    generator: torch.Generator
    device: torch.device
    train_loader: Any
    val_loader: Any
    augment: RandomRadiographAugment | None
    pos_weight: torch.Tensor | None
    label_weights: torch.Tensor | None = None
    state: dict[str, Any] = field(
        default_factory=lambda: {"epoch": 0, "best_score": -math.inf, "history": [], "stale": 0}
    )

    @property
    def scored(self) -> torch.nn.Module:
        """The weights that are validated and saved: the EMA average when there is one."""
        return self.ema.module if self.ema is not None else self.model


def main(args: argparse.Namespace) -> dict[str, Any]:
    generator, device, out_dir = common.start_run(args)
    splits, labels = _training_data(args)
    spec = common.spec_from_args(args)
    config = ClassifierConfig(
        labels=labels, backbone=args.backbone, input_size=args.input_size, width=args.width, dropout=args.dropout
    )
    trainer = _trainer(args, XRayClassifier(config), splits, spec, generator, device)
    if args.resume:
        trainer.state = _resume(args.resume, trainer)
        print(f"resumed from {args.resume} at epoch {trainer.state['epoch']}")
        previous_best = Path(args.resume).parent / "best.ckpt"
        if previous_best.exists() and not (out_dir / "best.ckpt").exists():
            shutil.copyfile(previous_best, out_dir / "best.ckpt")  # resuming into a new folder keeps the best so far

    base_payload = {
        "kind": "classifier",
        "args": checkpoints.jsonable_args(args),
        "config": config.to_dict(),
        "spec": spec.to_dict(),
        "labels": list(labels),
        "data": {name: split.summary() for name, split in splits.items()},
        "code_version": checkpoints.code_version(),
    }
    print(f"training {args.backbone} on {len(splits['train'])} images ({device}), labels: {', '.join(labels)}")
    for epoch in range(trainer.state["epoch"], args.epochs):
        improved = _run_epoch(trainer, epoch, labels, args)
        payload = {**base_payload, "model": trainer.scored.state_dict(), "epoch": epoch + 1}
        payload["history"] = trainer.state["history"]
        checkpoints.save_checkpoint(out_dir / "last.ckpt", {**payload, "train_state": _train_state(trainer)})
        if improved:
            checkpoints.save_checkpoint(out_dir / "best.ckpt", payload)
        if args.early_stop and trainer.state["stale"] >= args.early_stop:
            print(f"early stop: no better validation AUROC for {args.early_stop} epochs")
            break
    return _finalise(out_dir, base_payload, trainer.state, splits, spec, labels, device, args)


def _training_data(args: argparse.Namespace) -> tuple[dict[str, LabelledImages], tuple[str, ...]]:
    """The train/val/test splits with the chosen label columns (and --label-fraction applied), and the labels."""
    splits = load_splits(args.data, policy_from_args(args))
    labels = choose_labels(splits["train"], args.labels, args.min_positives)
    splits = {name: split.select_labels(labels) for name, split in splits.items()}
    splits = limit_labelled_training(splits, args.label_fraction, args.split_seed)
    if len(splits["val"]) == 0:
        raise ValueError("expected a non-empty validation split (needed for early stopping and calibration)")
    return splits, labels


def _trainer(args, model: XRayClassifier, splits, spec, generator: torch.Generator, device) -> Trainer:
    """The network (optionally initialised from --init-encoder) on its device, with loaders and optimiser."""
    if args.init_from is not None:
        loaded = load_encoder_weights(model, checkpoints.state_dict_from(args.init_from), strict=True)
        print(f"initialised {len(loaded)} encoder tensors from {args.init_from}")
    model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    augment = None
    if not args.no_augment:
        config = AugmentConfig.scaled(args.augment_strength, hflip=args.hflip)
        augment = RandomRadiographAugment(config, spec, generator=generator)
    progress = not args.quiet
    train_set = ImageTensorDataset(splits["train"], spec, progress=progress)
    train_loader = common.loader(train_set, args.batch_size, shuffle=True, generator=generator, workers=args.workers)
    val_loader = common.loader(ImageTensorDataset(splits["val"], spec, progress=progress), 256, shuffle=False)
    pos_weight = None
    if args.pos_weight:
        pos_weight = torch.as_tensor(positive_weights(splits["train"]), dtype=torch.float32, device=device)
    label_weights = None
    if args.label_weights:
        unknown = sorted(set(args.label_weights) - set(model.labels))
        if unknown:
            raise ValueError(f"--label-weights names {unknown}, which are not labels of this model: {model.labels}")
        weights = [args.label_weights.get(name, 1.0) for name in model.labels]
        label_weights = torch.tensor(weights, dtype=torch.float32, device=device)
    optimizer = _optimizer(model, args)
    scheduler = _scheduler(optimizer, args, steps_per_epoch=len(train_loader))
    ema = common.make_ema(model, args.ema_decay)
    return Trainer(
        model, optimizer, scheduler, ema, generator, device, train_loader, val_loader, augment, pos_weight,
        label_weights,
    )  # fmt: skip


def _run_epoch(trainer: Trainer, epoch: int, labels: tuple[str, ...], args) -> bool:
    """Train one epoch, score the validation split, record history; True when the mean AUROC improved."""
    started = time.perf_counter()
    loss = _train_one_epoch(trainer, epoch, args)
    probabilities, targets = _predict_probabilities(trainer.scored, trainer.val_loader, trainer.device)
    per_label = metrics.per_label_auroc(targets, probabilities)
    score = metrics.mean_auroc(per_label) or 0.0
    state = trainer.state
    improved = score > state["best_score"]
    state["stale"] = 0 if improved else state["stale"] + 1
    state["best_score"] = max(score, state["best_score"])
    state["epoch"] = epoch + 1
    state["history"].append(
        {
            "epoch": epoch + 1,
            "loss": loss,
            "val_mean_auroc": score,
            "val_auroc": dict(zip(labels, per_label, strict=True)),
            "lr": trainer.optimizer.param_groups[0]["lr"],
            "seconds": time.perf_counter() - started,
        }
    )
    _log_epoch(state["history"][-1], args.epochs, improved)
    return improved


def _finalise(out_dir, base_payload, state, splits, spec, labels, device, args) -> dict[str, Any]:
    """Best weights -> Platt calibration and thresholds on validation -> metrics on test (per source, before and after
    calibration) -> model.ckpt + metrics.json."""
    best = checkpoints.load_checkpoint(out_dir / "best.ckpt", kind="classifier")
    model = checkpoints.model_from_checkpoint(best).to(device)
    scored = calibrate_and_test(model, splits, spec, labels, device, args)
    summary: dict[str, Any] = {"best_epoch": best["epoch"], **scored.summary}
    final = {**base_payload, "model": best["model"], "epoch": best["epoch"], "history": state["history"]}
    return scored.save(out_dir, final, summary, history=state["history"])


@dataclass
class Scored:
    """A trained model's calibration (fitted on the validation split) and its held-out figures."""

    calibration: dict[str, Any]
    thresholds: dict[str, float]
    probabilities: np.ndarray  # (N, K) calibrated, on `split`
    labels: np.ndarray  # (N, K) NaN = missing
    split: LabelledImages  # the test split, or the validation split when there is no test split
    summary: dict[str, Any]  # split name, mean AUROC, per-label and per-source tables, uncalibrated ECE

    def save(self, out_dir: Path, payload: dict[str, Any], summary: dict[str, Any], **extra: Any) -> dict[str, Any]:
        """model.ckpt (`payload` + calibration, thresholds, `summary`) and metrics.json (+ `extra`); the trainer's
        result: checkpoint path, metrics, thresholds and the held-out split with its calibrated probabilities."""
        calibrated_part = {"thresholds": self.thresholds, "calibration": self.calibration}
        checkpoints.save_checkpoint(out_dir / "model.ckpt", {**payload, **calibrated_part, "metrics": summary})
        (out_dir / "metrics.json").write_text(json.dumps({**summary, **calibrated_part, **extra}, indent=2))
        return {
            "checkpoint": out_dir / "model.ckpt",
            "metrics": summary,
            "thresholds": self.thresholds,
            "test_probabilities": self.probabilities,
            "test_labels": self.labels,
            "test_split": self.split,
        }


def calibrate_and_test(
    model: torch.nn.Module,
    splits,
    spec,
    labels: tuple[str, ...],
    device,
    args,
    calibration_origins: dict[str, set[str]] | None = None,
) -> Scored:
    """Platt calibration and thresholds from the validation split (its AUROCs reported too), then the metrics on the
    test split (the validation split when there is none). `args` gives target_sensitivity, bootstrap, seed, quiet.

    `calibration_origins` {label: origins}: fit a label only on the validation images of these sources (an
    ensemble's label is calibrated on the sources its members learned it from, not on another source that happens
    to carry the same label); the test metrics still cover every source."""
    val_loader = common.loader(ImageTensorDataset(splits["val"], spec), 256, shuffle=False)
    val_raw, val_y = _predict_probabilities(model, val_loader, device)
    for k, label in enumerate(labels):
        if calibration_origins is not None and label in calibration_origins:
            val_y[~np.isin(splits["val"].origins, list(calibration_origins[label])), k] = np.nan
    calibration = calibrate.platt_parameters(labels, val_y, val_raw)
    val_prob = calibrated(val_raw, labels, calibration)
    thresholds = calibrate.label_thresholds(labels, val_y, val_prob, target_sensitivity=args.target_sensitivity)
    split_name = "test" if len(splits["test"]) else "val"
    if split_name == "test":
        test_set = ImageTensorDataset(splits["test"], spec, progress=not args.quiet)
        raw, y = _predict_probabilities(model, common.loader(test_set, 256, shuffle=False), device)
    else:
        raw, y = val_raw, val_y
    prob = calibrated(raw, labels, calibration)
    table, per_source = metrics.per_source_metrics(
        labels, y, prob, splits[split_name].origins, thresholds, n_boot=args.bootstrap, seed=args.seed
    )
    val_auroc = metrics.per_label_auroc(val_y, val_raw)
    summary = {
        "val_mean_auroc": metrics.mean_auroc(val_auroc),
        "val_auroc": dict(zip(labels, val_auroc, strict=True)),
        "split": split_name,
        "mean_auroc": metrics.mean_auroc(m.auroc for m in table),
        "labels": [m.to_dict() for m in table],
        "per_source": per_source,
        "ece_uncalibrated": metrics.ece_per_label(labels, y, raw),
    }
    print(f"{split_name} split:\n{metrics.format_metrics(table)}")
    for source, scores in per_source.items():
        own = " ".join(f"{m['label']} {m['auroc']:.3f}" for m in scores["labels"] if m["auroc"] is not None)
        print(f"  {source} ({scores['images']} images): {own}")
    mean = summary["mean_auroc"]
    print(f"mean AUROC {'n/a' if mean is None else f'{mean:.3f}'} (pooled over the labels one source carries)")
    return Scored(calibration, thresholds, prob, y, splits[split_name], summary)


def calibrated(raw: np.ndarray, labels, calibration: dict[str, Any]) -> np.ndarray:
    """Platt-calibrated probabilities as float32 (the scale the thresholds and metrics use)."""
    return apply_calibration(raw, labels, calibration).astype(np.float32)


def _train_one_epoch(trainer: Trainer, epoch: int, args) -> float:
    model, optimizer, scheduler, ema, device = (
        trainer.model, trainer.optimizer, trainer.scheduler, trainer.ema, trainer.device
    )  # fmt: skip
    model.train()
    use_amp = device.type == "cuda"
    total, count = 0.0, 0
    bar = tqdm(trainer.train_loader, desc=f"epoch {epoch + 1}/{args.epochs}", leave=False, disable=args.quiet)
    for x, y in bar:
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        if trainer.augment is not None:
            x = trainer.augment(x)  # one batched resampling: far cheaper than per item
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
            logits = model(x)
        loss = common.masked_bce_with_logits(
            logits.float(), y, trainer.pos_weight, smoothing=args.label_smoothing, label_weights=trainer.label_weights
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if ema is not None:
            ema.update_parameters(model)
        total += float(loss.detach()) * x.shape[0]
        count += x.shape[0]
        bar.set_postfix(loss=f"{total / count:.4f}")
    return total / max(count, 1)


def _predict_probabilities(model, loader, device) -> tuple[np.ndarray, np.ndarray]:
    model.eval()
    logits, targets = common.predict(model, loader, device)
    return 1.0 / (1.0 + np.exp(-logits)), targets


def _optimizer(model: torch.nn.Module, args) -> torch.optim.Optimizer:
    # no weight decay on biases and norm parameters
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if args.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=args.lr, momentum=args.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=args.lr)


def _scheduler(optimizer, args, steps_per_epoch: int):
    total = max(1, args.epochs * steps_per_epoch)
    if args.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=total)
    if args.schedule == "constant":
        return None
    warmup = int(args.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _train_state(trainer: Trainer) -> dict[str, Any]:
    return {
        "model": trainer.model.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict() if trainer.scheduler is not None else None,
        "ema": trainer.ema.state_dict() if trainer.ema is not None else None,
        "state": trainer.state,
        "rng": torch.get_rng_state(),
        "generator": trainer.generator.get_state(),  # shuffling + augmentation: an exact resume needs it
    }


def _resume(path: Path, trainer: Trainer) -> dict[str, Any]:
    checkpoint = checkpoints.load_checkpoint(path, kind="classifier")
    train_state = checkpoint.get("train_state")
    if train_state is None:
        raise ValueError(f"expected a last.ckpt with training state at {path}; best/model checkpoints cannot resume")
    trainer.model.load_state_dict(train_state["model"])
    trainer.optimizer.load_state_dict(train_state["optimizer"])
    if trainer.scheduler is not None and train_state["scheduler"] is not None:
        trainer.scheduler.load_state_dict(train_state["scheduler"])
    if trainer.ema is not None and train_state["ema"] is not None:
        trainer.ema.load_state_dict(train_state["ema"])
    torch.set_rng_state(train_state["rng"])
    trainer.generator.set_state(train_state["generator"])
    return train_state["state"]


def _log_epoch(entry: dict[str, Any], epochs: int, improved: bool) -> None:
    per_label = " ".join(f"{k} {v:.3f}" for k, v in entry["val_auroc"].items() if v is not None)
    star = " *" if improved else ""
    print(
        f"epoch {entry['epoch']:>3}/{epochs} loss {entry['loss']:.4f}"
        f" val mean AUROC {entry['val_mean_auroc']:.3f}{star}"
        f" | {per_label} | lr {entry['lr']:.2g} {entry['seconds']:.1f}s",
        flush=True,
    )


if __name__ == "__main__":
    main(get_args_parser().parse_args())
