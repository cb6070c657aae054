"""Sessions: providers confirmed after creation, warm-up checks shapes, precision choice per device."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from models.registry import Registry
from service import engine
from service.engine import CPU, CUDA, TENSORRT, EngineError, open_session, requested_providers
from service.pipeline import _load_session
from tests.service.conftest import SHIPPED_REGISTRY, service_settings

MODEL_SET = Registry(SHIPPED_REGISTRY).model_set("production")


def test_requested_providers_are_limited_to_this_build(monkeypatch) -> None:
    assert requested_providers("cpu") == [CPU]
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CPU])
    assert requested_providers("auto") == [CPU]
    assert requested_providers("tensorrt") == [CPU]
    monkeypatch.setattr(ort, "get_available_providers", lambda: [TENSORRT, CUDA, CPU])
    assert requested_providers("auto") == [CUDA, CPU]
    assert requested_providers("tensorrt") == [TENSORRT, CUDA, CPU]
    with pytest.raises(EngineError, match="expected providers"):
        requested_providers("tpu")


def test_a_build_that_claims_cuda_without_a_gpu_is_caught_by_get_providers(monkeypatch, caplog) -> None:
    """onnxruntime-gpu on a CPU machine lists CUDA as available; the session then runs on the CPU."""
    real = ort.get_available_providers
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, *real()])
    session = open_session(MODEL_SET.classifier, providers="auto", intra_op_threads=1)
    assert session.providers[0] == CPU and session.device == "cpu"
    # and under precision=auto the pipeline then prefers the int8 variant, the better CPU model
    chosen = _load_session(MODEL_SET.classifier, MODEL_SET.classifier_int8, service_settings(providers="auto"))
    assert chosen.model.name == MODEL_SET.classifier_int8.name and chosen.warm


def test_precision_settings(monkeypatch) -> None:
    fp32 = _load_session(MODEL_SET.classifier, MODEL_SET.classifier_int8, service_settings(precision="fp32"))
    assert fp32.model.manifest.precision == "fp32"
    int8 = _load_session(MODEL_SET.classifier, MODEL_SET.classifier_int8, service_settings(precision="int8"))
    assert int8.model.manifest.precision == "int8"
    with pytest.raises(FileNotFoundError, match="no int8 variant"):
        _load_session(MODEL_SET.classifier, None, service_settings(precision="int8"))


def test_warm_up_runs_a_zero_image_and_checks_the_manifest_shapes() -> None:
    session = open_session(MODEL_SET.classifier, providers="cpu", intra_op_threads=1)
    session.warm_up()
    assert session.warm and session.warmup_seconds > 0
    outputs = session.run(np.zeros((3, 1, session.input_size, session.input_size), dtype=np.float32))
    assert outputs["probabilities"].shape == (3, len(MODEL_SET.classifier.manifest.labels))


def test_warm_up_refuses_a_model_whose_outputs_disagree_with_its_manifest() -> None:
    session = open_session(MODEL_SET.classifier, providers="cpu", intra_op_threads=1)
    wrong = MODEL_SET.classifier.manifest.model_copy(deep=True)
    wrong.outputs[0].shape = ["N", 99]
    session.model = type(MODEL_SET.classifier)(
        name=session.model.name, version=session.model.version, manifest=wrong, path=session.model.path
    )
    with pytest.raises(EngineError, match="manifest says"):
        session.warm_up()


def test_an_unloadable_file_is_an_engine_error(tmp_path) -> None:
    broken = tmp_path / "model.onnx"
    broken.write_bytes(b"not onnx")
    model = type(MODEL_SET.classifier)(name="x", version=1, manifest=MODEL_SET.classifier.manifest, path=broken)
    with pytest.raises(EngineError, match="could not load"):
        engine.open_session(model, providers="cpu")
