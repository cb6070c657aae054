"""Service fixtures: an app on the shipped registry (or a copy), and images that need no shared data."""

from __future__ import annotations

import io
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from models.phantoms import make_phantom
from models.registry import Registry
from service.app import create_app
from service.config import Settings
from tests.conftest import PROJECT_ROOT

SHIPPED_REGISTRY = PROJECT_ROOT / "registry"


def service_settings(**overrides) -> Settings:
    values = {
        "registry_dir": SHIPPED_REGISTRY,
        "intra_op_threads": 1,
        "decode_threads": 2,
        "max_batch_delay_ms": 2.0,
        "log_json": True,
        "api_keys": [],
        "data_dir": Path(tempfile.mkdtemp(prefix="xray-test-data-")),  # the job store, never the project's var/
    }
    values.update(overrides)
    return Settings(**values)


def png_bytes(pixels: np.ndarray, mode: str = "L") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


def phantom_png(seed: int = 0, size: int = 256, findings: tuple[str, ...] = ()) -> bytes:
    phantom = make_phantom(np.random.default_rng(seed), size=size, findings=findings)
    return png_bytes((np.clip(phantom.pixels, 0, 1) * 255).round().astype(np.uint8))


def copy_registry(target: Path) -> Registry:
    shutil.copytree(SHIPPED_REGISTRY, target)
    return Registry(target)


def add_classifier_version(registry: Registry, tmp_dir: Path, *, scale: float = 0.5, cam: bool = True) -> int:
    """Register a changed copy of the shipped classifier as a new version (a stand-in for a retrained model): its
    probabilities multiplied by `scale` inside the graph, so its outputs differ from the shipped ones; `cam=False`
    also drops the class-activation-map output (a model exported without CAMs)."""
    import onnx
    from onnx import TensorProto, helper

    current = registry.resolve("chest-classifier")
    model = onnx.load(str(current.path))
    graph = model.graph
    producer = next(node for node in graph.node if "probabilities" in node.output)
    producer.output[list(producer.output).index("probabilities")] = "unscaled_probabilities"
    graph.initializer.append(helper.make_tensor("probability_scale", TensorProto.FLOAT, [], [scale]))
    graph.node.append(helper.make_node("Mul", ["unscaled_probabilities", "probability_scale"], ["probabilities"]))
    fields = current.manifest.model_dump(exclude={"name", "version", "onnx_sha256", "onnx_bytes", "created_at"})
    if not cam:
        kept = [output for output in graph.output if output.name != "cam"]
        del graph.output[:]
        graph.output.extend(kept)
        fields["cam"] = None
        fields["outputs"] = [output for output in fields["outputs"] if output["name"] != "cam"]
    path = tmp_dir / f"classifier-x{scale}{'' if cam else '-no-cam'}.onnx"
    onnx.save_model(model, str(path))
    return registry.add_version("chest-classifier", path, fields).version


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(create_app(service_settings())) as test_client:
        yield test_client
