"""The job store on SQLite and PostgreSQL: migrations, claims, leases, exactly-once completion, cancellation."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

from sqlalchemy import inspect, text, update

from service.jobs.store import JobStore, NewItem, Outcome, make_engine, migrate, schema_revision
from service.jobs.tables import items, metadata, utcnow

CLAIM = {"alias": "production", "lease_s": 30.0, "max_attempts": 3}


def _store(url: str) -> JobStore:
    return JobStore.open(url)


def _job(store: JobStore, count: int, owner: str = "alice", alias: str = "production") -> str:
    new_items = [NewItem(f"img{i}.png", f"/data/img{i}.png") for i in range(count)]
    return store.create_job(
        owner=owner, source_kind="folder", source="/data", alias=alias, models={}, new_items=new_items
    )


def _ok(claimed) -> list[Outcome]:
    return [Outcome(item.id, item.token, result={"reference": item.reference}) for item in claimed]


def test_migrating_an_empty_database_gives_the_tables_the_code_uses(database_url: str) -> None:
    engine = make_engine(database_url)
    assert schema_revision(engine) is None
    migrate(engine)
    assert schema_revision(engine) == "0003"
    found = inspect(engine)
    for table in metadata.sorted_tables:
        migrated = {column["name"] for column in found.get_columns(table.name)}
        assert migrated == {column.name for column in table.columns}, table.name
        assert {index["name"] for index in found.get_indexes(table.name)} == {index.name for index in table.indexes}
    migrate(engine)  # again: a no-op
    engine.dispose()


def test_upgrading_from_the_previous_head_keeps_the_jobs(database_url: str) -> None:
    engine = make_engine(database_url)
    migrate(engine, "0001")
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO jobs (id, state, owner, source_kind, source, alias, models, total, succeeded, failed, "
                "skipped, created_at) VALUES ('old', 'queued', 'alice', 'folder', '/data', 'production', '{}', 1, 0, 0,"
                " 0, CURRENT_TIMESTAMP)"
            )
        )
        connection.execute(
            text(
                "INSERT INTO items (job_id, position, reference, path, state, attempts) "
                "VALUES ('old', 0, 'a.png', '/data/a.png', 'queued', 0)"
            )
        )
    assert "runners" not in inspect(engine).get_table_names()
    migrate(engine)
    assert schema_revision(engine) == "0003"
    store = JobStore(engine)
    store.register_runner("host:1:abc", "embedded")
    claimed = store.claim("host:1:abc", limit=5, **CLAIM)
    assert [item.reference for item in claimed] == ["a.png"]
    assert store.complete(_ok(claimed)) == 1
    assert store.get_job("old")["state"] == "succeeded"
    engine.dispose()


def test_a_job_runs_to_success_and_keeps_source_order(database_url: str) -> None:
    store = _store(database_url)
    job_id = _job(store, 7)
    assert store.get_job(job_id)["state"] == "queued"
    first = store.claim("r1", limit=4, **CLAIM)
    assert [item.reference for item in first] == [f"img{i}.png" for i in range(4)]
    assert {item.attempts for item in first} == {1}
    job = store.get_job(job_id)
    assert job["state"] == "running" and job["started_at"] is not None
    rest = store.claim("r1", limit=10, **CLAIM)
    assert len(rest) == 3
    problem = Outcome(rest[0].id, rest[0].token, problem={"code": "not_an_image", "detail": "text"})
    assert store.complete([*_ok(first), problem, *_ok(rest[1:])]) == 7
    job = store.get_job(job_id)
    assert (job["state"], job["succeeded"], job["failed"], job["total"]) == ("succeeded", 6, 1, 7)
    assert job["finished_at"] >= job["started_at"]
    rows = list(store.iter_items(job_id, page=3))
    assert [row["position"] for row in rows] == list(range(7))
    assert rows[4]["problem"]["code"] == "not_an_image" and rows[4]["result"] is None
    assert rows[0]["result"] == {"reference": "img0.png"}
    assert store.claim("r1", limit=10, **CLAIM) == []
    store.close()


def test_concurrent_runners_never_take_the_same_item(database_url: str) -> None:
    store = _store(database_url)
    job_id = _job(store, 300)
    taken: dict[str, list[int]] = {"r1": [], "r2": [], "r3": []}

    everyone_holds_a_claim = threading.Barrier(3, timeout=60)

    def run(runner: str) -> None:
        claimed = store.claim(runner, limit=7, **CLAIM)
        everyone_holds_a_claim.wait()  # all three hold claims at once, so they must be disjoint
        while claimed:
            taken[runner] += [item.id for item in claimed]
            store.complete(_ok(claimed))
            claimed = store.claim(runner, limit=7, **CLAIM)

    threads = [threading.Thread(target=run, args=(name,)) for name in taken]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    every = [item for ids in taken.values() for item in ids]
    assert len(every) == len(set(every)) == 300
    assert all(taken.values())
    rows = list(store.iter_items(job_id))
    assert {row["attempts"] for row in rows} == {1}
    assert store.get_job(job_id)["succeeded"] == 300
    store.close()


def test_a_dead_runners_items_return_and_its_late_results_are_dropped(database_url: str) -> None:
    store = _store(database_url)
    job_id = _job(store, 3)
    dead = store.claim("dead", limit=3, alias="production", lease_s=0.2, max_attempts=3)
    assert store.claim("alive", limit=3, **CLAIM) == []  # leased
    time.sleep(0.4)
    again = store.claim("alive", limit=3, **CLAIM)
    assert [item.id for item in again] == [item.id for item in dead]
    assert {item.attempts for item in again} == {2}
    assert store.complete(_ok(dead)) == 0  # the old claim is no longer current
    assert store.complete(_ok(again)) == 3
    job = store.get_job(job_id)
    assert (job["succeeded"], job["state"]) == (3, "succeeded")
    store.close()


def test_heartbeats_keep_a_lease_and_an_item_that_keeps_killing_runners_fails(database_url: str) -> None:
    store = _store(database_url)
    job_id = _job(store, 1)
    store.register_runner("slow", "embedded")
    store.claim("slow", limit=1, alias="production", lease_s=0.3, max_attempts=2)
    assert store.heartbeat("slow", lease_s=30) == 1
    time.sleep(0.5)
    assert store.claim("other", limit=1, **CLAIM) == []  # the heartbeat extended the lease
    assert [r["id"] for r in store.live_runners(within_s=60)] == ["slow"]
    store.remove_runner("slow")
    # the poison pill: its runner dies on every attempt
    with store.engine.begin() as connection:  # as if the heartbeats had stopped an hour ago
        connection.execute(update(items).values(lease_expires_at=utcnow() - timedelta(hours=1)))
    second = store.claim("r2", limit=1, alias="production", lease_s=0.1, max_attempts=2)
    assert second[0].attempts == 2
    time.sleep(0.3)
    assert store.claim("r3", limit=1, alias="production", lease_s=0.1, max_attempts=2) == []
    row = next(store.iter_items(job_id))
    assert row["state"] == "failed" and row["problem"]["code"] == "runner_died"
    job = store.get_job(job_id)
    assert (job["state"], job["failed"]) == ("failed", 1)  # its only item could not be scored
    store.close()


def test_cancel_skips_queued_items_and_lets_claimed_ones_finish(database_url: str) -> None:
    store = _store(database_url)
    job_id = _job(store, 10)
    claimed = store.claim("r1", limit=4, **CLAIM)
    job = store.cancel(job_id)
    assert (job["state"], job["skipped"]) == ("cancelled", 6)
    assert store.claim("r1", limit=10, **CLAIM) == []
    assert store.complete(_ok(claimed)) == 4
    assert store.item_counts(job_id) == {"succeeded": 4, "skipped": 6}
    job = store.get_job(job_id)
    assert (job["state"], job["succeeded"]) == ("cancelled", 4)
    assert store.cancel(job_id)["skipped"] == 6  # cancelling again changes nothing
    store.close()


def test_claims_only_take_jobs_of_the_runners_alias_and_owners_list_their_own(database_url: str) -> None:
    store = _store(database_url)
    staging = _job(store, 2, alias="staging")
    mine = _job(store, 1, owner="alice")
    bob = _job(store, 1, owner="bob")
    assert {item.job_id for item in store.claim("r1", limit=10, **CLAIM)} == {mine, bob}
    assert store.get_job(staging)["state"] == "queued"
    listed, total = store.list_jobs("alice", limit=10, offset=0)
    assert total == 2 and {job["owner"] for job in listed} == {"alice"}
    everyone, total_all = store.list_jobs(None, limit=2, offset=0)
    assert total_all == 3 and len(everyone) == 2
    store.close()


def test_a_job_where_nothing_could_be_scored_fails_and_finished_uploads_are_handed_out_once(database_url: str) -> None:
    store = _store(database_url)
    bad = store.create_job(
        owner="alice",
        source_kind="zip",
        source="notes.zip",
        alias="production",
        models={},
        new_items=[NewItem("a.txt", "/up/a.txt"), NewItem("b.txt", "/up/b.txt")],
        workdir="/up",
    )
    claimed = store.claim("r1", limit=10, **CLAIM)
    assert store.take_finished_workdirs() == []  # still running
    store.complete([Outcome(item.id, item.token, problem={"code": "not_an_image", "detail": "x"}) for item in claimed])
    job = store.get_job(bad)
    assert (job["state"], job["failed"]) == ("failed", 2) and "no item could be scored" in job["error"]
    assert store.take_finished_workdirs() == ["/up"]
    assert store.take_finished_workdirs() == []
    store.close()
