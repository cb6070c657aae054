"""The recipe search behind the shipped default set (issue 12; an experiment, not a test).

    python experiments/default_set_recipes.py [--only NAME,...] [--workers 2] [--table-only]

Every recipe is trained on repeated patient-level splits (split seed = init seed = 0, 1, 2; NIH1000 validation 15% of
the non-test patients, PneumoniaMNIST its official val split), so a recipe is judged by the mean and spread of its
validation AUROC over three different validation sets, not by one lucky split. Test figures are the ones the issue
names: the 200 images of `nih1000/test` (mean AUROC over Abnormal/Effusion/Infiltration/Atelectasis/Cardiomegaly)
and PneumoniaMNIST's official test split (AUROC, accuracy at the calibrated validation threshold). They are reported,
never used to choose.

Runs are resumable: each writes `RUN/result.json` under --work and is skipped when that exists. The table is
rebuilt from every finished run into --out (JSON + Markdown). Each worker trains with one thread.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.labels import NIH1000_LABELS  # noqa: E402
from training import ensemble, metrics, train_classifier  # noqa: E402
from training.recipes import (  # noqa: E402
    DEFAULT_NIH_MEMBER,
    DEFAULT_NIH_MEMBERS,
    DEFAULT_PNEUMONIA_MEMBER,
    DEFAULT_PNEUMONIA_MEMBERS,
    FAST_ADAMW,
)

SHARED = ROOT.parent / "shared" / "data"
NIH_CSV = SHARED / "nih1000" / "Data_Entry_subset.csv"
NIH_TEST = SHARED / "nih1000" / "test"
PNEUMONIA = SHARED / "pneumoniamnist" / "pneumoniamnist.npz"
SEEDS = (0, 1, 2)
WORK = ROOT / "runs" / "recipes"

NIH = ["--data", f"nih:{NIH_CSV}", "--test-images-under", str(NIH_TEST), "--val-fraction", "0.15"]
NIH5 = [*NIH, "--labels", ",".join(NIH1000_LABELS)]
PN = ["--data", f"medmnist:{PNEUMONIA}"]
MERGED = [*NIH, "--data", f"medmnist:{PNEUMONIA}", "--labels", ",".join((*NIH1000_LABELS, "Pneumonia"))]
BASE = ["--input-size", "64", *FAST_ADAMW]
SLIM16 = ["--backbone", "slim_resnet18", "--width", "16"]
NIH_SLIM16 = [*NIH5, *BASE, "--pos-weight", *SLIM16, "--epochs", "20"]
MERGED_SLIM16 = [*MERGED, *BASE, "--pos-weight", *SLIM16, "--epochs", "15"]

# name -> (what it changes, trainer flags); every recipe adds --seed/--split-seed
RECIPES: dict[str, tuple[str, list[str]]] = {
    # NIH1000 alone, 5 labels
    "nih-small32": ("small_cnn w32, pos-weight, 20 ep (baseline)", [*NIH5, *BASE, "--pos-weight", "--epochs", "20"]),
    "nih-small32-nopw": ("no pos-weight", [*NIH5, *BASE, "--epochs", "20"]),
    "nih-small64": ("small_cnn w64", [*NIH5, *BASE, "--pos-weight", "--width", "64", "--epochs", "20"]),
    "nih-small16": ("small_cnn w16", [*NIH5, *BASE, "--pos-weight", "--width", "16", "--epochs", "20"]),
    "nih-small32-40ep": ("40 epochs", [*NIH5, *BASE, "--pos-weight", "--epochs", "40"]),
    "nih-small32-noema": ("no EMA", [*NIH5, *BASE[:-2], "--pos-weight", "--epochs", "20"]),
    "nih-small32-noaug": ("no augmentation", [*NIH5, *BASE, "--pos-weight", "--no-augment", "--epochs", "20"]),
    "nih-small32-hflip": ("+ horizontal flips", [*NIH5, *BASE, "--pos-weight", "--hflip", "--epochs", "20"]),
    "nih-small32-drop": ("dropout 0.3", [*NIH5, *BASE, "--pos-weight", "--dropout", "0.3", "--epochs", "20"]),
    "nih-small32-all14": (
        "all NIH labels with >= 10 positives as auxiliary heads",
        [*NIH, *BASE, "--pos-weight", "--epochs", "20"],
    ),
    "nih-small32-ls": (
        "label smoothing 0.1",
        [*NIH5, *BASE, "--pos-weight", "--label-smoothing", "0.1", "--epochs", "20"],
    ),
    "nih-small32-aug2": (
        "augmentation ranges x2",
        [*NIH5, *BASE, "--pos-weight", "--augment-strength", "2", "--epochs", "20"],
    ),
    "nih-small32-aug05": (
        "augmentation ranges x0.5",
        [*NIH5, *BASE, "--pos-weight", "--augment-strength", "0.5", "--epochs", "20"],
    ),
    "nih-small32-from-pn": (
        "encoder initialised from the PneumoniaMNIST model (pn-small32, seed 0): chest-film transfer",
        [*NIH5, *BASE, "--pos-weight", "--epochs", "20", "--init-encoder", str(WORK / "pn-small32-s0" / "model.ckpt")],
    ),
    "nih-small32-up128": (
        "input upsampled to 128 px",
        [*NIH5, *BASE[2:], "--input-size", "128", "--pos-weight", "--epochs", "20"],
    ),
    "nih-r18": ("resnet18", [*NIH5, *BASE, "--pos-weight", "--backbone", "resnet18", "--epochs", "20"]),
    "nih-r18-up128": (
        "resnet18, input upsampled to 128 px",
        [*NIH5, *BASE[2:], "--input-size", "128", "--pos-weight", "--backbone", "resnet18", "--epochs", "20"],
    ),
    "nih-slim32": (
        "slim_resnet18 w32 (ResNet-18 topology, 1/4 of its widths)",
        [*NIH5, *BASE, "--pos-weight", "--backbone", "slim_resnet18", "--width", "32", "--epochs", "20"],
    ),
    "nih-slim16": (
        "slim_resnet18 w16",
        [*NIH5, *BASE, "--pos-weight", *SLIM16, "--epochs", "20"],
    ),
    "nih-slim16s16": (
        "slim_resnet18_s16 w16 (no stem max pool: stride 16, 4x4 maps)",
        [*NIH5, *BASE, "--pos-weight", "--backbone", "slim_resnet18_s16", "--width", "16", "--epochs", "20"],
    ),
    "pn-slim16s16-20ep": (
        "slim_resnet18_s16 w16, 20 epochs",
        [*PN, *BASE, "--backbone", "slim_resnet18_s16", "--width", "16", "--epochs", "20"],
    ),
    "nih-slim24": (
        "slim_resnet18 w24",
        [*NIH5, *BASE, "--pos-weight", "--backbone", "slim_resnet18", "--width", "24", "--epochs", "20"],
    ),
    # slim_resnet18 w16 variants (the fastest of the ResNet-like members)
    **{
        f"nih-slim16-{key}": (
            what,
            [f for f in NIH_SLIM16 if not (key == "nopw" and f == "--pos-weight")] + flags,
        )
        for key, (what, flags) in {
            "ls": ("label smoothing 0.1", ["--label-smoothing", "0.1"]),
            "aug2": ("augmentation ranges x2", ["--augment-strength", "2"]),
            "aug05": ("augmentation ranges x0.5", ["--augment-strength", "0.5"]),
            "hflip": ("+ horizontal flips", ["--hflip"]),
            "40ep": ("40 epochs", ["--epochs", "40"]),
            "noema": ("no EMA", ["--ema-decay", "0"]),
            "drop": ("dropout 0.3", ["--dropout", "0.3"]),
            "nopw": ("no pos-weight", []),
            "up128": ("input upsampled to 128 px", ["--input-size", "128"]),
            "from-pn": (
                "encoder from the PneumoniaMNIST model (pn-slim16, seed 0)",
                ["--init-encoder", str(WORK / "pn-slim16-s0" / "model.ckpt")],
            ),
        }.items()
    },
    "merged-slim16": ("NIH + PneumoniaMNIST in one slim_resnet18 w16", MERGED_SLIM16),
    "merged-slim16-pn4": (
        "merged-slim16 with PneumoniaMNIST's loss weighted x4 (--label-weights Pneumonia=4)",
        [*MERGED_SLIM16, "--label-weights", "Pneumonia=4"],
    ),
    **{
        f"pn-slim16-{key}": (
            what,
            [*PN, *BASE, *SLIM16, "--epochs", "10", *flags],
        )
        for key, (what, flags) in {
            "ls": ("label smoothing 0.1", ["--label-smoothing", "0.1"]),
            "aug2": ("augmentation ranges x2", ["--augment-strength", "2"]),
            "hflip": ("+ horizontal flips", ["--hflip"]),
            "20ep": ("20 epochs", ["--epochs", "20"]),
            "noema": ("no EMA", ["--ema-decay", "0"]),
            "28": ("at the native 28 px", ["--input-size", "28"]),
            "up128": ("input upsampled to 128 px", ["--input-size", "128"]),
            "minmax": ("min-max intensity normalisation (not percentile)", ["--normalisation", "minmax"]),
            "nonorm": ("no per-image intensity normalisation", ["--normalisation", "none"]),
            "sgd": (
                "SGD lr 0.05 (Nesterov), no EMA",
                ["--optimizer", "sgd", "--lr", "0.05", "--ema-decay", "0", "--weight-decay", "1e-4"],
            ),
            "balanced": ("pos-weight balancing the rarer normals (weight < 1 on pneumonia)", ["--pos-weight"]),
            "40ep": ("40 epochs", ["--epochs", "40"]),
            "20ep-balanced": ("20 epochs, pos-weight balancing", ["--epochs", "20", "--pos-weight"]),
            "w24-20ep": ("width 24, 20 epochs", ["--width", "24", "--epochs", "20"]),
        }.items()
    },
    "merged-small32": (
        "NIH + PneumoniaMNIST in one model (the shipped recipe before)",
        [*MERGED, *BASE, "--pos-weight", "--epochs", "15"],
    ),
    # the shipped members (training.recipes), with the split flags every member of one ensemble shares
    "default-nih": ("the shipped NIH member", [*NIH5, *DEFAULT_NIH_MEMBER]),
    "w16-nih": (
        "NIH member: slim_resnet18 w16, 20 ep, pos-weight",
        [*NIH5, *BASE, "--pos-weight", *SLIM16, "--epochs", "20"],
    ),
    "w16-pn": (
        "PneumoniaMNIST member: slim_resnet18 w16, 20 ep",
        [*PN, *NIH[-4:], *BASE, *SLIM16, "--epochs", "20"],
    ),
    "default-pn": ("the shipped PneumoniaMNIST member", [*PN, *NIH[-4:], *DEFAULT_PNEUMONIA_MEMBER]),
    # PneumoniaMNIST alone
    "pn-small32": ("small_cnn w32 at 64 px (28 px upsampled)", [*PN, *BASE, "--epochs", "10"]),
    "pn-small32-28": ("small_cnn w32 at the native 28 px", [*PN, *BASE[2:], "--input-size", "28", "--epochs", "10"]),
    "pn-r18": ("resnet18 at 64 px", [*PN, *BASE, "--backbone", "resnet18", "--epochs", "8"]),
    "pn-slim16": (
        "slim_resnet18 w16 at 64 px",
        [*PN, *BASE, *SLIM16, "--epochs", "10"],
    ),
    "pn-slim32": (
        "slim_resnet18 w32 at 64 px",
        [*PN, *BASE, "--backbone", "slim_resnet18", "--width", "32", "--epochs", "10"],
    ),
    "pn-small64": ("small_cnn w64 at 64 px", [*PN, *BASE, "--width", "64", "--epochs", "10"]),
    "pn-small32-pw": ("small_cnn w32, pos-weight", [*PN, *BASE, "--pos-weight", "--epochs", "10"]),
}

# name -> (what, [(member recipe, members with init seeds split, split + 100, ...)]); every member on one split seed
ENSEMBLES: dict[str, tuple[str, list[tuple[str, int]]]] = {
    "ens-nih-small32x3": ("3 x nih-small32 (init seeds), logits averaged", [("nih-small32", 3)]),
    "ens-pn-slim16-20ep-x3": ("3 x pn-slim16-20ep (init seeds)", [("pn-slim16-20ep", 3)]),
    "w16-set31": ("3 x w16-nih + 1 x w16-pn in one graph", [("w16-nih", 3), ("w16-pn", 1)]),
    "w12-set33": (
        "3 x default-nih + 3 x default-pn (slim_resnet18 w12) in one graph",
        [("default-nih", 3), ("default-pn", 3)],
    ),
    "default-set": (
        "the shipped classifier: default-nih members + default-pn members in one graph",
        [("default-nih", DEFAULT_NIH_MEMBERS), ("default-pn", DEFAULT_PNEUMONIA_MEMBERS)],
    ),
}


def _auroc_table(truth: np.ndarray, prob: np.ndarray, labels: list[str], wanted) -> dict[str, float | None]:
    return {name: metrics.auroc(truth[:, labels.index(name)], prob[:, labels.index(name)])
            for name in wanted if name in labels}  # fmt: skip


def _test_figures(result: dict) -> dict:
    split = result["test_split"]
    labels = list(split.label_names)
    prob, truth = result["test_probabilities"], result["test_labels"]
    figures: dict = {}
    nih_rows = [i for i, item in enumerate(split.items) if isinstance(item, Path) and NIH_TEST in item.parents]
    if nih_rows:
        aurocs = _auroc_table(truth[nih_rows], prob[nih_rows], labels, NIH1000_LABELS)
        figures["nih_test_images"] = len(nih_rows)
        figures["nih_test_auroc"] = aurocs
        figures["nih_test_mean"] = float(np.mean([v for v in aurocs.values() if v is not None]))
    pn_rows = [i for i, item in enumerate(split.items) if isinstance(item, np.ndarray)]
    if pn_rows and "Pneumonia" in labels:
        k = labels.index("Pneumonia")
        y, p = truth[pn_rows, k], prob[pn_rows, k]
        figures["pn_test_images"] = len(pn_rows)
        figures["pn_test_auroc"] = metrics.auroc(y, p)
        figures["pn_test_accuracy"] = float(np.mean((p >= result["thresholds"]["Pneumonia"]) == (y == 1)))
    return figures


def _run_dir(work: Path, name: str, seed: int, init: int | None = None) -> Path:
    return work / (f"{name}-s{seed}" if init is None or init == seed else f"{name}-s{seed}-i{init}")


def _record(name: str, seed: int, seconds: float, result: dict, out: Path, init: int | None = None) -> dict:
    summary = result["metrics"]
    record = {
        "recipe": name,
        "seed": seed,
        "init": seed if init is None else init,
        "seconds": round(seconds, 1),
        "best_epoch": summary.get("best_epoch"),
        "val_mean_auroc": summary["val_mean_auroc"],
        "val_auroc": summary.get("val_auroc"),
        **_test_figures(result),
    }
    (out / "result.json").write_text(json.dumps(record, indent=2))
    return record


def run_one(name: str, seed: int, work: Path, init: int | None = None) -> dict:
    """Recipe `name` on split seed `seed`, initialised with seed `init` (default: the split seed)."""
    out = _run_dir(work, name, seed, init)
    if (out / "result.json").exists():
        return json.loads((out / "result.json").read_text())
    argv = [*RECIPES[name][1], "--seed", str(seed if init is None else init), "--split-seed", str(seed),
            "--threads", "1", "--quiet", "--bootstrap", "0", "--output-dir", str(out)]  # fmt: skip
    start = time.perf_counter()
    result = train_classifier.main(train_classifier.get_args_parser().parse_args(argv))
    return _record(name, seed, time.perf_counter() - start, result, out, init)


def ensemble_members(name: str, seed: int) -> list[tuple[str, int, int]]:
    """(recipe, split seed, init seed) of each member of ensemble `name` on split seed `seed`."""
    return [(recipe, seed, seed + 100 * j) for recipe, count in ENSEMBLES[name][1] for j in range(count)]


def run_ensemble(name: str, seed: int, work: Path) -> dict:
    """The members (trained already) combined by `xray train ensemble`: calibrated and scored like one model."""
    out = work / f"{name}-s{seed}"
    if (out / "result.json").exists():
        return json.loads((out / "result.json").read_text())
    members = [_run_dir(work, *member) for member in ensemble_members(name, seed)]
    start = time.perf_counter()
    argv = [*(str(m / "model.ckpt") for m in members), "--output-dir", str(out), "--bootstrap", "0", "--threads", "1",
            "--quiet"]  # fmt: skip
    result = ensemble.main(ensemble.get_args_parser().parse_args(argv))
    trained = sum(json.loads((m / "result.json").read_text())["seconds"] for m in members)
    return _record(name, seed, trained + time.perf_counter() - start, result, out)


def _stats(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def write_table(work: Path, out: Path) -> None:
    records = [json.loads(p.read_text()) for p in sorted(work.glob("*/result.json"))]
    records = [r for r in records if r.get("init", r["seed"]) == r["seed"]]  # extra ensemble members: not a recipe row
    by_recipe: dict[str, list[dict]] = {}
    for record in records:
        by_recipe.setdefault(record["recipe"], []).append(record)
    lines = [
        "# Default set recipe search (issue 12)",
        "",
        "Mean ± sd over split seeds (repeated patient-level splits; seed = split seed = init seed).",
        "Validation chooses; test is reported: NIH = the 200 images of nih1000/test, mean AUROC over the 5 labels;",
        "PN = PneumoniaMNIST's official test split (AUROC; accuracy at the calibrated validation threshold).",
        "",
        "| recipe | what | seeds | val mean AUROC | NIH test mean | PN test AUROC | PN test acc | s/run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, runs in by_recipe.items():
        what = {**RECIPES, **ENSEMBLES}.get(name, ("(removed recipe)", []))[0]
        seeds = ",".join(str(r["seed"]) for r in sorted(runs, key=lambda r: r["seed"]))
        lines.append(
            f"| {name} | {what} | {seeds} | {_stats([r['val_mean_auroc'] for r in runs])} "
            f"| {_stats([r.get('nih_test_mean') for r in runs])} | {_stats([r.get('pn_test_auroc') for r in runs])} "
            f"| {_stats([r.get('pn_test_accuracy') for r in runs])} "
            f"| {statistics.mean(r['seconds'] for r in runs):.0f} |"
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / "default_set_recipes.md").write_text("\n".join(lines) + "\n")
    (out / "default_set_recipes.json").write_text(json.dumps(records, indent=2))
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help="comma-separated recipe names (default: all)")
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--work", type=Path, default=WORK)
    parser.add_argument("--out", type=Path, default=ROOT / "experiments" / "results")
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()
    if not args.table_only:
        names = [n for n in args.only.split(",") if n] or [*RECIPES, *ENSEMBLES]
        unknown = sorted(set(names) - set(RECIPES) - set(ENSEMBLES))
        if unknown:
            raise SystemExit(f"unknown recipes {unknown}; known: {sorted(RECIPES)} and ensembles {sorted(ENSEMBLES)}")
        seeds = [int(seed) for seed in args.seeds.split(",")]
        single = [(name, seed, None) for name in names if name in RECIPES for seed in seeds]
        single += [m for name in names if name in ENSEMBLES for seed in seeds for m in ensemble_members(name, seed)]
        with ProcessPoolExecutor(max_workers=args.workers) as pool:
            _report(pool.submit(run_one, name, seed, args.work, init) for name, seed, init in dict.fromkeys(single))
            combined = [(name, seed) for name in names if name in ENSEMBLES for seed in seeds]
            _report(pool.submit(run_ensemble, name, seed, args.work) for name, seed in combined)
    write_table(args.work, args.out)


def _report(futures) -> None:
    for future in list(futures):
        record = future.result()
        print(f"{record['recipe']} s{record['seed']}: val {record['val_mean_auroc']:.3f} "
              f"nih {record.get('nih_test_mean')} pn {record.get('pn_test_auroc')} ({record['seconds']} s)",
              flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
