"""ONNX Runtime sessions for registry models: provider choice confirmed after creation, thread counts, warm-up.

`onnxruntime-gpu` lists CUDA among `get_available_providers()` even on a machine without a GPU, so the provider a
session really uses is read from `session.get_providers()` after it is created, never assumed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort

from models.onnx_runtime import session_options
from models.registry import ResolvedModel

log = logging.getLogger("service.engine")

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
_WANTED = {"cpu": [CPU], "auto": [CUDA, CPU], "cuda": [CUDA, CPU], "tensorrt": [TENSORRT, CUDA, CPU]}


class EngineError(RuntimeError):
    pass


def requested_providers(choice: str) -> list[str]:
    """The providers to ask for, in order, limited to what this onnxruntime build has."""
    if choice not in _WANTED:
        raise EngineError(f"expected providers in {sorted(_WANTED)}, got {choice!r}")
    available = set(ort.get_available_providers())
    return [p for p in _WANTED[choice] if p in available] or [CPU]


@dataclass
class ModelSession:
    """One model's ONNX Runtime session plus what the pipeline needs from its manifest."""

    model: ResolvedModel
    session: ort.InferenceSession
    providers: list[str]  # as confirmed by the session, first = the one that runs the graph
    input_name: str
    output_names: list[str]
    load_seconds: float
    warm: bool = False
    warmup_seconds: float = field(default=0.0)

    @property
    def device(self) -> str:
        return {CUDA: "cuda", TENSORRT: "tensorrt"}.get(self.providers[0], "cpu")

    @property
    def input_size(self) -> int:
        return int(self.model.manifest.preprocess["size"])

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """(N, 1, S, S) float32 -> {output name: array with leading N}."""
        outputs = self.session.run(self.output_names, {self.input_name: batch})
        return dict(zip(self.output_names, outputs, strict=True))

    def warm_up(self) -> None:
        """Run a real zero image through the session and check every output's shape against the manifest."""
        start = time.perf_counter()
        size = self.input_size
        outputs = self.run(np.zeros((1, 1, size, size), dtype=np.float32))
        for spec in self.model.manifest.outputs:
            got = outputs[spec.name].shape
            expected = tuple(1 if isinstance(d, str) else d for d in spec.shape)
            if got != expected:
                raise EngineError(f"{self.model.ref}: output {spec.name} has shape {got}, manifest says {expected}")
            if not np.isfinite(outputs[spec.name]).all():
                raise EngineError(f"{self.model.ref}: output {spec.name} is not finite on a zero image")
        self.warmup_seconds = time.perf_counter() - start
        self.warm = True

    def describe(self) -> dict:
        manifest = self.model.manifest
        return {
            "name": self.model.name,
            "version": self.model.version,
            "alias": self.model.alias,
            "kind": manifest.kind,
            "precision": manifest.precision,
            "sha256": manifest.onnx_sha256,
            "labels": manifest.labels,
            "input_size": self.input_size,
            "providers": self.providers,
            "device": self.device,
            "warm": self.warm,
        }


def _preload_cuda_libraries() -> None:
    """onnxruntime-gpu >= 1.21 can load CUDA/cuDNN from the nvidia-* pip packages; harmless when absent."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return
    try:
        preload()
    except Exception as error:  # noqa: BLE001 - the session's get_providers() tells the truth either way
        log.warning("could not preload CUDA libraries", extra={"error": str(error)})


def open_session(
    model: ResolvedModel,
    *,
    providers: str = "auto",
    intra_op_threads: int = 0,
    inter_op_threads: int = 1,
    spin: bool = False,
) -> ModelSession:
    options = session_options(intra_op_threads=intra_op_threads, inter_op_threads=inter_op_threads, spin=spin)
    wanted = requested_providers(providers)
    if wanted[0] != CPU:
        _preload_cuda_libraries()
    start = time.perf_counter()
    try:
        session = ort.InferenceSession(str(model.path), sess_options=options, providers=wanted)
    except Exception as error:  # noqa: BLE001 - ORT raises its own Fail/InvalidGraph types
        raise EngineError(f"{model.ref}: ONNX Runtime could not load {model.path}: {error}") from error
    confirmed = session.get_providers()
    if wanted[0] != CPU and confirmed[0] != wanted[0]:
        log.warning(
            "execution provider fell back",
            extra={"model": model.ref, "requested": wanted, "confirmed": confirmed},
        )
    manifest_input = model.manifest.inputs[0].name
    names = [i.name for i in session.get_inputs()]
    if manifest_input not in names:
        raise EngineError(f"{model.ref}: the ONNX graph has inputs {names}, the manifest names {manifest_input!r}")
    return ModelSession(
        model=model,
        session=session,
        providers=confirmed,
        input_name=manifest_input,
        output_names=[o.name for o in model.manifest.outputs],
        load_seconds=time.perf_counter() - start,
    )
