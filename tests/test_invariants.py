"""Invariants 1-5 of shared/DESIGN.md, each named after itself, against a real PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from psycopg.rows import DictRow

from ledger.client import Client
from ledger.db import connect
from ledger.errors import IllegalTransition, InvalidArguments, VersionConflict
from ledger.store import Store

from .conftest import count_events
from .threads import new_barrier, run_threads


def enqueue(store: Store, kind: str = "k", max_attempts: int = 3, queue: str = "q") -> int:
    return store.enqueue_many([(kind, {}, queue, 5, max_attempts, None)])[0]


def run_to_discarded(store: Store) -> int:
    job = enqueue(store, max_attempts=1)
    store.claim("q", 1, "w")
    store.fail(job, "boom")
    return job


def test_invariant_1_append_only_events_refuse_update_delete_and_truncate(
    store: Store, conn: psycopg.Connection[DictRow]
) -> None:
    enqueue(store)
    before = conn.execute("SELECT * FROM ledger.events").fetchall()
    for statement in (
        "UPDATE ledger.events SET data = '{}'",
        "DELETE FROM ledger.events",
        "TRUNCATE ledger.events",
    ):
        with pytest.raises(psycopg.Error, match="append-only") as refused:
            conn.execute(statement)
        assert refused.value.sqlstate == "LG005"
    assert conn.execute("SELECT * FROM ledger.events").fetchall() == before


def test_invariant_2_projections_are_derived_and_rebuild_restores_them(
    store: Store, conn: psycopg.Connection[DictRow]
) -> None:
    a, b, c = (enqueue(store) for _ in range(3))
    store.claim("q", 3, "w")
    store.succeed(a)
    store.fail(b, "boom", discard=True)
    store.cancel(c)
    store.replay(c, actor="op", reason="again")
    assert store.projections_diff() == []

    # A projection row changed behind the ledger's back is reported, and a rebuild restores it.
    conn.execute("UPDATE ledger.jobs SET state = 'succeeded' WHERE id = %s", [c])
    conn.execute("DELETE FROM ledger.discarded WHERE job_id = %s", [b])
    diffs = store.projections_diff()
    assert {(d["projection"], d["job_id"]) for d in diffs} == {("jobs", c), ("discarded", b)}
    assert store.projections_rebuild() == 3
    assert store.projections_diff() == []
    job_c = store.job(c)
    assert job_c is not None and job_c.state == "available"
    assert [d.job_id for d in store.discarded()] == [b]


def test_invariant_3_one_writer_per_version(db_url: str, store: Store, conn: psycopg.Connection[DictRow]) -> None:
    job = enqueue(store)
    version = store.job(job).version  # type: ignore[union-attr]

    # Two operators read version v and race to cancel: exactly one appends v+1.
    barrier = new_barrier(2)
    outcomes: list[str] = []

    def racer() -> None:
        with connect(db_url) as c:
            barrier.wait()
            try:
                Store(c).cancel(job, "race", expected_version=version)
                outcomes.append("won")
            except VersionConflict:
                outcomes.append("conflict")

    run_threads(racer, racer, barrier=barrier)
    assert sorted(outcomes) == ["conflict", "won"]

    # A raw append of an existing version is refused by the unique (job_id, version).
    with pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute("INSERT INTO ledger.events (job_id, version, type, hash) VALUES (%s, 2, 'succeeded', '')", [job])
    versions = [e.version for e in store.events_for_job(job)]
    assert versions == [1, 2]


def test_invariant_4_atomic_enqueue_joins_the_callers_transaction(
    db_url: str, conn: psycopg.Connection[DictRow]
) -> None:
    conn.execute("CREATE TABLE orders (id int)")
    client = Client(db_url)
    with connect(db_url) as caller:
        with pytest.raises(RuntimeError), caller.transaction():
            caller.execute("INSERT INTO orders VALUES (1)")
            client.enqueue("heartbeat", conn=caller)
            raise RuntimeError("the caller's work failed")
        assert count_events(conn) == 0
        assert conn.execute("SELECT count(*) AS n FROM ledger.jobs").fetchone() == {"n": 0}

        with caller.transaction():
            caller.execute("INSERT INTO orders VALUES (2)")
            job_id = client.enqueue("heartbeat", conn=caller)
    assert conn.execute("SELECT id FROM orders").fetchall() == [{"id": 2}]
    assert Store(conn).job(job_id) is not None
    client.close()


def test_invariant_4_atomic_a_bad_row_refuses_the_whole_batch(store: Store, conn: psycopg.Connection[DictRow]) -> None:
    with pytest.raises(InvalidArguments, match="priority 42"):
        store.enqueue_many([("k", {}, "q", 5, 3, None), ("k", {}, "q", 42, 3, None)])
    assert count_events(conn) == 0
    assert conn.execute("SELECT count(*) AS n FROM ledger.jobs").fetchone() == {"n": 0}


ILLEGAL: list[tuple[str, str, Callable[[Store, int], Any], str]] = [
    ("succeed an available job", "available", lambda s, j: s.succeed(j), "only running jobs can be marked succeeded"),
    ("fail an available job", "available", lambda s, j: s.fail(j, "x"), "only running jobs can be marked failed"),
    ("snooze an available job", "available", lambda s, j: s.snooze(j, _later(s)), "only running jobs can be snoozed"),
    ("replay a running job", "running", lambda s, j: s.replay(j), "only discarded or cancelled jobs can be replayed"),
    ("replay a succeeded job", "succeeded", lambda s, j: s.replay(j), "is succeeded; only discarded or cancelled"),
    ("cancel a succeeded job", "succeeded", lambda s, j: s.cancel(j), "only scheduled or available or retryable"),
    ("succeed a discarded job", "discarded", lambda s, j: s.succeed(j), "is discarded; only running jobs"),
    ("cancel a cancelled job", "cancelled", lambda s, j: s.cancel(j), "is cancelled; only scheduled"),
]


def _later(s: Store) -> Any:
    row = s.conn.execute("SELECT now() + interval '1 hour' AS t").fetchone()
    assert row is not None
    return row["t"]


def _job_in_state(store: Store, state: str) -> int:
    job = enqueue(store, max_attempts=1)
    if state == "available":
        return job
    store.claim("q", 1, "w")
    if state == "succeeded":
        store.succeed(job)
    elif state == "discarded":
        store.fail(job, "boom")
    elif state == "cancelled":
        store.cancel(job)
    return job


@pytest.mark.parametrize(("what", "state", "command", "message"), ILLEGAL, ids=[i[0] for i in ILLEGAL])
def test_invariant_5_legal_transitions_only(
    store: Store, conn: psycopg.Connection[DictRow], what: str, state: str, command: Any, message: str
) -> None:
    job = _job_in_state(store, state)
    before = count_events(conn)
    with pytest.raises(IllegalTransition, match=message) as refused:
        command(store, job)
    assert str(refused.value).startswith(f"job {job} is {state};")
    assert count_events(conn) == before
    assert store.projections_diff() == []


def test_replay_returns_a_discarded_job_to_available_and_keeps_its_history(store: Store) -> None:
    job = run_to_discarded(store)
    assert [d.job_id for d in store.discarded()] == [job]
    replayed = store.replay(job, actor="alice", reason="fixed the bug")
    assert (replayed.state, replayed.attempt) == ("available", 0)
    assert store.discarded() == []
    events = store.events_for_job(job)
    assert [e.type for e in events] == ["enqueued", "started", "discarded", "replayed"]
    assert events[-1].data == {"by": "alice", "reason": "fixed the bug"}


def test_a_last_failed_attempt_is_discarded_with_every_error(store: Store) -> None:
    job = enqueue(store, max_attempts=2)
    store.claim("q", 1, "w")
    retry_now = _later(store).replace(year=2000)
    assert store.fail(job, "first", retry_at=retry_now).state == "retryable"
    store.claim("q", 1, "w")
    assert store.fail(job, "second").state == "discarded"
    [dead] = store.discarded()
    assert [(e["attempt"], e["error"]) for e in dead.errors] == [(1, "first"), (2, "second")]
    assert dead.last_error == "second"


def test_a_dead_letter_lists_only_the_errors_since_its_last_replay(store: Store) -> None:
    job = enqueue(store, max_attempts=1)
    store.claim("q", 1, "w")
    store.fail(job, "first")
    store.replay(job, actor="op", reason="fixed")
    store.claim("q", 1, "w")
    store.fail(job, "second")
    [dead] = store.discarded()
    assert [(e["attempt"], e["error"]) for e in dead.errors] == [(1, "second")]
    # The rebuild derives the same row from the events.
    assert store.projections_diff() == []
