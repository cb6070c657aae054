"""The job store: jobs, their items and the runners scoring them, in SQLite (WAL, the embedded default) or PostgreSQL.

Exactly-once comes from three rules, the same on both databases:
- a claim marks items `running` with a fresh token and a lease, in one transaction (PostgreSQL: `FOR UPDATE SKIP
  LOCKED`, so concurrent runners never take the same rows; SQLite: the claim's `BEGIN IMMEDIATE` serialises them);
- a result is written only `WHERE claim_token = the claim's token AND state = 'running'`, so a runner whose lease
  expired (it stalled, another took the item over) cannot overwrite or double-count;
- a runner's heartbeat extends the leases of the items it holds; when it dies they expire and go back to the queue,
  and an item that was being scored while its runner died `max_attempts` times is marked failed instead.
Every method is synchronous (call it from a thread in async code) and commits its own transaction.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    and_,
    bindparam,
    create_engine,
    event,
    exists,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from service.jobs.tables import items, jobs, metadata, runners, utcnow

log = logging.getLogger("service.jobs.store")
MIGRATIONS = Path(__file__).with_name("migrations")
OPEN_ITEM_STATES = ("queued", "running")
ACTIVE_JOB_STATES = ("queued", "running")
WRITE_OPTION = "xray_write"  # a transaction that will write (SQLite: BEGIN IMMEDIATE)
_MIGRATION_LOCK_ID = 0x78726179  # "xray": one process migrates a PostgreSQL database at a time


class JobNotFoundError(LookupError):
    pass


class StoreConfigError(ValueError):
    pass


@dataclass(frozen=True)
class NewItem:
    reference: str
    path: str


@dataclass(frozen=True)
class ClaimedItem:
    id: int
    job_id: str
    reference: str
    path: str
    token: str
    attempts: int


@dataclass(frozen=True)
class Outcome:
    """What scoring one claimed item produced: a result, or a problem (code, detail) for that item alone."""

    item_id: int
    token: str
    result: dict[str, Any] | None = None
    problem: dict[str, Any] | None = None


def make_engine(url: str) -> Engine:
    """SQLite: WAL, a busy timeout and BEGIN IMMEDIATE transactions (writers queue instead of failing with 'database
    is locked'); PostgreSQL through psycopg 3. Other databases are refused by name."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 60, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection, _record) -> None:
            dbapi_connection.isolation_level = None  # transactions are begun below, not by the driver
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(connection: Connection) -> None:
            # writers take the lock up front (IMMEDIATE) and queue on the busy timeout; readers read a WAL snapshot
            # without blocking anyone (a deferred BEGIN)
            immediate = connection.get_execution_options().get(WRITE_OPTION, False)
            connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine
    if parsed.get_backend_name() == "postgresql":
        if parsed.get_driver_name() != "psycopg":
            raise StoreConfigError(f"expected a postgresql+psycopg:// URL (psycopg 3), got driver {parsed.drivername}")
        return create_engine(url, pool_pre_ping=True, pool_size=4, max_overflow=4)
    raise StoreConfigError(f"expected a sqlite:/// or postgresql+psycopg:// database URL, got {parsed.drivername}://")


@contextmanager
def writing(engine: Engine) -> Iterator[Connection]:
    """A transaction that writes: committed on leaving, rolled back on an error."""
    with engine.connect() as connection:
        connection.execution_options(**{WRITE_OPTION: True})
        with connection.begin():
            yield connection


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to `revision` with Alembic (concurrent starters on PostgreSQL wait on an advisory lock)."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with writing(engine) as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _MIGRATION_LOCK_ID})
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def schema_revision(engine: Engine) -> str | None:
    from alembic.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def new_runner_id() -> str:
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class JobStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @classmethod
    def open(cls, url: str) -> JobStore:
        engine = make_engine(url)
        migrate(engine)
        return cls(engine)

    def close(self) -> None:
        self.engine.dispose()

    # -- jobs ---------------------------------------------------------------------------------------------------
    def create_job(
        self,
        *,
        owner: str,
        source_kind: str,
        source: str,
        alias: str,
        models: dict[str, Any],
        new_items: Sequence[NewItem],
        workdir: str | None = None,
    ) -> str:
        job_id = uuid.uuid4().hex
        now = utcnow()
        with writing(self.engine) as connection:
            connection.execute(
                jobs.insert().values(
                    id=job_id,
                    state="queued",
                    owner=owner,
                    source_kind=source_kind,
                    source=source,
                    alias=alias,
                    models=models,
                    total=len(new_items),
                    succeeded=0,
                    failed=0,
                    skipped=0,
                    workdir=workdir,
                    created_at=now,
                )
            )
            rows = [
                {"job_id": job_id, "position": i, "reference": item.reference, "path": item.path, "state": "queued"}
                for i, item in enumerate(new_items)
            ]
            for start in range(0, len(rows), 5000):
                connection.execute(items.insert().values(attempts=0), rows[start : start + 5000])
        return job_id

    def get_job(self, job_id: str) -> dict[str, Any]:
        with self.engine.connect() as connection:
            row = connection.execute(select(jobs).where(jobs.c.id == job_id)).mappings().first()
        if row is None:
            raise JobNotFoundError(job_id)
        return dict(row)

    def list_jobs(self, owner: str | None, *, limit: int, offset: int) -> tuple[list[dict[str, Any]], int]:
        """Newest first; `owner=None` lists everyone's (admin)."""
        where = [] if owner is None else [jobs.c.owner == owner]
        with self.engine.connect() as connection:
            total = connection.execute(select(func.count()).select_from(jobs).where(*where)).scalar_one()
            rows = connection.execute(
                select(jobs).where(*where).order_by(jobs.c.created_at.desc(), jobs.c.id).limit(limit).offset(offset)
            ).mappings()
            return [dict(row) for row in rows], int(total)

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Queued items are skipped; items being scored finish and keep their results. Cancelling a finished job
        changes nothing."""
        now = utcnow()
        with writing(self.engine) as connection:
            changed = connection.execute(
                update(jobs)
                .where(jobs.c.id == job_id, jobs.c.state.in_(ACTIVE_JOB_STATES))
                .values(state="cancelled", finished_at=now)
            ).rowcount
            if changed:
                skipped = connection.execute(
                    update(items)
                    .where(items.c.job_id == job_id, items.c.state == "queued")
                    .values(state="skipped", finished_at=now)
                ).rowcount
                connection.execute(update(jobs).where(jobs.c.id == job_id).values(skipped=jobs.c.skipped + skipped))
        return self.get_job(job_id)

    def state_counts(self) -> tuple[dict[str, int], int]:
        """(jobs by state, items still open across all jobs): what /metrics reports."""
        with self.engine.connect() as connection:
            by_state = dict(connection.execute(select(jobs.c.state, func.count()).group_by(jobs.c.state)).all())
            open_items = connection.execute(
                select(func.count()).select_from(items).where(items.c.state.in_(OPEN_ITEM_STATES))
            ).scalar_one()
        return {state: int(count) for state, count in by_state.items()}, int(open_items)

    def get_item(self, job_id: str, position: int) -> dict[str, Any] | None:
        with self.engine.connect() as connection:
            row = (
                connection.execute(select(items).where(items.c.job_id == job_id, items.c.position == position))
                .mappings()
                .first()
            )
        return dict(row) if row is not None else None

    def item_counts(self, job_id: str) -> dict[str, int]:
        """Items by state, counted from the item rows themselves (the job row keeps running totals)."""
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(items.c.state, func.count()).where(items.c.job_id == job_id).group_by(items.c.state)
            )
            return {state: int(count) for state, count in rows}

    def iter_items(self, job_id: str, *, page: int = 500) -> Iterator[dict[str, Any]]:
        """Every item of a job in source order, read a page at a time (keyset on position)."""
        after = -1
        columns = (items.c.position, items.c.reference, items.c.state, items.c.attempts)
        columns += (items.c.result, items.c.problem)
        while True:
            with self.engine.connect() as connection:
                rows = [
                    dict(row)
                    for row in connection.execute(
                        select(*columns)
                        .where(items.c.job_id == job_id, items.c.position > after)
                        .order_by(items.c.position)
                        .limit(page)
                    ).mappings()
                ]
            yield from rows
            if len(rows) < page:
                return
            after = rows[-1]["position"]

    # -- runners ------------------------------------------------------------------------------------------------
    def register_runner(self, runner_id: str, engine_name: str) -> None:
        now = utcnow()
        host, pid = runner_id.split(":")[0], os.getpid()
        with writing(self.engine) as connection:
            connection.execute(
                runners.insert().values(
                    id=runner_id, host=host, pid=pid, engine=engine_name, started_at=now, heartbeat_at=now
                )
            )

    def heartbeat(self, runner_id: str, lease_s: float) -> int:
        """Mark the runner alive and extend the leases of the items it holds; returns how many it holds."""
        now = utcnow()
        with writing(self.engine) as connection:
            connection.execute(update(runners).where(runners.c.id == runner_id).values(heartbeat_at=now))
            return connection.execute(
                update(items)
                .where(items.c.runner == runner_id, items.c.state == "running")
                .values(lease_expires_at=now + timedelta(seconds=lease_s))
            ).rowcount

    def remove_runner(self, runner_id: str) -> None:
        with writing(self.engine) as connection:
            connection.execute(runners.delete().where(runners.c.id == runner_id))

    def live_runners(self, within_s: float) -> list[dict[str, Any]]:
        since = utcnow() - timedelta(seconds=within_s)
        with self.engine.connect() as connection:
            rows = connection.execute(select(runners).where(runners.c.heartbeat_at >= since)).mappings()
            return [dict(row) for row in rows]

    # -- claiming and completing ----------------------------------------------------------------------------------
    def claim(
        self, runner_id: str, *, alias: str, limit: int, lease_s: float, max_attempts: int, job_id: str | None = None
    ) -> list[ClaimedItem]:
        """Take up to `limit` items (oldest job first, in source order) of jobs scored with `alias`: queued items,
        and running items whose lease expired (their runner died). Expired items that already had `max_attempts`
        claims are failed here instead."""
        now = utcnow()
        token = uuid.uuid4().hex
        with writing(self.engine) as connection:
            self._retire_expired(connection, now, max_attempts)
            expired = and_(items.c.state == "running", items.c.lease_expires_at < now)
            query = (
                select(items.c.id, items.c.job_id, items.c.reference, items.c.path, items.c.attempts)
                .join(jobs, jobs.c.id == items.c.job_id)
                .where(
                    jobs.c.state.in_(ACTIVE_JOB_STATES),
                    jobs.c.alias == alias,
                    or_(items.c.state == "queued", expired),
                )
                .order_by(jobs.c.created_at, items.c.job_id, items.c.position)
                .limit(limit)
                .with_for_update(skip_locked=True, of=items)
            )
            if job_id is not None:
                query = query.where(items.c.job_id == job_id)
            rows = connection.execute(query).all()
            if not rows:
                return []
            ids = [row.id for row in rows]
            connection.execute(
                update(items)
                .where(items.c.id.in_(ids))
                .values(
                    state="running",
                    attempts=items.c.attempts + 1,
                    runner=runner_id,
                    claim_token=token,
                    lease_expires_at=now + timedelta(seconds=lease_s),
                )
            )
            job_ids = sorted({row.job_id for row in rows})
            connection.execute(
                update(jobs).where(jobs.c.id.in_(job_ids), jobs.c.state == "queued").values(state="running")
            )
            connection.execute(
                update(jobs).where(jobs.c.id.in_(job_ids), jobs.c.started_at.is_(None)).values(started_at=now)
            )
        return [ClaimedItem(r.id, r.job_id, r.reference, r.path, token, r.attempts + 1) for r in rows]

    def _retire_expired(self, connection: Connection, now: datetime, max_attempts: int) -> None:
        """Expired items that are not to be retried: failed (the item kept killing its runner) or, in a cancelled
        job, skipped."""
        expired = and_(items.c.state == "running", items.c.lease_expires_at < now)
        cancelled = select(jobs.c.id).where(jobs.c.state == "cancelled")
        rows = connection.execute(
            select(items.c.id, items.c.job_id, items.c.attempts, items.c.job_id.in_(cancelled).label("cancelled"))
            .where(expired, or_(items.c.attempts >= max_attempts, items.c.job_id.in_(cancelled)))
            .with_for_update(skip_locked=True)
        ).all()
        if not rows:
            return
        failed: Counter[str] = Counter()
        skipped: Counter[str] = Counter()
        for row in rows:
            if row.cancelled:
                values: dict[str, Any] = {"state": "skipped"}
                skipped[row.job_id] += 1
            else:
                values = {
                    "state": "failed",
                    "problem": {
                        "code": "runner_died",
                        "detail": f"the runner scoring this item stopped {row.attempts} times; it is not retried "
                        f"(XRAY_JOB_MAX_ATTEMPTS={max_attempts})",
                    },
                }
                failed[row.job_id] += 1
            connection.execute(
                update(items)
                .where(items.c.id == row.id)
                .values(claim_token=None, lease_expires_at=None, finished_at=now, **values)
            )
        for job_id in set(failed) | set(skipped):
            connection.execute(
                update(jobs)
                .where(jobs.c.id == job_id)
                .values(failed=jobs.c.failed + failed[job_id], skipped=jobs.c.skipped + skipped[job_id])
            )
        log.warning("retired items of dead runners", extra={"failed": sum(failed.values())})
        self._finish_jobs(connection, set(failed) | set(skipped), now)

    def complete(self, outcomes: Sequence[Outcome]) -> int:
        """Write a chunk's results in one transaction. An outcome whose claim is no longer current (the lease
        expired and another runner took the item) is dropped. Returns how many were written."""
        if not outcomes:
            return 0
        now = utcnow()
        wanted = {(outcome.item_id, outcome.token) for outcome in outcomes}
        with writing(self.engine) as connection:
            current = connection.execute(  # the rows are locked until the commit: no other claim can slip in
                select(items.c.id, items.c.claim_token, items.c.job_id)
                .where(items.c.id.in_([outcome.item_id for outcome in outcomes]), items.c.state == "running")
                .with_for_update()
            ).all()
            job_of = {row.id: row.job_id for row in current if (row.id, row.claim_token) in wanted}
            kept = [outcome for outcome in outcomes if outcome.item_id in job_of]
            if len(kept) < len(outcomes):
                log.warning(
                    "dropped results whose claim is no longer current", extra={"dropped": len(outcomes) - len(kept)}
                )
            if kept:
                connection.execute(
                    update(items)
                    .where(items.c.id == bindparam("item_id"))
                    .values(
                        state=bindparam("new_state"),
                        result=bindparam("new_result"),
                        problem=bindparam("new_problem"),
                        claim_token=None,
                        lease_expires_at=None,
                        finished_at=now,
                    ),
                    [
                        {
                            "item_id": outcome.item_id,
                            "new_state": "succeeded" if outcome.problem is None else "failed",
                            "new_result": outcome.result,
                            "new_problem": outcome.problem,
                        }
                        for outcome in kept
                    ],
                )
            succeeded = Counter(job_of[o.item_id] for o in kept if o.problem is None)
            failed = Counter(job_of[o.item_id] for o in kept if o.problem is not None)
            for job_id in set(succeeded) | set(failed):
                connection.execute(
                    update(jobs)
                    .where(jobs.c.id == job_id)
                    .values(succeeded=jobs.c.succeeded + succeeded[job_id], failed=jobs.c.failed + failed[job_id])
                )
        try:
            self.finish_jobs(set(job_of.values()))
        except DBAPIError as error:  # the results are committed; a runner's housekeeping finishes the job later
            log.warning("jobs not marked finished yet", extra={"error_type": type(error).__name__})
        return len(kept)

    def finish_jobs(self, job_ids: set[str] | None = None) -> None:
        """Mark running jobs without open items succeeded (all running jobs when `job_ids` is None). Its own
        transaction, after the results' commit, so two runners finishing the last chunks at once both see them."""
        with writing(self.engine) as connection:
            self._finish_jobs(connection, job_ids, utcnow())

    @staticmethod
    def _finish_jobs(connection: Connection, job_ids: set[str] | None, now: datetime) -> None:
        if job_ids is not None and not job_ids:
            return
        open_items = exists().where(items.c.job_id == jobs.c.id, items.c.state.in_(OPEN_ITEM_STATES))
        done = update(jobs).where(jobs.c.state == "running", ~open_items)
        if job_ids is not None:
            done = done.where(jobs.c.id.in_(sorted(job_ids)))
        nothing_scored = and_(jobs.c.succeeded == 0, jobs.c.failed > 0)
        connection.execute(
            done.where(nothing_scored).values(
                state="failed", finished_at=now, error="no item could be scored; each item's problem says why"
            )
        )
        connection.execute(done.values(state="succeeded", finished_at=now))  # a job with per-item problems too

    def take_finished_workdirs(self) -> list[str]:
        """The unpacked-upload folders of jobs that are over (no item open): the caller removes them. Each is
        handed out once (its column is cleared in the same transaction); the results stay in the database."""
        open_items = exists().where(items.c.job_id == jobs.c.id, items.c.state.in_(OPEN_ITEM_STATES))
        with writing(self.engine) as connection:
            rows = connection.execute(
                select(jobs.c.id, jobs.c.workdir)
                .where(jobs.c.workdir.is_not(None), jobs.c.state.not_in(ACTIVE_JOB_STATES), ~open_items)
                .with_for_update(skip_locked=True)
            ).all()
            if rows:
                connection.execute(update(jobs).where(jobs.c.id.in_([r.id for r in rows])).values(workdir=None))
        return [row.workdir for row in rows]


__all__ = [
    "ClaimedItem",
    "JobNotFoundError",
    "JobStore",
    "NewItem",
    "Outcome",
    "StoreConfigError",
    "make_engine",
    "metadata",
    "migrate",
    "new_runner_id",
    "schema_revision",
]
