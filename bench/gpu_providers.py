"""Which execution provider each served model really gets, and raw throughput per provider (not a test).

    python bench/gpu_providers.py [--seconds 3]

Prints JSON: onnxruntime version, available providers, and for each model and provider request (cpu, cuda,
tensorrt) the providers the session confirms, load and warm-up time, images/s at batch 1/16/64, and the largest
output difference from the CPU session.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.registry import Registry  # noqa: E402
from service.engine import open_session  # noqa: E402


def throughput(session, batch: int, seconds: float) -> float:
    x = np.random.default_rng(0).normal(size=(batch, 1, session.input_size, session.input_size)).astype(np.float32)
    session.run(x)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        session.run(x)
        done += batch
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement (default: 3)")
    args = parser.parse_args()
    model_set = Registry(ROOT / "registry").model_set("production")
    report = {"onnxruntime": ort.__version__, "available": ort.get_available_providers(), "models": {}}
    for model in model_set.models():
        rows = {}
        reference = open_session(model, providers="cpu")
        x = np.random.default_rng(1).normal(size=(4, 1, reference.input_size, reference.input_size)).astype(np.float32)
        expected = reference.run(x)
        for request in ("cpu", "cuda", "tensorrt"):
            try:
                session = open_session(model, providers=request)
                start = time.perf_counter()
                session.warm_up()
                got = session.run(x)
                rows[request] = {
                    "confirmed": session.providers,
                    "load_s": round(session.load_seconds, 3),
                    "warmup_s": round(time.perf_counter() - start, 3),
                    "max_abs_diff_vs_cpu": float(max(np.abs(got[k] - expected[k]).max() for k in expected)),
                    "images_per_s": {b: round(throughput(session, b, args.seconds), 1) for b in (1, 16, 64)},
                }
            except Exception as error:  # noqa: BLE001 - report, do not stop
                rows[request] = {"error": f"{type(error).__name__}: {error}"[:500]}
        report["models"][model.ref] = rows
        print(json.dumps({model.ref: rows}), flush=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
