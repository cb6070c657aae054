"""`xray serve`: uvicorn workers. One process per GPU (each sees only its own through CUDA_VISIBLE_DEVICES), else
N CPU processes sharing one listening socket, each with its own share of the cores for ONNX Runtime.

The parent binds the socket, spawns the workers and restarts any that die; SIGINT/SIGTERM stop them all.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

from service.config import Settings

log = logging.getLogger("service.serve")
APP_FACTORY = "service.app:app_factory"
STABLE_WORKER_S = 60.0  # a worker that lived this long starts its restart backoff from scratch


@dataclass(frozen=True)
class WorkerPlan:
    env: dict[str, str] = field(default_factory=dict)
    label: str = "cpu"


BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def limit_blas_threads(threads: int) -> None:
    """Cap numpy's BLAS threads before numpy loads (they are read once, at import).

    Preprocessing resamples with small matrix products from several decode threads at once; a multi-threaded
    OpenBLAS then spin-waits against ONNX Runtime for the same cores (measured: ResNet-18 at 224 px served 93 req/s
    with the default, 147 with one BLAS thread, on 2 cores). An explicit variable in the environment wins.
    """
    for name in BLAS_THREAD_VARIABLES:
        os.environ.setdefault(name, str(threads))


def detect_gpus(setting: str) -> list[str]:
    """GPU ids to serve on: explicit ids, none, or auto (CUDA_VISIBLE_DEVICES if set, else nvidia-smi's list)."""
    setting = setting.strip().lower()
    if setting == "none":
        return []
    if setting != "auto":
        return [part.strip() for part in setting.split(",") if part.strip()]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [part.strip() for part in visible.split(",") if part.strip() and part.strip() != "-1"]
    try:
        listed = subprocess.run(
            ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in listed.splitlines() if line.strip()]


def plan_workers(settings: Settings, workers: int, gpus: list[str], cpu_count: int | None = None) -> list[WorkerPlan]:
    if gpus:
        return [WorkerPlan({"CUDA_VISIBLE_DEVICES": gpu}, f"gpu{gpu}") for gpu in gpus]
    cpu_count = cpu_count or os.cpu_count() or 1
    threads = settings.intra_op_threads or max(1, cpu_count // workers)  # workers must not oversubscribe the cores
    env = {"XRAY_INTRA_OP_THREADS": str(threads), "XRAY_PROVIDERS": "cpu"}
    return [WorkerPlan(dict(env), f"cpu{i}") for i in range(workers)]


def _uvicorn_config(host: str, port: int, settings: Settings):
    import uvicorn

    return uvicorn.Config(
        APP_FACTORY,
        factory=True,
        # asyncio's loop, not uvloop: the work here is thread handoffs (decode pool, session threads), and uvloop
        # measured slower at that on 2 cores (a batch job 0.79 -> 0.95 of `xray score`; HTTP 85 -> 96 req/s)
        loop="asyncio",
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=30,
        log_level=settings.log_level.lower(),
    )


def _apply_worker_env(env: dict[str, str]) -> None:
    """A worker's environment, before onnxruntime loads: its own GPU, and defaults that explicit settings override."""
    for name, value in env.items():
        if name == "CUDA_VISIBLE_DEVICES":
            os.environ[name] = value  # each GPU worker must see only its own device
        else:
            os.environ.setdefault(name, value)  # an explicit XRAY_PROVIDERS / XRAY_INTRA_OP_THREADS wins
    from service.config import get_settings

    get_settings.cache_clear()


def _run_worker(sock: socket.socket | None, env: dict[str, str], host: str, port: int) -> None:
    _apply_worker_env(env)
    import uvicorn

    from service.config import get_settings

    server = uvicorn.Server(_uvicorn_config(host, port, get_settings()))
    # uvicorn re-raises the signal that stopped it once it has drained, with this handler back in place: a drained
    # SIGTERM exits 0, also as PID 1's child under an init process (the default action would give 143)
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(0))
    server.run(sockets=[sock] if sock is not None else None)


def serve(settings: Settings, host: str, port: int, workers: int) -> None:
    gpus = detect_gpus(settings.gpus)
    plans = plan_workers(settings, workers, gpus)
    if gpus and workers not in (1, len(gpus)):
        log.warning("one worker per GPU", extra={"gpus": gpus, "workers_asked": workers})
    if len(plans) == 1:
        _run_worker(None, plans[0].env, host, port)
    else:
        _supervise(plans, host, port)


def _supervise(plans: list[WorkerPlan], host: str, port: int) -> None:
    """Spawn the workers on one shared socket, restart any that die (with backoff), stop them all on a signal.

    The workers' Prometheus metrics go to a shared folder (prometheus_client's multiprocess mode), so /metrics
    answers for the whole server whichever worker takes the scrape.
    """
    from prometheus_client import multiprocess

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    own_metrics_dir = "PROMETHEUS_MULTIPROC_DIR" not in os.environ
    if own_metrics_dir:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="xray-metrics-")
    context = multiprocessing.get_context("spawn")
    stopping = False

    def start(plan: WorkerPlan) -> multiprocessing.Process:
        process = context.Process(target=_run_worker, args=(sock, plan.env, host, port), name=f"xray-{plan.label}")
        process.start()
        log.info("worker started", extra={"worker": plan.label, "pid": process.pid})
        return process

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    processes = [start(plan) for plan in plans]
    started = [time.monotonic()] * len(plans)
    restarts = [0] * len(plans)
    restart_at: dict[int, float] = {}  # worker index -> when to start it again
    try:
        while not stopping:
            time.sleep(0.2)  # a signal cuts this short; nothing below blocks
            now = time.monotonic()
            for i, process in enumerate(processes):
                if stopping or process.is_alive():
                    continue
                if i not in restart_at:
                    restarts[i] = 1 if now - started[i] > STABLE_WORKER_S else restarts[i] + 1
                    multiprocess.mark_process_dead(process.pid)
                    delay = min(30.0, 0.5 * 2 ** min(restarts[i], 6))
                    restart_at[i] = now + delay
                    log.error(
                        "worker died; restarting",
                        extra={"worker": plans[i].label, "exitcode": process.exitcode, "in_s": delay},
                    )
                elif now >= restart_at[i]:
                    del restart_at[i]
                    processes[i], started[i] = start(plans[i]), now
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()  # uvicorn handles SIGTERM: stops accepting, finishes requests in flight
        for process in processes:
            process.join(timeout=35)
            if process.is_alive():
                process.kill()
        sock.close()
        if own_metrics_dir:
            shutil.rmtree(os.environ.pop("PROMETHEUS_MULTIPROC_DIR"), ignore_errors=True)
