"""Job store fixtures: a fresh database per test on SQLite (a file) and on PostgreSQL (its own schema in the
`test` database on 127.0.0.1:5432, dropped afterwards; tests skip with the reason when that server is absent)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

POSTGRES_BASE = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def _postgres_reason() -> str | None:
    import psycopg

    try:
        psycopg.connect("host=127.0.0.1 port=5432 dbname=test user=postgres", connect_timeout=3).close()
    except psycopg.Error as error:
        return f"PostgreSQL at 127.0.0.1:5432 (database test) is not reachable: {error}"
    return None


@pytest.fixture(scope="session")
def postgres_available() -> None:
    reason = _postgres_reason()
    if reason:
        pytest.skip(reason)


@pytest.fixture
def postgres_url(postgres_available) -> Iterator[str]:
    """A URL whose search_path is a new schema; everything the test creates lives there and is dropped after."""
    import psycopg

    schema = f"xray_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect("host=127.0.0.1 port=5432 dbname=test user=postgres", autocommit=True) as connection:
        connection.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{POSTGRES_BASE}?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect("host=127.0.0.1 port=5432 dbname=test user=postgres", autocommit=True) as connection:
            connection.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs.sqlite'}"
    return request.getfixturevalue("postgres_url")
