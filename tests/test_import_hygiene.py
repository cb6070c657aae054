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
    "service.registry",
]


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
