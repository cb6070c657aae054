"""The measurements behind issue 4 (not a test): unsupervised pre-training, add-label, classic baseline.

    python experiments/training_part_two.py [--shared ../shared/data] [--out experiments/results] [--quick]

1. Pre-training with 10% of the labels (NIH1000): an autoencoder on all training images (labels unused, the same
   patient split, so test patients stay unseen), then classifiers on a fixed 10% of the labelled training images,
   encoder initialised from the autoencoder vs at random, 3 seeds each: test AUROC mean +- sd.
2. add-label (NIH1000): a base model without Effusion; Effusion added back from 50 labelled examples on the frozen
   encoder (3 draws of the examples) vs the same recipe trained with Effusion from the start.
3. The pre-training autoencoder as an outlier gate, against the images given with --outliers (part
   autoencoder_report, run with --only autoencoder_report --outliers DIR).
4. Classic vs CNN: `xray eval` (filter bank + pooling + logistic regression trained on the same split) for the
   NIH1000 model and a PneumoniaMNIST model.
Results: JSON and a Markdown summary in --out. Reports with images stay in --work (they show dataset images).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from models.labels import NIH1000_LABELS
from training import add_label, evaluate, train_autoencoder, train_classifier
from training.recipes import FAST_ADAMW

ROOT = Path(__file__).resolve().parents[1]
SPLIT = ["--val-fraction", "0.10", "--test-fraction", "0.25", "--split-seed", "0"]
RECIPE = ["--input-size", "64", *FAST_ADAMW, "--pos-weight"]


def classifier(work: Path, name: str, *argv: str) -> dict:
    args = train_classifier.get_args_parser().parse_args(
        [*argv, "--output-dir", str(work / name), "--quiet", "--bootstrap", "1000"]
    )
    start = time.perf_counter()
    result = train_classifier.main(args)
    metrics = result["metrics"]
    per_label = {row["label"]: row["auroc"] for row in metrics["labels"]}
    print(f"{name}: mean {metrics['mean_auroc']:.3f} {per_label} ({time.perf_counter() - start:.0f} s)", flush=True)
    return {
        "checkpoint": str(result["checkpoint"]),
        "mean_auroc": metrics["mean_auroc"],
        "auroc": per_label,
        "best_epoch": metrics["best_epoch"],
        "seconds": time.perf_counter() - start,
    }


def summary(values: list[float]) -> dict:
    return {
        "mean": statistics.fmean(values),
        "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
        "values": values,
    }


def pretraining(nih: str, work: Path, epochs: int, seeds: list[int]) -> dict:
    ae_args = train_autoencoder.get_args_parser().parse_args(
        [
            "--data",
            nih,
            *SPLIT,
            "--input-size",
            "64",
            "--width",
            "32",
            "--bottleneck",
            "64",
            "--epochs",
            str(epochs),
            "--output-dir",
            str(work / "ae"),
            "--quiet",
        ]
    )
    ae = train_autoencoder.main(ae_args)["checkpoint"]
    rows: dict[str, list[dict]] = {"random": [], "autoencoder": []}
    for seed in seeds:
        common = [
            "--data",
            nih,
            "--labels",
            ",".join(NIH1000_LABELS),
            *SPLIT,
            *RECIPE,
            "--label-fraction",
            "0.1",
            "--epochs",
            "40",
            "--seed",
            str(seed),
        ]
        rows["random"].append(classifier(work, f"pre_random_s{seed}", *common))
        rows["autoencoder"].append(classifier(work, f"pre_ae_s{seed}", *common, "--init-encoder", str(ae)))
    return {
        "autoencoder": str(ae),
        "label_fraction": 0.1,
        "seeds": seeds,
        "random_init": summary([r["mean_auroc"] for r in rows["random"]]),
        "autoencoder_init": summary([r["mean_auroc"] for r in rows["autoencoder"]]),
        "per_label": {
            init: {label: summary([r["auroc"][label] for r in runs]) for label in NIH1000_LABELS}
            for init, runs in rows.items()
        },
        "runs": rows,
    }


def adding_a_label(nih: str, work: Path, label: str, draws: int) -> dict:
    common = ["--data", nih, *SPLIT, *RECIPE, "--epochs", "25"]
    full = classifier(work, "with_label", *common, "--labels", ",".join(NIH1000_LABELS))
    base_labels = [name for name in NIH1000_LABELS if name != label]
    base = classifier(work, "without_label", *common, "--labels", ",".join(base_labels))
    added: dict[str, list[dict]] = {"val": [], "cv": []}
    for selection, rows in added.items():
        for seed in range(draws):
            args = add_label.get_args_parser().parse_args(
                [
                    "--base",
                    base["checkpoint"],
                    "--label",
                    label,
                    "--examples",
                    "50",
                    "--seed",
                    str(seed),
                    "--select-c",
                    selection,
                    "--output-dir",
                    str(work / f"added_{selection}_s{seed}"),
                    "--quiet",
                ]
            )
            rows.append(add_label.main(args)["added"])
    auroc = {selection: [row["metrics"]["auroc"] for row in rows] for selection, rows in added.items()}
    return {
        "label": label,
        "from_the_start": full["auroc"][label],
        "added_from_50_examples": summary(auroc["val"]),  # the default: C chosen on the validation split
        "ratio_mean": statistics.fmean(auroc["val"]) / full["auroc"][label],
        "added_C_by_cv_on_the_examples": summary(auroc["cv"]),
        "ratio_mean_cv": statistics.fmean(auroc["cv"]) / full["auroc"][label],
        "base_labels": base_labels,
        "base_mean_auroc": base["mean_auroc"],
        "full_model": full,
        "added": added,
    }


def classic_vs_cnn(checkpoint: str, work: Path, name: str) -> dict:
    args = evaluate.get_args_parser().parse_args(
        ["--checkpoint", checkpoint, "--output-dir", str(work / f"report_{name}"), "--quiet"]
    )
    body = evaluate.main(args)["report"]
    return {
        "comparison": body["comparison"],
        "per_label": {
            row["label"]: {
                "cnn": row["auroc"],
                "filter_bank": row.get("baseline_auroc"),
                "auprc": row.get("auprc"),
                "ece": row.get("ece"),
            }
            for row in body["labels"]
        },
        "baseline_C": body["baseline"]["C"] if body.get("baseline") else None,
        "report": str(work / f"report_{name}" / "index.html"),
    }


def autoencoder_report(checkpoint: str, outliers: list[Path], work: Path) -> dict:
    args = evaluate.get_args_parser().parse_args(
        ["--checkpoint", checkpoint, "--output-dir", str(work / "report_autoencoder"), "--quiet"]
        + [item for path in outliers for item in ("--outliers", str(path))]
    )
    body = evaluate.main(args)["report"]
    keys = (
        "split",
        "images_evaluated",
        "outlier_images",
        "outlier_images_skipped",
        "threshold",
        "chest_flagged_fraction",
        "outlier_auroc",
        "outlier_auroc_ci",
        "outliers_flagged_fraction",
        "codes",
    )
    return {key: body.get(key) for key in keys}


def markdown(results: dict) -> str:
    lines = ["# Training part two: measured results", ""]
    pre = results.get("pretraining")
    if pre:
        r, a = pre["random_init"], pre["autoencoder_init"]
        lines += [
            "## Unsupervised pre-training, NIH1000, 10% of the training labels",
            "",
            f"| init | mean test AUROC (mean ± sd over seeds {pre['seeds']}) | runs |",
            "|---|---|---|",
            f"| random | {r['mean']:.3f} ± {r['sd']:.3f} | {', '.join(f'{v:.3f}' for v in r['values'])} |",
            f"| autoencoder | {a['mean']:.3f} ± {a['sd']:.3f} | {', '.join(f'{v:.3f}' for v in a['values'])} |",
            "",
        ]
    add = results.get("add_label")
    if add:
        d = add["added_from_50_examples"]
        lines += [
            f"## add-label: {add['label']} on the frozen encoder, NIH1000",
            "",
            "| model | test AUROC |",
            "|---|---|",
            f"| trained with {add['label']} from the start | {add['from_the_start']:.3f} |",
            f"| added from 50 examples, C chosen on validation (3 draws) | {d['mean']:.3f} ± {d['sd']:.3f} "
            f"(ratio {add['ratio_mean']:.2f}; goal >= 0.90) |",
        ]
        cv = add.get("added_C_by_cv_on_the_examples")
        if cv:
            lines.append(
                f"| added from 50 examples, C by 5-fold CV on them (3 draws) | {cv['mean']:.3f} ± {cv['sd']:.3f} "
                f"(ratio {add['ratio_mean_cv']:.2f}) |"
            )
        lines.append("")
    ae = results.get("autoencoder_report")
    if ae:
        ci = ae["outlier_auroc_ci"]
        lines += [
            "## The pre-training autoencoder as an outlier gate (`xray eval --outliers`)",
            "",
            f"{ae['images_evaluated']} NIH1000 test films vs {ae['outlier_images']} non-chest images: outlier "
            f"AUROC {ae['outlier_auroc']:.3f} (95% CI {ci[0]:.3f}-{ci[1]:.3f}); at the p99 validation threshold "
            f"{ae['chest_flagged_fraction']:.1%} of test films and {ae['outliers_flagged_fraction']:.1%} of the "
            f"non-chest images are flagged. Not readable: {', '.join(ae['outlier_images_skipped']) or 'none'}.",
            "",
        ]
    for name in ("nih1000", "pneumoniamnist"):
        row = results.get(f"classic_{name}")
        if row:
            lines += [f"## Classic filter bank vs CNN: {name}", "", "| model | mean test AUROC |", "|---|---|"]
            lines += [f"| {c['model']} | {c['mean_auroc']:.3f} |" for c in row["comparison"]]
            lines += ["", "| label | CNN | filter bank |", "|---|---|---|"]
            lines += [
                f"| {label} | {v['cnn']:.3f} | {v['filter_bank']:.3f} |"
                for label, v in row["per_label"].items()
                if v["cnn"] is not None and v["filter_bank"] is not None
            ]
            lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data", help="the shared data root")
    parser.add_argument("--out", type=Path, default=ROOT / "experiments" / "results", help="JSON + Markdown here")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "experiments", help="checkpoints and reports")
    parser.add_argument("--only", default="pretraining,add_label,classic", help="comma-separated parts to run")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument(
        "--outliers",
        type=Path,
        action="append",
        default=[],
        help="non-chest images for the autoencoder part (e.g. the non-chest DICOMs of shared/data plus photos)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    nih = f"nih:{args.shared / 'nih1000' / 'Data_Entry_subset.csv'}"
    pneumonia = f"medmnist:{args.shared / 'pneumoniamnist' / 'pneumoniamnist.npz'}"
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "training_part_two.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    parts = args.only.split(",")

    def save() -> None:
        path.write_text(json.dumps(results, indent=2, default=str))
        (args.out / "training_part_two.md").write_text(markdown(results))

    if "add_label" in parts:
        results["add_label"] = adding_a_label(nih, args.work / "add_label", "Effusion", draws=3)
        save()
    if "classic" in parts:
        nih_model = results.get("add_label", {}).get("full_model", {}).get("checkpoint")
        if nih_model is None:
            nih_model = classifier(
                args.work / "classic",
                "nih",
                "--data",
                nih,
                "--labels",
                ",".join(NIH1000_LABELS),
                *SPLIT,
                *RECIPE,
                "--epochs",
                "25",
            )["checkpoint"]
        results["classic_nih1000"] = classic_vs_cnn(nih_model, args.work / "classic", "nih1000")
        save()
        pneumonia_model = classifier(
            args.work / "classic",
            "pneumoniamnist",
            "--data",
            pneumonia,
            "--input-size",
            "28",
            "--epochs",
            "6",
            "--batch-size",
            "64",
            "--ema-decay",
            "0.99",
        )
        results["classic_pneumoniamnist"] = classic_vs_cnn(
            pneumonia_model["checkpoint"], args.work / "classic", "pneumoniamnist"
        )
        save()
    if "pretraining" in parts:
        results["pretraining"] = pretraining(nih, args.work / "pretraining", epochs=30, seeds=[0, 1, 2])
        save()
    if "autoencoder_report" in parts and args.outliers:
        checkpoint = results["pretraining"]["autoencoder"]
        results["autoencoder_report"] = autoencoder_report(checkpoint, args.outliers, args.work)
        save()
    print(markdown(results))


if __name__ == "__main__":
    main()
