"""`xray serve` planning: one worker per GPU with its own CUDA_VISIBLE_DEVICES, else N CPU workers."""

from __future__ import annotations

import subprocess

from service import serve
from service.serve import detect_gpus, plan_workers
from tests.service.conftest import service_settings


def test_gpu_detection_sources(monkeypatch) -> None:
    assert detect_gpus("none") == []
    assert detect_gpus("0, 2") == ["0", "2"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,3")
    assert detect_gpus("auto") == ["1", "3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert detect_gpus("auto") == []
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")

    def fake_smi(*args, **kwargs):
        return subprocess.CompletedProcess(args, 0, stdout="0\n1\n", stderr="")

    monkeypatch.setattr(serve.subprocess, "run", fake_smi)
    assert detect_gpus("auto") == ["0", "1"]

    def no_smi(*args, **kwargs):
        raise FileNotFoundError("nvidia-smi")

    monkeypatch.setattr(serve.subprocess, "run", no_smi)
    assert detect_gpus("auto") == []


def test_one_process_per_gpu_each_seeing_only_its_own() -> None:
    plans = plan_workers(service_settings(), workers=4, gpus=["0", "1"])
    assert [plan.env for plan in plans] == [{"CUDA_VISIBLE_DEVICES": "0"}, {"CUDA_VISIBLE_DEVICES": "1"}]


def test_cpu_workers_split_the_cores() -> None:
    plans = plan_workers(service_settings(intra_op_threads=0), workers=4, gpus=[], cpu_count=16)
    assert len(plans) == 4
    assert all(plan.env == {"XRAY_INTRA_OP_THREADS": "4", "XRAY_PROVIDERS": "cpu"} for plan in plans)
    one = plan_workers(service_settings(intra_op_threads=0), workers=8, gpus=[], cpu_count=2)
    assert one[0].env["XRAY_INTRA_OP_THREADS"] == "1"
    explicit = plan_workers(service_settings(intra_op_threads=3), workers=2, gpus=[], cpu_count=16)
    assert explicit[0].env["XRAY_INTRA_OP_THREADS"] == "3"


def test_blas_threads_are_capped_unless_the_environment_says_otherwise(monkeypatch) -> None:
    for name in serve.BLAS_THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    serve.limit_blas_threads(1)
    import os

    assert os.environ["OPENBLAS_NUM_THREADS"] == "1" and os.environ["MKL_NUM_THREADS"] == "1"
    assert os.environ["OMP_NUM_THREADS"] == "4"


def test_worker_environment_keeps_explicit_settings_but_always_pins_the_gpu(monkeypatch) -> None:
    import os

    monkeypatch.setenv("XRAY_PROVIDERS", "cuda")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    monkeypatch.delenv("XRAY_INTRA_OP_THREADS", raising=False)
    serve._apply_worker_env({"XRAY_PROVIDERS": "cpu", "XRAY_INTRA_OP_THREADS": "4", "CUDA_VISIBLE_DEVICES": "1"})
    assert os.environ["XRAY_PROVIDERS"] == "cuda"  # the operator's explicit choice
    assert os.environ["XRAY_INTRA_OP_THREADS"] == "4"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "1"
