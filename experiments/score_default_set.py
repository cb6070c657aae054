"""The shipped default set scored through the server, as a user would: every test image uploaded to /v1/predict.

    python experiments/score_default_set.py [--registry registry] [--threads 2] [--out experiments/results]

- PneumoniaMNIST's official test split (624 images), each 28x28 film uploaded as a PNG: Pneumonia AUROC from the
  calibrated probabilities, accuracy of the `positive` flag (the calibrated threshold).
- The 200 images of `nih1000/test` uploaded as they are: AUROC per label and the mean over Abnormal, Effusion,
  Infiltration, Atelectasis and Cardiomegaly.
- Inference time per image at batch 1 (uploads one after another, the micro-batcher's wait set to 0): the server's
  own `timings_ms.inference_incl_queue` (classifier + outlier autoencoder), median and 90th percentile.

No training code runs here: the labels come from the data set files, the scores from HTTP responses.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.labels import NIH1000_LABELS  # noqa: E402
from service.app import create_app  # noqa: E402
from service.config import Settings  # noqa: E402
from training import datasets, metrics  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def _upload(client: TestClient, data: bytes) -> dict:
    response = client.post("/v1/predict", content=data, headers={"content-type": "image/png"})
    response.raise_for_status()
    return response.json()


def _rows(result: dict) -> dict[str, dict]:
    """Every label's row: the findings, and the Abnormal head's row (when the classifier has one)."""
    rows = {row["label"]: row for row in result["findings"]}
    if result["abnormal"]["source"] == "abnormal_head":
        rows[result["abnormal"]["label"]] = result["abnormal"]
    return rows


def score_pneumonia(client: TestClient, npz: Path) -> tuple[dict, list[float]]:
    with np.load(npz) as data:
        images, truth = data["test_images"], data["test_labels"][:, 0].astype(int)
    probabilities, flags, timings = [], [], []
    for pixels in images:
        result = _upload(client, _png(pixels))
        row = _rows(result)["Pneumonia"]
        probabilities.append(row["probability"])
        flags.append(row["positive"])
        timings.append(result["timings_ms"]["inference_incl_queue"])
    figures = {
        "images": len(truth),
        "auroc": metrics.auroc(truth, np.array(probabilities)),
        "accuracy": float(np.mean(np.array(flags) == (truth == 1))),
        "sensitivity": float(np.mean(np.array(flags)[truth == 1])),
        "specificity": float(np.mean(~np.array(flags)[truth == 0])),
    }
    return figures, timings


def score_nih(client: TestClient, csv: Path) -> tuple[dict, list[float]]:
    test_folder = csv.parent / "test"
    table = datasets.nih_chestxray14(csv, csv.parent)
    rows = [i for i, path in enumerate(table.paths) if test_folder in path.parents]
    held_out = table.subset(rows).select_labels(NIH1000_LABELS)
    probabilities, timings = [], []
    for path in held_out.paths:
        result = _upload(client, path.read_bytes())
        found = _rows(result)
        probabilities.append([found[label]["probability"] for label in NIH1000_LABELS])
        timings.append(result["timings_ms"]["inference_incl_queue"])
    prob = np.array(probabilities)
    aurocs = {label: metrics.auroc(held_out.labels[:, k], prob[:, k]) for k, label in enumerate(NIH1000_LABELS)}
    figures = {"images": len(rows), "auroc": aurocs, "mean_auroc": float(np.mean(list(aurocs.values())))}
    return figures, timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--registry", type=Path, default=ROOT / "registry")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads per session")
    parser.add_argument("--shared", type=Path, default=SHARED)
    parser.add_argument("--out", type=Path, default=ROOT / "experiments" / "results")
    args = parser.parse_args()
    settings = Settings(
        registry_dir=args.registry, intra_op_threads=args.threads, max_batch_delay_ms=0.0, api_keys=[], log_json=True
    )
    with TestClient(create_app(settings)) as client:
        pneumonia, pn_ms = score_pneumonia(client, args.shared / "pneumoniamnist" / "pneumoniamnist.npz")
        nih, nih_ms = score_nih(client, args.shared / "nih1000" / "Data_Entry_subset.csv")
        models = _upload(client, next((args.shared / "nih1000" / "test").rglob("*.png")).read_bytes())["models"]
    timings = sorted(pn_ms + nih_ms)
    report = {
        "models": models,
        "threads": args.threads,
        "pneumoniamnist_test": pneumonia,
        "nih1000_test_folder": nih,
        "inference_ms_batch1": {
            "uploads": len(timings),
            "median": statistics.median(timings),
            "p90": timings[int(0.9 * (len(timings) - 1))],
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "default_set_through_server.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
