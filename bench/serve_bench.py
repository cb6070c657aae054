"""Serving benchmark (not a test): raw ONNX Runtime vs end-to-end HTTP, latency at 70% load, startup, memory.

    python bench/serve_bench.py [--images DIR|FILE ...] [--seconds 10] [--concurrency 32] [--out bench/results]

It starts `xray serve` in a child process (settings from XRAY_* variables, as in production), and measures:
1. time from process start to /readyz answering 200;
2. raw ORT throughput: the served sessions (same files, providers, threads) fed pre-decoded batches of
   max_batch_size in this process: images/s through classifier + autoencoder, the ceiling for the server;
3. in-process pipeline throughput: decode + preprocess + both sessions, no HTTP (what the server must also do);
4. end-to-end HTTP throughput at saturation: closed loop, `--concurrency` clients posting real files;
5. p50/p99 latency at 70% of that saturation rate: open loop, Poisson arrivals, latency from the scheduled send;
6. the server's resident memory (VmRSS, the worker processes included).
The client runs on the same machine and takes CPU from the server: on few cores the HTTP numbers are a floor.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

# as `xray serve` does (service.serve.limit_blas_threads), so the in-process numbers compare like for like
for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.imaging import decode  # noqa: E402
from models.preprocessing import PreprocessSpec, preprocess  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_images = ROOT.parent / "shared" / "data" / "nih1000" / "test"
    parser.add_argument(
        "--images",
        nargs="+",
        type=Path,
        default=[default_images],
        help=f"image files or folders (default: {default_images})",
    )
    parser.add_argument("--limit", type=int, default=200, help="images loaded into memory (default: 200)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each timed phase (default: 10)")
    parser.add_argument("--concurrency", type=int, default=32, help="clients at saturation (default: 32)")
    parser.add_argument("--load", type=float, default=0.7, help="fraction of saturation for latency (default: 0.7)")
    parser.add_argument("--workers", type=int, default=1, help="xray serve --workers (default: 1)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="results folder")
    parser.add_argument("--tag", default="", help="suffix for the result file names")
    return parser


def load_images(sources: list[Path], limit: int) -> list[bytes]:
    files: list[Path] = []
    for source in sources:
        if source.is_dir():
            files += sorted(p for p in source.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".dcm"))
        elif source.is_file():
            files.append(source)
    if not files:
        import io

        from PIL import Image

        from models.phantoms import make_phantom

        print("no images found: using 64 phantoms of 256 px", file=sys.stderr)
        out = []
        for seed in range(64):
            buffer = io.BytesIO()
            pixels = make_phantom(np.random.default_rng(seed), size=256).pixels
            Image.fromarray((pixels * 255).astype(np.uint8)).save(buffer, format="PNG")
            out.append(buffer.getvalue())
        return out
    return [path.read_bytes() for path in files[:limit]]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def process_tree(pid: int) -> list[int]:
    """The server process and its children (the worker processes of `--workers N`)."""
    try:
        children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    except OSError:
        children = []
    return [pid, *(int(child) for child in children)]


def rss_mib(pid: int) -> float:
    """VmRSS of the server and its workers, MiB."""
    total = 0
    for p in process_tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def cpu_seconds(pid: int) -> float:
    """user + system CPU time of the server and its workers so far."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for p in process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks
        except (OSError, IndexError, ValueError):
            continue
    return total


def start_server(port: int, workers: int) -> tuple[subprocess.Popen, float, str]:
    url = f"http://127.0.0.1:{port}"
    start = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "xray", "serve", "--port", str(port), "--workers", str(workers)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    while True:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return process, time.perf_counter() - start, url
        except httpx.TransportError:
            pass
        time.sleep(0.1)


def raw_ort_throughput(served: dict, images: list[bytes], seconds: float, threads: int) -> dict:
    """Both served sessions on pre-processed batches of max_batch_size, in this process."""
    from models.registry import Registry
    from service.config import get_settings
    from service.engine import open_session

    settings = get_settings()
    registry = Registry(settings.registry_dir)
    sessions, batches = [], []
    for role in ("classifier", "autoencoder"):
        info = served["models"].get(role)
        if info is None:
            continue
        model = registry.get(info["name"], info["version"])
        session = open_session(
            model, providers=settings.providers, intra_op_threads=threads, inter_op_threads=settings.inter_op_threads
        )
        spec = PreprocessSpec.from_dict(model.manifest.preprocess)
        batch_size = min(settings.max_batch_size, model.manifest.max_batch_size)
        x = np.stack([preprocess(decode(images[i % len(images)]), spec) for i in range(batch_size)])
        sessions.append(session)
        batches.append(x)
    for session, x in zip(sessions, batches, strict=True):  # warm-up
        session.run(x)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for session, x in zip(sessions, batches, strict=True):
            session.run(x)
        done += len(batches[0])
    elapsed = time.perf_counter() - start
    return {
        "images_per_s": done / elapsed,
        "batch_size": len(batches[0]),
        "providers": sessions[0].providers,
        "threads": threads,
    }


def pipeline_throughput(images: list[bytes], seconds: float, threads: int) -> dict:
    """decode + preprocess + both sessions (batch 1), single thread of control, no HTTP."""
    from models.registry import Registry
    from service.config import get_settings
    from service.metrics import ServiceMetrics
    from service.pipeline import Pipeline

    settings = get_settings().model_copy(update={"intra_op_threads": threads})
    pipeline = Pipeline.load(
        Registry(settings.registry_dir).model_set(settings.model_alias), settings, ServiceMetrics()
    )
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        prepared = pipeline.prepare(images[done % len(images)])
        for role, session in pipeline.sessions().items():
            session.run(prepared.inputs[pipeline.spec_keys[role]][None])
        done += 1
    return {"images_per_s": done / (time.perf_counter() - start)}


async def closed_loop(url: str, images: list[bytes], seconds: float, concurrency: int) -> dict:
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def worker(offset: int) -> None:
            nonlocal errors
            i = offset
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                response = await client.post(
                    "/v1/predict", content=images[i % len(images)], headers={"content-type": "application/octet-stream"}
                )
                if response.status_code == 200:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors += 1
                i += concurrency

        start = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        elapsed = time.perf_counter() - start
    return {
        "requests_per_s": len(latencies) / elapsed,
        "ok": len(latencies),
        "errors": errors,
        "concurrency": concurrency,
    }


async def open_loop(url: str, images: list[bytes], seconds: float, rate: float) -> dict:
    rng = random.Random(0)
    latencies: list[float] = []
    errors = 0
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=httpx.Limits(max_connections=512)) as client:

        async def one(i: int, scheduled: float) -> None:
            nonlocal errors
            response = await client.post(
                "/v1/predict", content=images[i % len(images)], headers={"content-type": "application/octet-stream"}
            )
            if response.status_code == 200:
                latencies.append(time.perf_counter() - scheduled)
            else:
                errors += 1

        tasks, start, t, i = [], time.perf_counter(), 0.0, 0
        while t < seconds:
            t += rng.expovariate(rate)
            delay = start + t - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i, start + t)))
            i += 1
        await asyncio.gather(*tasks)
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1e3  # noqa: E731
    return {
        "rate_per_s": rate,
        "sent": i,
        "errors": errors,
        "p50_ms": pick(0.50),
        "p90_ms": pick(0.90),
        "p99_ms": pick(0.99),
        "mean_ms": statistics.fmean(latencies) * 1e3,
    }


def main(args: argparse.Namespace) -> dict:
    images = load_images(args.images, args.limit)
    port = free_port()
    process, ready_s, url = start_server(port, args.workers)
    try:
        served = httpx.get(f"{url}/v1/models", timeout=10).json()
        rss_idle = rss_mib(process.pid)
        threads = int(os.environ.get("XRAY_INTRA_OP_THREADS", "0"))
        raw = raw_ort_throughput(served, images, args.seconds, threads)
        in_process = pipeline_throughput(images, args.seconds, threads)
        asyncio.run(closed_loop(url, images, 2.0, args.concurrency))  # warm the connections and caches
        cpu_before = cpu_seconds(process.pid)
        saturation = asyncio.run(closed_loop(url, images, args.seconds, args.concurrency))
        saturation["server_cpu_ms_per_request"] = (
            (cpu_seconds(process.pid) - cpu_before) * 1e3 / max(1, saturation["ok"])
        )
        latency = asyncio.run(open_loop(url, images, args.seconds, args.load * saturation["requests_per_s"]))
        rss_loaded = rss_mib(process.pid)
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
    finally:
        process.terminate()
        process.wait(timeout=30)
    classifier_ref = f'model="{served["models"]["classifier"]["name"]}@{served["models"]["classifier"]["version"]}"'
    batch_sum = sum(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("xray_batch_size_sum") and classifier_ref in line
    )
    batch_count = sum(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("xray_batch_size_count") and classifier_ref in line
    )
    result = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "settings": {k: v for k, v in os.environ.items() if k.startswith("XRAY_")},
        "images": {"count": len(images), "mean_bytes": int(np.mean([len(b) for b in images]))},
        "models": {
            role: f"{m['name']}@{m['version']} ({m['precision']}, {m['device']})"
            for role, m in served["models"].items()
        },
        "time_to_ready_s": round(ready_s, 2),
        "raw_ort": raw,
        "in_process_pipeline": in_process,
        "http_saturation": saturation,
        "ratio_http_to_raw_ort": saturation["requests_per_s"] / raw["images_per_s"],
        "ratio_http_to_in_process_pipeline": saturation["requests_per_s"] / in_process["images_per_s"],
        "latency_at_load": latency,
        "mean_classifier_batch": batch_sum / batch_count if batch_count else None,
        "rss_mib": {"idle": round(rss_idle, 1), "after_load": round(rss_loaded, 1)},
    }
    lines = [
        f"models: {result['models']}",
        f"time from process start to ready: {result['time_to_ready_s']:.2f} s",
        f"raw ORT throughput (batch {raw['batch_size']}, {raw['providers'][0]}): {raw['images_per_s']:.1f} images/s",
        f"in-process decode+preprocess+ORT (batch 1): {in_process['images_per_s']:.1f} images/s",
        f"end-to-end HTTP at saturation ({args.concurrency} clients): {saturation['requests_per_s']:.1f} req/s "
        f"({saturation['errors']} errors; server CPU {saturation['server_cpu_ms_per_request']:.2f} ms per request)",
        f"ratio HTTP / raw ORT: {result['ratio_http_to_raw_ort']:.3f}   "
        f"HTTP / in-process pipeline: {result['ratio_http_to_in_process_pipeline']:.3f}",
        f"latency at {args.load:.0%} load ({latency['rate_per_s']:.1f} req/s, {latency['sent']} sent, "
        f"{latency['errors']} errors): p50 {latency['p50_ms']:.1f} ms, p90 {latency['p90_ms']:.1f} ms, "
        f"p99 {latency['p99_ms']:.1f} ms",
        f"mean classifier batch over the run: {result['mean_classifier_batch']:.2f}",
        f"server RSS: idle {result['rss_mib']['idle']} MiB, after load {result['rss_mib']['after_load']} MiB",
    ]
    print("\n".join(lines))
    save_results(args.out, args.tag, result, lines)
    return result


def save_results(out: Path, tag: str | None, result: dict, lines: list[str]) -> None:
    """<UTC time>-<tag>.json (everything measured) and .txt (the printed summary) in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    stem = datetime.now(UTC).strftime("%Y%m%d-%H%M%S") + (f"-{tag}" if tag else "")
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"{stem}.txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
