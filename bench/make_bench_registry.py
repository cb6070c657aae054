"""A registry with a heavier classifier for serving benchmarks (not a product model; needs the train extra).

    python bench/make_bench_registry.py --out /tmp/bench-registry [--backbone resnet18] [--input-size 224]
    XRAY_REGISTRY_DIR=/tmp/bench-registry python bench/serve_bench.py

The shipped default model runs at 64 px, where a forward pass costs about a millisecond and HTTP handling dominates
the server's time. Production chest models run ResNet/DenseNet at 224 px, where inference dominates. This trains
such an architecture for one epoch on synthetic phantoms (the weights only need to be real enough to export and run;
its AUROC is meaningless), exports it with its int8 variant and names it the model set's classifier (no autoencoder).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.registry import Registry  # noqa: E402
from training import export, train_classifier  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="registry folder to create")
    parser.add_argument("--backbone", default="resnet18", help="classifier backbone (default: resnet18)")
    parser.add_argument("--input-size", type=int, default=224, help="input size in pixels (default: 224)")
    parser.add_argument("--images", type=int, default=320, help="phantoms to train on (default: 320)")
    args = parser.parse_args()
    name = f"bench-{args.backbone}-{args.input_size}"
    with tempfile.TemporaryDirectory() as work:
        train = train_classifier.get_args_parser().parse_args(
            [
                "--data",
                f"phantoms:{args.images}",
                "--labels",
                "Abnormal,Nodule,Effusion,Cardiomegaly",
                "--backbone",
                args.backbone,
                "--input-size",
                str(args.input_size),
                "--epochs",
                "1",
                "--batch-size",
                "16",
                "--optimizer",
                "adamw",
                "--lr",
                "1e-3",
                "--no-augment",
                "--bootstrap",
                "0",
                "--quiet",
                "--output-dir",
                work,
            ]
        )
        checkpoint = train_classifier.main(train)["checkpoint"]
        exported = export.get_args_parser().parse_args(
            [
                str(checkpoint),
                "--name",
                name,
                "--registry",
                str(args.out),
                "--int8",
                "--promote",
                "--threads",
                "2",
                "--max-auroc-drop",
                "1.0",
                "--parity-images",
                "16",
                "--calibration-images",
                "32",
                "--quiet",
            ]
        )
        export.main(exported)
    Registry(args.out).set_model_set(name, None)
    print(f"{args.out}: {name} (+ int8), promoted to production, set as the served classifier")


if __name__ == "__main__":
    main()
