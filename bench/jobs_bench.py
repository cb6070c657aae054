"""Batch-job throughput, side by side in one run on one machine:

- `xray score` (offline, in this process) on a folder: images/s over its scoring phase (models loaded);
- a job over the same folder on a real `xray serve` (embedded runner): the job's own images/s (started -> finished);
- the same job on `xray serve` with XRAY_JOBS_ENGINE=ray (a local Ray instance on this machine's CPUs).

    python bench/jobs_bench.py [--folder ../shared/data/nih1000/test] [--repeats 3] [--tag cpu2-jobs]

Every run uses the same XRAY_* settings (one ONNX Runtime thread per session unless the environment says
otherwise) and, like `xray serve` and `xray score`, one BLAS thread. Writes <UTC time>-<tag>.json and .txt to
bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"XRAY_INTRA_OP_THREADS": "1", "XRAY_DECODE_THREADS": "2", "XRAY_GPUS": "none", "XRAY_LOG_JSON": "true"}
BLAS_ONE_THREAD = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # as `xray serve`


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--folder", type=Path, default=ROOT.parent / "shared" / "data" / "nih1000" / "test", help="images to score"
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs of each (default 3; the median is reported)")
    parser.add_argument("--tag", default="cpu2-jobs", help="results file suffix (default cpu2-jobs)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="results folder")
    return parser


def offline_rate(folder: Path) -> float:
    from service.config import Settings
    from service.jobs.offline import score_offline

    with tempfile.TemporaryDirectory() as tmp:
        counts = asyncio.run(score_offline([folder], Path(tmp) / "out.csv", Settings(), resume=False, progress=False))
    return (counts["scored"] + counts["failed"]) / counts["seconds"]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def job_rates(folder: Path, repeats: int, engine: str, data_dir: Path) -> tuple[list[float], float]:
    """Submit the folder `repeats` times to a fresh `xray serve`; each finished job's images/s, and the time to
    ready."""
    port = free_port()
    env = {
        **os.environ,
        "XRAY_JOBS_ENGINE": engine,
        "XRAY_DATA_DIR": str(data_dir),
        "XRAY_ALLOWED_SOURCE_ROOTS": str(folder),
        "XRAY_JOB_POLL_S": "0.1",
    }
    log = open(data_dir / f"serve-{engine}.log", "wb")  # noqa: SIM115 - closed with the process below
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "xray", "serve", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.perf_counter() - started > 120:
                raise RuntimeError(
                    f"xray serve did not start: {(data_dir / f'serve-{engine}.log').read_text()[-2000:]}"
                )
            time.sleep(0.2)
        ready_s = time.perf_counter() - started
        rates = []
        for _ in range(repeats):
            job = httpx.post(f"{url}/v1/jobs", json={"folder": str(folder)}, timeout=60).json()
            while job["state"] in ("queued", "running"):
                time.sleep(0.1)
                job = httpx.get(f"{url}/v1/jobs/{job['id']}", timeout=10).json()
            if job["state"] != "succeeded":
                raise RuntimeError(f"the {engine} job ended {job['state']}: {job}")
            rates.append(job["progress"]["images_per_s"])
    finally:
        process.terminate()
        process.wait(timeout=60)
        log.close()
    return rates, ready_s


def main(args: argparse.Namespace) -> dict:
    for name, value in {**SETTINGS, **BLAS_ONE_THREAD}.items():
        os.environ.setdefault(name, value)  # before numpy loads (service is imported lazily below)
    folder = args.folder.resolve()
    count = sum(1 for path in folder.rglob("*") if path.is_file())
    offline = [offline_rate(folder) for _ in range(args.repeats)]
    with tempfile.TemporaryDirectory(prefix="xray-jobs-bench-") as tmp:
        (Path(tmp) / "embedded").mkdir()
        (Path(tmp) / "ray").mkdir()
        embedded, embedded_ready = job_rates(folder, args.repeats, "embedded", Path(tmp) / "embedded")
        ray, ray_ready = job_rates(folder, args.repeats, "ray", Path(tmp) / "ray")
    median = {
        name: statistics.median(rates) for name, rates in [("offline", offline), ("embedded", embedded), ("ray", ray)]
    }
    result = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "settings": {k: v for k, v in os.environ.items() if k.startswith("XRAY_")},
        "folder": str(folder),
        "images": count,
        "images_per_s": {"xray_score": offline, "job_embedded": embedded, "job_ray": ray},
        "median_images_per_s": median,
        "ratio_job_embedded_to_xray_score": median["embedded"] / median["offline"],
        "ratio_job_ray_to_job_embedded": median["ray"] / median["embedded"],
        "time_to_ready_s": {"embedded": round(embedded_ready, 2), "ray": round(ray_ready, 2)},
    }
    lines = [
        f"{count} images from {folder}, {args.repeats} runs each (median; all runs in the JSON)",
        f"xray score (offline, scoring phase):     {median['offline']:.1f} images/s",
        f"job on xray serve, embedded runner:      {median['embedded']:.1f} images/s "
        f"({result['ratio_job_embedded_to_xray_score']:.2f} of xray score)",
        f"job on xray serve, Ray engine (local):   {median['ray']:.1f} images/s "
        f"({result['ratio_job_ray_to_job_embedded']:.2f} of embedded)",
        f"time to ready: embedded {embedded_ready:.1f} s, ray {ray_ready:.1f} s",
    ]
    print("\n".join(lines))
    args.out.mkdir(parents=True, exist_ok=True)
    stem = datetime.now(UTC).strftime("%Y%m%d-%H%M%S") + (f"-{args.tag}" if args.tag else "")
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / f"{stem}.txt").write_text("\n".join(lines) + "\n")
    return result


if __name__ == "__main__":
    main(get_args_parser().parse_args())
