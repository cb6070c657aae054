"""Shared test fixtures: where the real data lives, and a clear skip when it is absent."""

from __future__ import annotations

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
