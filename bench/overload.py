"""Overload test (bounded, loopback only): what the server answers at a multiple of its measured saturation.

    python bench/overload.py [--factor 2] [--overload-s 15] [--json report.json]

Starts `xray serve` on the shipped registry with a small admission limit, then:
1. baseline: sequential requests, their median latency;
2. saturation: a closed loop with as many clients as the server admits at once (no 503 expected): requests/s;
3. overload: an open loop (arrivals at fixed times, whether or not earlier answers came) at `--factor` x saturation.
   Every answer's status, latency and Retry-After are kept, and the server's RSS is sampled;
4. recovery: right after the load stops, sequential requests until three in a row are back near the baseline.
The report (JSON) is what tests/service/test_overload.py checks; the load generator shares the machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from serve_bench import closed_loop, free_port, rss_mib  # noqa: E402

from models.phantoms import make_phantom  # noqa: E402

RAW = {"content-type": "image/png"}


def film(size: int) -> bytes:
    pixels = make_phantom(np.random.default_rng(7), size=size).pixels
    buffer = io.BytesIO()
    Image.fromarray((np.clip(pixels, 0, 1) * 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def start_server(port: int, max_active: int, log_path: Path) -> tuple[object, str]:
    import subprocess

    env = {
        **os.environ,
        "XRAY_REGISTRY_DIR": str(ROOT / "registry"),
        "XRAY_DATA_DIR": tempfile.mkdtemp(prefix="xray-overload-"),
        "XRAY_MAX_ACTIVE_UPLOADS": str(max_active),
        "XRAY_INTRA_OP_THREADS": "1",
        "XRAY_DECODE_THREADS": "2",
        "XRAY_REGISTRY_POLL_S": "0",
        "XRAY_JOBS_ENGINE": "off",
        "XRAY_LOG_LEVEL": "WARNING",
    }
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "xray", "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with {process.returncode}: {log_path.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise SystemExit("the server was not ready within 90 s")


def sequential(url: str, image: bytes, count: int) -> list[float]:
    latencies = []
    with httpx.Client(base_url=url, timeout=30) as client:
        for _ in range(count):
            start = time.perf_counter()
            answer = client.post("/v1/predict", content=image, headers=RAW)
            latencies.append(time.perf_counter() - start)
            if answer.status_code != 200:
                raise SystemExit(f"expected 200 outside the overload, got {answer.status_code}: {answer.text[:300]}")
    return latencies


async def overload(url: str, image: bytes, rate: float, seconds: float, pid: int) -> dict:
    answers: list[tuple[int, float, bool]] = []  # status, latency s, Retry-After present
    transport_errors: list[str] = []
    rss: list[float] = []
    limits = httpx.Limits(max_connections=1024, max_keepalive_connections=256)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def one(scheduled: float) -> None:
            try:
                answer = await client.post("/v1/predict", content=image, headers=RAW)
            except httpx.TransportError as error:
                transport_errors.append(type(error).__name__)
                return
            answers.append((answer.status_code, time.perf_counter() - scheduled, "retry-after" in answer.headers))

        async def sample_rss() -> None:
            while True:
                rss.append(rss_mib(pid))
                await asyncio.sleep(0.5)

        sampler = asyncio.create_task(sample_rss())
        tasks, start, sent = [], time.perf_counter(), 0
        while (offset := sent / rate) < seconds:
            delay = start + offset - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(start + offset)))
            sent += 1
        await asyncio.gather(*tasks)
        sampler.cancel()
    return {"answers": answers, "transport_errors": transport_errors, "rss_mib": rss, "sent": sent}


def quantile_ms(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3, 2)


def recovery(url: str, image: bytes, baseline_s: float, limit_s: float) -> float | None:
    """Seconds from the end of the load until three requests in a row take at most 2x baseline + 50 ms."""
    start, in_a_row = time.perf_counter(), 0
    with httpx.Client(base_url=url, timeout=30) as client:
        while time.perf_counter() - start < limit_s:
            t0 = time.perf_counter()
            answer = client.post("/v1/predict", content=image, headers=RAW)
            quick = answer.status_code == 200 and time.perf_counter() - t0 <= 2 * baseline_s + 0.05
            in_a_row = in_a_row + 1 if quick else 0
            if in_a_row == 3:
                return round(time.perf_counter() - start, 2)
    return None


def run(args: argparse.Namespace) -> dict:
    image = film(args.image_size)
    log_path = Path(tempfile.mkdtemp(prefix="xray-overload-log-")) / "server.log"
    process, url = start_server(free_port(), args.max_active, log_path)
    try:
        sequential(url, image, 5)  # warm-up
        baseline = statistics.median(sequential(url, image, 15))
        rss_before = rss_mib(process.pid)
        saturation = asyncio.run(closed_loop(url, [image], args.saturation_s, args.max_active))
        rate = args.factor * saturation["requests_per_s"]
        loaded = asyncio.run(overload(url, image, rate, args.overload_s, process.pid))
        recovered_s = recovery(url, image, baseline, args.recovery_limit_s)
        rss_after = rss_mib(process.pid)
        alive = process.poll() is None
    finally:
        process.terminate()
        process.wait(timeout=30)
    answers = loaded["answers"]
    by_status: dict[str, int] = {}
    for status, _, _ in answers:
        by_status[str(status)] = by_status.get(str(status), 0) + 1
    refused = [latency for status, latency, _ in answers if status == 503]
    served = [latency for status, latency, _ in answers if status == 200]
    return {
        "cpu_count": os.cpu_count(),
        "image_px": args.image_size,
        "max_active_uploads": args.max_active,
        "baseline_ms": round(baseline * 1e3, 2),
        "saturation_rps": round(saturation["requests_per_s"], 2),
        "offered_rps": round(rate, 2),
        "factor": args.factor,
        "overload_s": args.overload_s,
        "sent": loaded["sent"],
        "statuses": by_status,
        "transport_errors": len(loaded["transport_errors"]),
        "refused_without_retry_after": sum(1 for status, _, has in answers if status == 503 and not has),
        "refused_p50_ms": quantile_ms(refused, 0.50),
        "refused_p99_ms": quantile_ms(refused, 0.99),
        "served_p50_ms": quantile_ms(served, 0.50),
        "served_p99_ms": quantile_ms(served, 0.99),
        "served_rps_under_overload": round(len(served) / args.overload_s, 2),
        "rss_before_mib": round(rss_before, 1),
        "rss_peak_mib": round(max(loaded["rss_mib"], default=rss_before), 1),
        "rss_after_mib": round(rss_after, 1),
        "recovered_after_s": recovered_s,
        "alive": alive,
    }


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--factor", type=float, default=2.0, help="offered load as a multiple of saturation")
    parser.add_argument("--saturation-s", type=float, default=5.0)
    parser.add_argument("--overload-s", type=float, default=15.0)
    parser.add_argument("--recovery-limit-s", type=float, default=20.0)
    parser.add_argument("--max-active", type=int, default=8, help="XRAY_MAX_ACTIVE_UPLOADS of the server")
    parser.add_argument("--image-size", type=int, default=1024, help="side of the phantom PNG posted")
    parser.add_argument("--json", type=Path, help="write the report here")
    return parser


if __name__ == "__main__":
    arguments = get_args_parser().parse_args()
    report = run(arguments)
    print(json.dumps(report, indent=2))
    if arguments.json:
        arguments.json.write_text(json.dumps(report, indent=2))
