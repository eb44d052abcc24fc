"""Flow control across the fleet: paused queues, concurrency limits per key, rate limits — enforced in the claim."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from datetime import datetime, timedelta

import anyio
import psycopg
import pytest
from psycopg.rows import DictRow

from ledger.client import AsyncClient, Client
from ledger.errors import IllegalTransition, InvalidArguments, refusals
from ledger.models import Limit
from ledger.store import Store

from .jobapp import SIDE_TABLE
from .workers import WorkerProcess, wait_until

QUIET = ["--heartbeat-every", "3600", "--rescue-every", "3600"]


def enqueue(store: Store, kind: str, n: int, queue: str = "q", args: dict[str, object] | None = None) -> list[int]:
    return store.enqueue_many([(kind, args or {}, queue, 5, 3, None)] * n)


# ---------------------------------------------------------------- pause and resume


def test_a_paused_queue_is_not_claimed_but_takes_new_jobs_and_the_pause_is_recorded(store: Store) -> None:
    [first] = enqueue(store, "k", 1)
    paused = store.queue_set_paused("q", True, actor="ana", reason="upstream down")
    assert (paused.paused, paused.changed_by, paused.reason) == (True, "ana", "upstream down")
    assert store.claim("q", 10, "w") == []
    [second] = enqueue(store, "k", 1)  # enqueueing into a paused queue still works
    assert store.claim("other", 10, "w") == [], "other queues are not affected (and this one is empty)"
    enqueue(store, "k", 1, queue="other")
    assert len(store.claim("other", 10, "w")) == 1
    store.queue_set_paused("q", False, actor="ana", reason="back")
    assert {j.id for j in store.claim("q", 10, "w")} == {first, second}
    log = store.conn.execute("SELECT queue, type, by, reason FROM ledger.queue_events ORDER BY position").fetchall()
    assert log == [
        {"queue": "q", "type": "paused", "by": "ana", "reason": "upstream down"},
        {"queue": "q", "type": "resumed", "by": "ana", "reason": "back"},
    ]
    with pytest.raises(IllegalTransition, match="queue q is not paused"):
        store.queue_set_paused("q", False)
    with pytest.raises(InvalidArguments, match="queue 'no spaces'"):
        store.queue_set_paused("no spaces", True)
    with pytest.raises(psycopg.Error, match="append-only"):
        store.conn.execute("DELETE FROM ledger.queue_events")


def test_the_clients_pause_and_resume_a_queue_for_the_fleet(db_url: str, store: Store) -> None:
    with Client(db_url) as client:
        paused = client.pause("q", reason="upstream down", by="ana")
        assert (paused.queue, paused.paused, paused.changed_by, paused.reason) == ("q", True, "ana", "upstream down")
    enqueue(store, "k", 1)
    assert store.claim("q", 10, "w") == []

    async def resume() -> bool:
        async with AsyncClient(db_url) as client:
            return (await client.resume("q", reason="back")).paused

    assert anyio.run(resume) is False
    assert len(store.claim("q", 10, "w")) == 1


def test_a_pause_stops_every_worker_of_the_fleet_and_a_resume_wakes_them(
    db_url: str, store: Store, conn: psycopg.Connection[DictRow]
) -> None:
    conn.execute(SIDE_TABLE)
    workers = [WorkerProcess(db_url, *QUIET, "--poll-interval", "0.2", name=f"p{i}").started() for i in range(2)]
    try:
        store.queue_set_paused("default", True, actor="test")
        ids = enqueue(store, "sleep", 20, queue="default")
        for w in workers:
            w.wait_for("listener listening")
        wait_until(lambda: store.conn.execute("SELECT count(*) AS n FROM ledger.workers").fetchone()["n"] >= 2)  # type: ignore[index]
        import time

        time.sleep(1.0)  # five polls of each worker: none may claim
        assert {j.state for j in map(store.job, ids) if j} == {"available"}
        store.queue_set_paused("default", False, actor="test")
        wait_until(lambda: {j.state for j in map(store.job, ids) if j} == {"succeeded"}, 30, "the resumed queue")
    finally:
        for w in workers:
            w.kill()


# ---------------------------------------------------------------- limits in the claim, one connection


def test_a_full_key_is_stepped_over_and_other_keys_and_unlimited_jobs_flow(store: Store) -> None:
    store.limit_set("kind:export", Limit(concurrency=2, key="customer"))
    a = store.enqueue_many([("export", {"customer": "a"}, "q", 5, 3, None)] * 30)  # at the head of the queue
    b = store.enqueue_many([("export", {"customer": "b"}, "q", 5, 3, None)] * 3)
    free = enqueue(store, "other", 3)
    first = store.claim("q", 10, "w")
    assert [j.id for j in first] == [*a[:2], *b[:2], *free], "two of each key, then what is not limited"
    assert all(j.limit_key == "kind:export|a" for j in first[:2])
    assert store.claim("q", 10, "w") == [], "every key is full"
    store.succeed(a[0])
    [next_a] = store.claim("q", 10, "w")
    assert next_a.id == a[2], "a slot freed, the key's next job in order"
    assert store.job(a[3]).attempt == 0  # type: ignore[union-attr]  # waiting costs no attempt


def test_a_rate_is_a_sliding_window_not_a_fixed_one(store: Store) -> None:
    store.limit_set("queue:q", Limit(rate=3, per=timedelta(hours=1)))
    ids = enqueue(store, "k", 5)
    assert len(store.claim("q", 10, "w")) == 3
    assert store.claim("q", 10, "w") == []
    starts = store.conn.execute("SELECT starts FROM ledger.limit_starts").fetchone()
    assert starts is not None and len(starts["starts"]) == 3
    # Age the window's starts by an hour: the next ones may start.
    store.conn.execute(
        "UPDATE ledger.limit_starts SET starts = array(SELECT s - interval '61 minutes' FROM unnest(starts) s)"
    )
    assert [j.id for j in store.claim("q", 10, "w")] == ids[3:]


def test_limits_apply_to_jobs_enqueued_after_them_and_a_cleared_limit_holds_nothing_back(store: Store) -> None:
    before = enqueue(store, "k", 3)
    store.limit_set("queue:q", Limit(concurrency=1))
    after = enqueue(store, "k", 3)
    assert store.job(before[0]).limit_key is None and store.job(after[0]).limit_key == "queue:q|"  # type: ignore[union-attr]
    assert [j.id for j in store.claim("q", 10, "w")] == [*before, after[0]]
    assert store.limit_clear("queue:q") and not store.limit_clear("queue:q")
    assert [j.id for j in store.claim("q", 10, "w")] == after[1:]
    assert store.projections_diff() == [] and store.events_verify() == []


@pytest.mark.parametrize(
    ("limit", "field"),
    [
        (dict(scope="nope", concurrency=1), "scope"),
        (dict(scope="kind:k"), "concurrency"),
        (dict(scope="kind:k", concurrency=0), "concurrency"),
        (dict(scope="kind:k", rate=5, per=timedelta(0)), "rate"),
    ],
)
def test_a_bad_limit_is_refused_naming_what_is_wrong(store: Store, limit: dict[str, object], field: str) -> None:
    # The database refuses it whoever calls; the store's Limit model refuses it before that.
    with pytest.raises(InvalidArguments) as refused, refusals():
        store.conn.execute(
            "SELECT ledger.limit_set(%(scope)s, %(concurrency)s, %(rate)s, %(per)s)",
            {"concurrency": None, "rate": None, "per": None, **limit},
        )
    assert refused.value.fields == [field]


# ---------------------------------------------------------------- limits across worker processes


@pytest.fixture
def fleet(db_url: str, conn: psycopg.Connection[DictRow]) -> Iterator[list[WorkerProcess]]:
    conn.execute(SIDE_TABLE)
    started = [
        WorkerProcess(db_url, *QUIET, "--queues", "limited=8", "--poll-interval", "0.1", name=f"f{i}").started()
        for i in range(3)
    ]
    yield started
    for w in started:
        w.kill()


def test_a_limit_of_one_per_key_is_never_exceeded_by_three_workers_and_other_keys_keep_flowing(
    db_url: str, store: Store, fleet: list[WorkerProcess]
) -> None:
    keys = [f"c{i}" for i in range(6)]
    ids = store.enqueue_many(
        [("export", {"customer": k, "seconds": 0.03}, "limited", 5, 3, None) for _ in range(8) for k in keys]
    )
    wait_until(lambda: {j.state for j in map(store.job, ids) if j} == {"succeeded"}, 90, "every export")
    spans: dict[str, list[tuple[str, datetime]]] = defaultdict(list)
    for r in store.conn.execute("SELECT worker, at FROM executions ORDER BY at").fetchall():
        what, key = r["worker"].split(":")
        spans[key].append((what, r["at"]))
    for key, marks in spans.items():
        # Per key the side table must read start, end, start, end...: never two at once.
        assert [m for m, _ in marks] == ["start", "end"] * 8, key
    by_worker = {j.worker for j in map(store.job, ids) if j}
    assert len(by_worker) >= 2, "the fleet shared the work"
    assert all(j.attempt == 1 for j in map(store.job, ids) if j), "waiting spent no attempt"


def test_a_rate_is_never_exceeded_in_any_window_across_the_fleet(
    db_url: str, store: Store, fleet: list[WorkerProcess]
) -> None:
    ids = store.enqueue_many([("charge", {"customer": k}, "limited", 5, 3, None) for _ in range(9) for k in ("x", "y")])
    wait_until(lambda: {j.state for j in map(store.job, ids) if j} == {"succeeded"}, 60, "every charge")
    starts: dict[str, list[datetime]] = defaultdict(list)
    for job_id in ids:
        started = next(e for e in store.events_for_job(job_id) if e.type == "started")
        job = store.job(job_id)
        assert job is not None
        starts[job.args["customer"]].append(started.at)
    for key, times in starts.items():
        times.sort()
        for i, t in enumerate(times):
            in_window = [u for u in times[i:] if u < t + timedelta(seconds=1)]
            assert len(in_window) <= 3, (key, t, in_window)
