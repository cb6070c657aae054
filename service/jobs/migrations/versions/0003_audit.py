"""audit: an append-only record per prediction and per job action; triggers refuse UPDATE and DELETE.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from service.jobs.tables import UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

REFUSAL = "audit rows are append-only"


def upgrade() -> None:
    op.create_table(
        "audit",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("at", UTCDateTime, nullable=False),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("endpoint", sa.String(128), nullable=False),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("problem", sa.String(64)),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("job_id", sa.String(32)),
        sa.Column("models", sa.JSON),
        sa.Column("sop_uid_hash", sa.String(16)),
        sa.Column("verdicts", sa.JSON),
    )
    op.create_index("ix_audit_at", "audit", ["at"])
    op.create_index("ix_audit_key_at", "audit", ["key_id", "at"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            f"CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN RAISE EXCEPTION '{REFUSAL}'; END $$"
        )
        op.execute(
            "CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit "
            "FOR EACH ROW EXECUTE FUNCTION audit_append_only()"
        )
    else:
        for event in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER audit_no_{event.lower()} BEFORE {event} ON audit "
                f"BEGIN SELECT RAISE(ABORT, '{REFUSAL}'); END"
            )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER audit_append_only ON audit")
        op.execute("DROP FUNCTION audit_append_only()")
    op.drop_table("audit")
