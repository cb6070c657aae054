"""Batch-job throughput, side by side in one run on one machine:

- `xray score` (offline, its own process) on a folder: the images/s it reports for its scoring phase (models loaded);
- a job over the same folder on a real `xray serve` (embedded runner): the job's own images/s (started -> finished),
  each run right after an `xray score` run (interleaved: this machine's speed drifts by 10-20 % over minutes);
- the same job on `xray serve` with XRAY_JOBS_ENGINE=ray (a local Ray instance on this machine's CPUs).

    python bench/jobs_bench.py [--folder ../shared/data/nih1000/test] [--copies 1] [--repeats 3] [--tag cpu2-jobs]

`--copies N` scores N copies of the folder's files (distinct names) as one job: Ray Data starts its actor pool once
per claimed block (seconds), which a 200-image job does not amortise.

Every run uses the same XRAY_* settings (one ONNX Runtime thread per session unless the environment says
otherwise) and, like `xray serve` and `xray score`, one BLAS thread. Writes <UTC time>-<tag>.json and .txt to
bench/results/.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import httpx
from serve_bench import save_results  # bench/ is on sys.path when a script in it runs

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"XRAY_INTRA_OP_THREADS": "1", "XRAY_DECODE_THREADS": "2", "XRAY_GPUS": "none", "XRAY_LOG_JSON": "true"}
POLL_S = 0.5  # how often the bench asks for a job's state, like a client would; the rate is the server's own
BLAS_ONE_THREAD = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # as `xray serve`


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--folder", type=Path, default=ROOT.parent / "shared" / "data" / "nih1000" / "test", help="images to score"
    )
    parser.add_argument("--copies", type=int, default=1, help="score this many copies of the folder (default 1)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each (default 3; the median is reported)")
    parser.add_argument("--tag", default="cpu2-jobs", help="results file suffix (default cpu2-jobs)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="results folder")
    return parser


def offline_rate(folder: Path) -> float:
    """`xray score` as a user runs it (its own process); the images/s it reports for its scoring phase."""
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(
            [sys.executable, "-m", "xray", "score", str(folder), "-o", str(Path(tmp) / "out.csv")],
            capture_output=True,
            text=True,
            timeout=3600,
            check=True,
        )
    return float(re.search(r"\(([\d.]+) images/s\)", done.stdout).group(1))


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serving(folder: Path, engine: str, data_dir: Path) -> Iterator[tuple[str, float]]:
    """A fresh `xray serve` with the given jobs engine: (its URL, seconds from start to ready)."""
    port = free_port()
    env = {
        **os.environ,
        "XRAY_JOBS_ENGINE": engine,
        "XRAY_DATA_DIR": str(data_dir),
        "XRAY_ALLOWED_SOURCE_ROOTS": str(folder),
        "XRAY_JOB_POLL_S": "0.1",
    }
    log_path = data_dir / f"serve-{engine}.log"
    started = time.perf_counter()
    with open(log_path, "wb") as log:
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
                raise RuntimeError(f"xray serve did not start: {log_path.read_text()[-2000:]}")
            time.sleep(0.2)
        yield url, time.perf_counter() - started
    finally:
        process.terminate()
        process.wait(timeout=60)


def job_rate(url: str, folder: Path) -> float:
    """Submit the folder as a job and wait; the finished job's own images/s (started -> finished)."""
    job = httpx.post(f"{url}/v1/jobs", json={"folder": str(folder)}, timeout=60).json()
    while job["state"] in ("queued", "running"):
        time.sleep(POLL_S)
        job = httpx.get(f"{url}/v1/jobs/{job['id']}", timeout=10).json()
    if job["state"] != "succeeded":
        raise RuntimeError(f"the job ended {job['state']}: {job}")
    return job["progress"]["images_per_s"]


def copied(source: Path, copies: int, target: Path) -> Path:
    files = sorted(path for path in source.rglob("*") if path.is_file())
    target.mkdir()
    for copy in range(copies):
        for i, path in enumerate(files):
            shutil.copyfile(path, target / f"{copy}-{i}{path.suffix}")
    return target


def main(args: argparse.Namespace) -> dict:
    for name, value in {**SETTINGS, **BLAS_ONE_THREAD}.items():
        os.environ.setdefault(name, value)  # before numpy loads (service is imported lazily below)
    with tempfile.TemporaryDirectory(prefix="xray-jobs-bench-") as tmp:
        folder = args.folder.resolve()
        if args.copies > 1:
            folder = copied(folder, args.copies, Path(tmp) / "films")
        return measure(args, folder, Path(tmp))


def measure(args: argparse.Namespace, folder: Path, tmp: Path) -> dict:
    count = sum(1 for path in folder.rglob("*") if path.is_file())
    offline, embedded, ray = [], [], []
    (tmp / "embedded").mkdir()
    (tmp / "ray").mkdir()
    with serving(folder, "embedded", tmp / "embedded") as (url, embedded_ready):
        for _ in range(args.repeats):  # interleaved, so that the machine's drift hits both alike
            offline.append(offline_rate(folder))
            embedded.append(job_rate(url, folder))
    with serving(folder, "ray", tmp / "ray") as (url, ray_ready):
        ray = [job_rate(url, folder) for _ in range(args.repeats)]
    median = {
        name: statistics.median(rates) for name, rates in [("offline", offline), ("embedded", embedded), ("ray", ray)]
    }
    result = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "settings": {k: v for k, v in os.environ.items() if k.startswith("XRAY_")},
        "folder": str(args.folder.resolve()),
        "copies": args.copies,
        "images": count,
        "images_per_s": {"xray_score": offline, "job_embedded": embedded, "job_ray": ray},
        "median_images_per_s": median,
        "ratio_job_embedded_to_xray_score": median["embedded"] / median["offline"],
        "ratio_job_ray_to_job_embedded": median["ray"] / median["embedded"],
        "time_to_ready_s": {"embedded": round(embedded_ready, 2), "ray": round(ray_ready, 2)},
    }
    lines = [
        f"{count} images ({args.copies} x {args.folder}), {args.repeats} runs each (median; all runs in the JSON)",
        f"xray score (offline, scoring phase):     {median['offline']:.1f} images/s",
        f"job on xray serve, embedded runner:      {median['embedded']:.1f} images/s "
        f"({result['ratio_job_embedded_to_xray_score']:.2f} of xray score)",
        f"job on xray serve, Ray engine (local):   {median['ray']:.1f} images/s "
        f"({result['ratio_job_ray_to_job_embedded']:.2f} of embedded)",
        f"time to ready: embedded {embedded_ready:.1f} s, ray {ray_ready:.1f} s",
    ]
    print("\n".join(lines))
    save_results(args.out, args.tag, result, lines)
    return result


if __name__ == "__main__":
    main(get_args_parser().parse_args())
