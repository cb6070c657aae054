"""Import hygiene: dependencies run one way, and the serving path never imports torch.

Direction (DESIGN.md): `models/` (shared core) <- `service/`, `training/` <- `xray/` (the command line). Checked on
the source with `ast`, so an import inside a function, `importlib.import_module("training.x")`, `__import__` and a
module path written as a string all count, not only what happens to be imported at start-up.
Torch: ONNX Runtime runs slower in a process that has imported torch, and a serving image should not carry 5 GB of
CUDA torch; checked in a fresh subprocess per module.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT

FORBIDDEN = {
    "models": ("service", "training", "xray"),
    "service": ("training", "xray"),
    "training": ("service", "xray"),
}
_MODULE_PATH = re.compile(r"^([A-Za-z_]\w*)(\.[A-Za-z_]\w*)*(:[A-Za-z_]\w*)?$")


def _top(module: str) -> str:
    return module.split(".")[0].split(":")[0]


def _names_a_project_module(text: str) -> bool:
    """'training.export' names a module of this project; 'xray.kind' (an ONNX metadata key) does not."""
    path = PROJECT_ROOT.joinpath(*text.split(":")[0].split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imported_modules(source: str) -> list[tuple[int, str]]:
    """(line, module) of every import in `source`: statements, importlib/__import__ calls, and 'pkg.mod' strings."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "." in node.value:
            if _MODULE_PATH.match(node.value) and _names_a_project_module(node.value):  # "service.app:create_app"
                found.append((node.lineno, node.value))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value))
    return sorted(set(found))


def forbidden_imports(package: Path, forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{path.relative_to(package.parent)}:{line} imports {module}"
        for path in sorted(package.rglob("*.py"))
        for line, module in imported_modules(path.read_text(encoding="utf-8"))
        if _top(module) in forbidden
    ]


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_dependencies_run_one_way(package: str) -> None:
    offenders = forbidden_imports(PROJECT_ROOT / package, FORBIDDEN[package])
    assert offenders == [], f"{package}/ must not import {FORBIDDEN[package]}: {offenders}"


def test_the_direction_check_sees_every_kind_of_import(tmp_path: Path) -> None:
    (tmp_path / "planted.py").write_text(
        "import importlib\n"
        "from training import export\n"
        "def later():\n"
        "    import training.evaluate\n"
        "    importlib.import_module('training.add_label')\n"
        "    __import__('training')\n"
        "    return 'training.train_classifier'\n"
        "from models.registry import Registry\n"
    )
    offenders = forbidden_imports(tmp_path, ("training",))
    assert [entry.rsplit(" ", 1)[-1] for entry in offenders] == [
        "training",
        "training.evaluate",
        "training.add_label",
        "training",
        "training.train_classifier",
    ]


# -------------------------------------------------------------------------------------------------------- torch

SERVING_MODULES = [  # neither torch nor anything of training/
    "models",
    "models.labels",
    "models.imaging",
    "models.preprocessing",
    "models.phantoms",
    "models.registry",
    "models.onnx_runtime",
    "models.settings",
    "service",
    "service.config",
    "service.commands",
    "service.app",
    "service.engine",
    "service.batching",
    "service.pipeline",
    "service.heatmaps",
    "service.serve",
]
COMMAND_MODULES = ["xray.cli", "training.commands"]  # the command line: torch only when a training command runs


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


def _heavy_after_import(module: str, heavy: tuple[str, ...]) -> str:
    code = (
        "import importlib, sys\n"
        f"importlib.import_module({module!r})\n"
        f"print(','.join(sorted(m for m in {heavy!r} if m in sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.mark.parametrize("module", SERVING_MODULES)
def test_serving_module_does_not_import_torch(module: str) -> None:
    pulled = _heavy_after_import(module, ("torch", "torchvision", "training"))
    assert pulled == "", f"importing {module} pulled in {pulled}"


@pytest.mark.parametrize("module", COMMAND_MODULES)
def test_command_line_does_not_import_torch_until_a_training_command_runs(module: str) -> None:
    pulled = _heavy_after_import(module, ("torch", "torchvision"))
    assert pulled == "", f"importing {module} pulled in {pulled}"
