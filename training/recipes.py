"""Training recipes named once: the trainer flags that the default models, the experiments and the real-data tests
share, so a change of recipe is one edit."""

from __future__ import annotations

# AdamW at 3e-3 with weight decay and an EMA of the weights: converges in 10-25 epochs at 64 px on 2 CPU cores and
# is steadier than SGD on 100-150 validation images (the EMA smooths the epoch-to-epoch swings that pick the epoch).
FAST_ADAMW: tuple[str, ...] = ("--optimizer", "adamw", "--lr", "3e-3", "--weight-decay", "0.01", "--ema-decay", "0.99")
