"""The job store's tables (SQLAlchemy Core). Alembic's revisions in service/jobs/migrations create them; this module
is what the code reads and writes through, and a test checks that the migrated schema matches it."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC on the way out of either database (SQLite hands back naive datetimes)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError(f"expected a timezone-aware datetime, got naive {value!r}")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled")
ITEM_STATES = ("queued", "running", "succeeded", "failed", "skipped")  # failed = a per-item problem, e.g. not an image

metadata = MetaData()

jobs = Table(
    "jobs",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("state", String(16), nullable=False),
    Column("owner", String(64), nullable=False),  # the API key's id (sha256 prefix), or "anonymous"
    Column("source_kind", String(16), nullable=False),  # zip | folder | paths
    Column("source", Text, nullable=False),  # the zip's file name, the folder, or "N paths"
    Column("alias", String(64), nullable=False),  # the registry alias the job is scored with
    Column("models", JSON, nullable=False),  # the models serving that alias when the job was submitted
    Column("total", Integer, nullable=False),
    Column("succeeded", Integer, nullable=False, default=0),
    Column("failed", Integer, nullable=False, default=0),
    Column("skipped", Integer, nullable=False, default=0),
    Column("workdir", Text),  # where an uploaded zip was unpacked (removed when the job is deleted)
    Column("error", Text),
    Column("created_at", UTCDateTime, nullable=False),
    Column("started_at", UTCDateTime),
    Column("finished_at", UTCDateTime),
    Index("ix_jobs_owner_created", "owner", "created_at"),
    Index("ix_jobs_state", "state"),
)

items = Table(
    "items",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("job_id", String(32), ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("position", Integer, nullable=False),  # order within the job, as the source listed it
    Column("reference", Text, nullable=False),  # what the user sees: a zip entry name or a server-side path
    Column("path", Text, nullable=False),  # the file the runner reads
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),  # claims so far; a runner that died leaves one behind
    Column("runner", String(64)),  # the runner holding the item now, or the one that scored it
    Column("claim_token", String(32)),  # only the holder of the current claim may write the result
    Column("lease_expires_at", UTCDateTime),
    Column("result", JSON),  # the prediction, as /v1/predict answers it (request id aside)
    Column("problem", JSON),  # or the problem (code, detail) that stopped this item
    Column("finished_at", UTCDateTime),
    Index("ix_items_job_state", "job_id", "state"),
    Index("ix_items_job_position", "job_id", "position"),
    Index("ix_items_state_lease", "state", "lease_expires_at"),
)

runners = Table(
    "runners",
    metadata,
    Column("id", String(64), primary_key=True),  # host:pid:random
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("engine", String(16), nullable=False),  # embedded | ray
    Column("started_at", UTCDateTime, nullable=False),
    Column("heartbeat_at", UTCDateTime, nullable=False),
)

# Append-only (the migration adds triggers refusing UPDATE and DELETE): one row per prediction and per job action.
# Never the key, never a UID or a patient field: the key's id, and the SOP Instance UID as a sha256 prefix.
audit = Table(
    "audit",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("at", UTCDateTime, nullable=False),
    Column("key_id", String(64), nullable=False),  # "key-<sha256 prefix>" or "anonymous"
    Column("action", String(32), nullable=False),  # predict | predict.view | predict.heatmap | job.submit | ...
    Column("endpoint", String(128), nullable=False),  # "POST /v1/predict"
    Column("status", Integer, nullable=False),  # the HTTP status answered
    Column("problem", String(64)),  # the problem's code when the status is not 2xx
    Column("request_id", String(64), nullable=False),
    Column("job_id", String(32)),
    Column("models", JSON),  # by role: name, version, sha256
    Column("sop_uid_hash", String(16)),
    Column("verdicts", JSON),  # reliability, outlier verdict, abnormal positive, positive labels; or job counts
    Index("ix_audit_at", "at"),
    Index("ix_audit_key_at", "key_id", "at"),
)


def utcnow() -> datetime:
    return datetime.now(UTC)
