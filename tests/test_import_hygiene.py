"""The serving path must never import torch (DESIGN.md: slower ONNX Runtime, a 5 GB serving image)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import PROJECT_ROOT

TORCH_FREE_MODULES = [
    "models",
    "models.labels",
    "models.imaging",
    "models.preprocessing",
    "models.phantoms",
    "service",
    "service.config",
    "service.cli",
    "models.registry",
    "service.app",
    "service.engine",
    "service.batching",
    "service.pipeline",
    "service.heatmaps",
    "service.serve",
]


def test_a_started_app_that_served_a_prediction_has_no_torch() -> None:
    """Lifespan + a real prediction: sys.modules of that process holds no torch (the server test checks the maps)."""
    code = (
        "import io, sys, numpy as np\n"
        "from PIL import Image\n"
        "from fastapi.testclient import TestClient\n"
        "from service.app import create_app\n"
        "from service.config import Settings\n"
        "buf = io.BytesIO(); Image.fromarray(np.full((64, 64), 128, np.uint8)).save(buf, format='PNG')\n"
        "with TestClient(create_app(Settings(intra_op_threads=1, log_level='ERROR'))) as c:\n"
        "    r = c.post('/v1/predict?heatmaps=true', content=buf.getvalue(), headers={'content-type': 'image/png'})\n"
        "    assert r.status_code == 200, r.text\n"
        "print(','.join(sorted(m for m in ('torch', 'torchvision', 'training') if m in sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "", f"serving pulled in {result.stdout.strip()}"


@pytest.mark.parametrize("module", TORCH_FREE_MODULES)
def test_module_does_not_import_torch(module: str) -> None:
    code = (
        "import importlib, sys\n"
        f"importlib.import_module({module!r})\n"
        "heavy = sorted(m for m in ('torch', 'torchvision', 'training') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"importing {module} pulled in {result.stdout.strip()}"
