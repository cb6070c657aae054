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

from training import metrics, train_classifier  # noqa: E402
from training.recipes import FAST_ADAMW  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
NIH_CSV = SHARED / "nih1000" / "Data_Entry_subset.csv"
NIH_TEST = SHARED / "nih1000" / "test"
PNEUMONIA = SHARED / "pneumoniamnist" / "pneumoniamnist.npz"
NIH_LABELS = ("Abnormal", "Effusion", "Infiltration", "Atelectasis", "Cardiomegaly")
SEEDS = (0, 1, 2)
WORK = ROOT / "runs" / "recipes"

NIH = ["--data", f"nih:{NIH_CSV}", "--test-images-under", str(NIH_TEST), "--val-fraction", "0.15"]
NIH5 = [*NIH, "--labels", ",".join(NIH_LABELS)]
PN = ["--data", f"medmnist:{PNEUMONIA}"]
MERGED = [*NIH, "--data", f"medmnist:{PNEUMONIA}", "--labels", ",".join((*NIH_LABELS, "Pneumonia"))]
BASE = ["--input-size", "64", *FAST_ADAMW]

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
    "merged-small32": (
        "NIH + PneumoniaMNIST in one model (the shipped recipe before)",
        [*MERGED, *BASE, "--pos-weight", "--epochs", "15"],
    ),
    # PneumoniaMNIST alone
    "pn-small32": ("small_cnn w32 at 64 px (28 px upsampled)", [*PN, *BASE, "--epochs", "10"]),
    "pn-small32-28": ("small_cnn w32 at the native 28 px", [*PN, *BASE[2:], "--input-size", "28", "--epochs", "10"]),
    "pn-r18": ("resnet18 at 64 px", [*PN, *BASE, "--backbone", "resnet18", "--epochs", "8"]),
    "pn-small64": ("small_cnn w64 at 64 px", [*PN, *BASE, "--width", "64", "--epochs", "10"]),
    "pn-small32-pw": ("small_cnn w32, pos-weight", [*PN, *BASE, "--pos-weight", "--epochs", "10"]),
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
        aurocs = _auroc_table(truth[nih_rows], prob[nih_rows], labels, NIH_LABELS)
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


def run_one(name: str, seed: int, work: Path) -> dict:
    out = work / f"{name}-s{seed}"
    done = out / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    argv = [*RECIPES[name][1], "--seed", str(seed), "--split-seed", str(seed), "--threads", "1", "--quiet",
            "--bootstrap", "0", "--output-dir", str(out)]  # fmt: skip
    start = time.perf_counter()
    result = train_classifier.main(train_classifier.get_args_parser().parse_args(argv))
    summary = result["metrics"]
    history = json.loads((out / "metrics.json").read_text())["history"]
    best = next(h for h in history if h["epoch"] == summary["best_epoch"])
    record = {
        "recipe": name,
        "seed": seed,
        "seconds": round(time.perf_counter() - start, 1),
        "best_epoch": summary["best_epoch"],
        "val_mean_auroc": summary["val_mean_auroc"],
        "val_auroc": best["val_auroc"],
        **_test_figures(result),
    }
    np.savez_compressed(out / "test_predictions.npz", probabilities=result["test_probabilities"],
                        labels=result["test_labels"])  # fmt: skip
    done.write_text(json.dumps(record, indent=2))
    return record


def _stats(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def write_table(work: Path, out: Path) -> None:
    records = [json.loads(p.read_text()) for p in sorted(work.glob("*/result.json"))]
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
        what = RECIPES.get(name, ("(removed recipe)", []))[0]
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
        names = [n for n in args.only.split(",") if n] or list(RECIPES)
        unknown = sorted(set(names) - set(RECIPES))
        if unknown:
            raise SystemExit(f"unknown recipes {unknown}; known: {sorted(RECIPES)}")
        jobs = [(name, int(seed)) for name in names for seed in args.seeds.split(",")]
        with ProcessPoolExecutor(max_workers=args.workers) as pool:
            futures = [pool.submit(run_one, name, seed, args.work) for name, seed in jobs]
            for future in futures:
                record = future.result()
                print(f"{record['recipe']} s{record['seed']}: val {record['val_mean_auroc']:.3f} "
                      f"nih {record.get('nih_test_mean')} pn {record.get('pn_test_auroc')} ({record['seconds']} s)",
                      flush=True)  # fmt: skip
    write_table(args.work, args.out)


if __name__ == "__main__":
    main()
