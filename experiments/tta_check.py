"""Does test-time augmentation help the default set's members? (issue 12; an experiment, not a test)

    python experiments/tta_check.py RUN_DIR [RUN_DIR ...]

For each trained run (a model.ckpt from experiments/default_set_recipes.py), the test split is scored plain and with
the logits averaged over fixed, mild geometric views (shifts of 1/32 of the side, zoom 0.94 and 1.06): what a TTA
graph would compute. Prints the AUROCs of the issue's test sets for both.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from default_set_recipes import _test_figures  # noqa: E402

from models.preprocessing import PreprocessSpec  # noqa: E402
from training import checkpoints  # noqa: E402
from training.datasets import preprocess_all  # noqa: E402

# (shift x, shift y as fractions of the side, zoom)
VIEWS = ((0.0, 0.0, 1.0), (1 / 32, 0.0, 1.0), (-1 / 32, 0.0, 1.0), (0.0, 1 / 32, 1.0), (0.0, -1 / 32, 1.0),
         (0.0, 0.0, 0.94), (0.0, 0.0, 1.06))  # fmt: skip


def _view(x: torch.Tensor, dx: float, dy: float, zoom: float) -> torch.Tensor:
    theta = torch.tensor([[1 / zoom, 0.0, -2 * dx], [0.0, 1 / zoom, -2 * dy]], dtype=x.dtype).expand(len(x), 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


@torch.no_grad()
def _logits(model: torch.nn.Module, x: torch.Tensor, views) -> np.ndarray:
    return torch.stack([model(_view(x, *view)) for view in views]).mean(dim=0).numpy()


def main(run_dirs: list[Path]) -> None:
    torch.set_num_threads(1)
    for run in run_dirs:
        checkpoint = checkpoints.load_checkpoint(run / "model.ckpt", kind="classifier")
        model = checkpoints.model_from_checkpoint(checkpoint)
        test = checkpoints.splits_from_checkpoint(checkpoint)["test"]
        x = torch.from_numpy(preprocess_all(test, PreprocessSpec.from_dict(checkpoint["spec"])))
        thresholds = checkpoint["thresholds"]
        found = {}
        for name, views in (("plain", VIEWS[:1]), ("tta7", VIEWS)):
            prob = 1 / (1 + np.exp(-_logits(model, x, views)))
            result = {"test_split": test, "test_probabilities": prob, "test_labels": test.labels,
                      "thresholds": thresholds}  # fmt: skip
            figures = _test_figures(result)
            found[name] = {k: v for k, v in figures.items() if k in ("nih_test_mean", "pn_test_auroc")}
        print(run.name, json.dumps(found), flush=True)


if __name__ == "__main__":
    main([Path(p) for p in sys.argv[1:]])
