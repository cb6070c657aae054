"""`xray serve`: uvicorn workers. One process per GPU (each sees only its own through CUDA_VISIBLE_DEVICES), else
N CPU processes sharing one listening socket, each with its own share of the cores for ONNX Runtime.

The parent binds the socket, spawns the workers and restarts any that die; SIGINT/SIGTERM stop them all.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field

from service.config import Settings

log = logging.getLogger("service.serve")
APP_FACTORY = "service.app:app_factory"


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
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=30,
        log_level=settings.log_level.lower(),
    )


def _run_worker(sock: socket.socket, env: dict[str, str], host: str, port: int) -> None:
    os.environ.update(env)  # before onnxruntime loads, so CUDA_VISIBLE_DEVICES takes effect
    import uvicorn

    from service.config import get_settings

    get_settings.cache_clear()
    uvicorn.Server(_uvicorn_config(host, port, get_settings())).run(sockets=[sock])


def serve(settings: Settings, host: str, port: int, workers: int) -> None:
    gpus = detect_gpus(settings.gpus)
    plans = plan_workers(settings, workers, gpus)
    if gpus and workers not in (1, len(gpus)):
        log.warning("one worker per GPU", extra={"gpus": gpus, "workers_asked": workers})
    if len(plans) == 1:
        import uvicorn

        os.environ.update(plans[0].env)
        from service.config import get_settings

        get_settings.cache_clear()
        uvicorn.Server(_uvicorn_config(host, port, settings)).run()
        return
    _supervise(plans, host, port)


def _supervise(plans: list[WorkerPlan], host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
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
    restarts = [0] * len(plans)
    try:
        while not stopping:
            time.sleep(0.5)
            for i, process in enumerate(processes):
                if not process.is_alive() and not stopping:
                    restarts[i] += 1
                    log.error(
                        "worker died; restarting",
                        extra={"worker": plans[i].label, "exitcode": process.exitcode, "restarts": restarts[i]},
                    )
                    time.sleep(min(30.0, 0.5 * 2 ** min(restarts[i], 6)))
                    processes[i] = start(plans[i])
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()  # uvicorn handles SIGTERM: stops accepting, finishes requests in flight
        for process in processes:
            process.join(timeout=35)
            if process.is_alive():
                process.kill()
        sock.close()
