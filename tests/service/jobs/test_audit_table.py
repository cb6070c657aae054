"""The audit table is append-only in the database itself: UPDATE and DELETE are refused by triggers (both backends)."""

from __future__ import annotations

import pytest
from sqlalchemy import delete, select, update
from sqlalchemy.exc import DBAPIError

from service.jobs.store import make_engine, migrate, writing
from service.jobs.tables import audit, utcnow


def test_audit_rows_can_be_added_but_not_changed_or_removed(database_url: str) -> None:
    engine = make_engine(database_url)
    migrate(engine)
    row = {"at": utcnow(), "key_id": "key-x", "action": "predict", "endpoint": "POST /v1/predict", "status": 200}
    with writing(engine) as connection:
        connection.execute(audit.insert(), [{**row, "request_id": "r1"}, {**row, "request_id": "r2"}])
    for statement in (update(audit).values(status=500), delete(audit)):
        with pytest.raises(DBAPIError, match="append-only"), writing(engine) as connection:
            connection.execute(statement)
    with engine.connect() as connection:
        assert [r.status for r in connection.execute(select(audit.c.status))] == [200, 200]
    engine.dispose()
