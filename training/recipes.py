"""Training recipes named once: the trainer flags that the default models, the experiments and the real-data tests
share, so a change of recipe is one edit."""

from __future__ import annotations

# AdamW at 3e-3 with weight decay and an EMA of the weights: converges in 10-25 epochs at 64 px on 2 CPU cores and
# is steadier than SGD on 100-150 validation images (the EMA smooths the epoch-to-epoch swings that pick the epoch).
FAST_ADAMW: tuple[str, ...] = ("--optimizer", "adamw", "--lr", "3e-3", "--weight-decay", "0.01", "--ema-decay", "0.99")

# The shipped default classifier (`make default-models`): an ensemble of NIH1000 members (the five NIH labels) and
# PneumoniaMNIST members (Pneumonia), one model per source behind one manifest. Chosen by
# experiments/default_set_recipes.py; its table (validation on repeated patient splits, test reported) is in
# experiments/results/default_set_recipes.md. Data and split flags are added by training.default_models.
DEFAULT_NIH_MEMBER: tuple[str, ...] = (
    "--backbone", "slim_resnet18", "--width", "12", "--input-size", "64", *FAST_ADAMW, "--pos-weight", "--epochs", "20"
)  # fmt: skip
DEFAULT_NIH_MEMBERS = 2
DEFAULT_PNEUMONIA_MEMBER: tuple[str, ...] = (
    "--backbone", "slim_resnet18", "--width", "12", "--input-size", "64", *FAST_ADAMW, "--epochs", "20"
)  # fmt: skip
DEFAULT_PNEUMONIA_MEMBERS = 2
# The shipped outlier autoencoder: small_cnn width 32 (2.1M parameters, 10.7 MB with its int8 variant). Narrower ones
# gated worse (width 16 let a smooth vertical gradient through; width 24 gated 6% of the held-out NIH films), so the
# autoencoder keeps its width and the classifier's members share the rest of the 20 MB registry budget.
DEFAULT_AUTOENCODER: tuple[str, ...] = ("--width", "32", "--input-size", "64", "--epochs", "15")
