"""GPU execution providers, where a GPU and onnxruntime-gpu really exist (skipped elsewhere, e.g. in CI).

The check that matters is the one the engine makes: after creating the session, `get_providers()` names CUDA.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from models.registry import Registry
from service.engine import CUDA, TENSORRT, open_session
from service.pipeline import _load_session
from tests.service.conftest import SHIPPED_REGISTRY, service_settings

MODEL_SET = Registry(SHIPPED_REGISTRY).model_set("production")


def _cuda_session_or_skip():
    if CUDA not in ort.get_available_providers():
        pytest.skip(f"this onnxruntime build has no CUDA provider ({ort.get_available_providers()})")
    session = open_session(MODEL_SET.classifier, providers="cuda")
    if session.providers[0] != CUDA:
        pytest.skip(f"the CUDA provider is listed but a session fell back to {session.providers} (no usable GPU)")
    return session


def test_cuda_session_is_confirmed_and_matches_the_cpu() -> None:
    gpu = _cuda_session_or_skip()
    cpu = open_session(MODEL_SET.classifier, providers="cpu")
    x = np.random.default_rng(0).normal(size=(8, 1, gpu.input_size, gpu.input_size)).astype(np.float32)
    on_gpu, on_cpu = gpu.run(x), cpu.run(x)
    for name in on_cpu:
        np.testing.assert_allclose(on_gpu[name], on_cpu[name], atol=1e-3, rtol=1e-3)
    assert gpu.device == "cuda"


def test_on_a_gpu_auto_precision_serves_fp32() -> None:
    _cuda_session_or_skip()
    session = _load_session(MODEL_SET.classifier, MODEL_SET.classifier_int8, service_settings(providers="auto"))
    assert session.providers[0] == CUDA and session.model.manifest.precision == "fp32"


def test_tensorrt_request_reports_what_really_runs() -> None:
    _cuda_session_or_skip()
    session = open_session(MODEL_SET.classifier, providers="tensorrt")
    # on a GPU, TensorRT runs when its libraries load, else CUDA: never a silent fall back to the CPU
    assert session.providers[0] in (TENSORRT, CUDA), session.providers
    assert session.device == {TENSORRT: "tensorrt", CUDA: "cuda"}[session.providers[0]]
