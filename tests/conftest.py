"""Shared test fixtures: where the real data lives, and a clear skip when it is absent."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"
SHARED_DATA_REASON = (
    f"real-data test: {SHARED_DATA} is absent (it exists in CI and on the team's machines, not in a user's clone)"
)


def require_shared(*parts: str) -> Path:
    """Path under ../shared/data, or skip the calling test with a reason that says what is missing."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{SHARED_DATA_REASON}; missing {path}")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return require_shared()


# an absolute POSIX path inside a string: what a registry file must never carry (a machine's folders)
ABSOLUTE_PATH = re.compile(r"(?<![\w.~/-])/(?:[^/\s:'\"]+/)+[^/\s:'\"]+")


def onnx_strings(path) -> list[str]:
    """Every free-text string an ONNX file carries: model/graph metadata, node doc strings and metadata."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    texts = [entry.value for entry in (*model.metadata_props, *model.graph.metadata_props)]
    for graph in (model.graph, *model.functions):
        for node in graph.node:
            texts += [node.doc_string, *(entry.value for entry in node.metadata_props)]
    return texts
