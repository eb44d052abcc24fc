"""The worker's services one at a time, in this process, against a real PostgreSQL (no subprocess).

The end-to-end tests in test_worker.py run `ledger worker`; these drive the
producer, the completer, the heartbeat and the registry view directly, so a
failure points at the service.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest
from psycopg_pool import AsyncConnectionPool

from ledger.defaults import QUEUE
from ledger.kinds import HEARTBEAT, PRUNE, RESCUE, JobContext, NoArgs, Registry, builtin_registry
from ledger.statements import Success
from ledger.store import Store
from ledger.store_async import AsyncStore
from ledger.worker.completer import Completer
from ledger.worker.config import WorkerConfig
from ledger.worker.executor import Outcome
from ledger.worker.heartbeat import Heartbeat
from ledger.worker.maintenance import worker_registry
from ledger.worker.producer import Producer


@asynccontextmanager
async def pool_for(url: str) -> AsyncIterator[AsyncConnectionPool[Any]]:
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(url, min_size=1, max_size=4, kwargs={"autocommit": True})
    async with pool:
        yield pool


def run(url: str, body: Callable[[AsyncConnectionPool[Any]], Awaitable[None]]) -> None:
    async def main() -> None:
        async with pool_for(url) as pool:
            await body(pool)

    anyio.run(main)


def enqueue(store: Store, n: int, kind: str = "noop", queue: str = "q", attempts: int = 3) -> list[int]:
    return store.enqueue_many([(kind, {}, queue, 5, attempts, None)] * n)


def app_registry() -> Registry:
    registry = builtin_registry()

    @registry.kind("noop", queue="q")
    async def noop(ctx: JobContext[NoArgs]) -> None:
        return None

    return registry


# ---------------------------------------------------------------- the registry view


def test_the_worker_runs_on_its_own_view_of_the_registry_and_leaves_the_process_wide_one_alone() -> None:
    app = app_registry()
    before = dict(app.kinds), dict(app.periodic_jobs)
    view = worker_registry(app, WorkerConfig(queues="mail=2", heartbeat_every=7, rescue_every=9, retention="off"))
    assert (dict(app.kinds), dict(app.periodic_jobs)) == before
    assert all(app.kinds[k].handler is None for k in (HEARTBEAT, RESCUE, PRUNE)), "the core attaches no handlers"
    for name in (HEARTBEAT, RESCUE, PRUNE):
        assert view.kinds[name].handler is not None
        assert view.kinds[name].queue == "mail", "maintenance runs on a queue this worker serves"
    assert {p.name: p.every for p in view.periodic_jobs.values()} == {
        HEARTBEAT: timedelta(seconds=7),
        RESCUE: timedelta(seconds=9),
    }
    with_retention = worker_registry(app, WorkerConfig(retention="2d", prune_every=60))
    assert with_retention.periodic_jobs[PRUNE].args["older_than_seconds"] == 2 * 86400
    assert with_retention.kinds[PRUNE].queue == QUEUE


# ---------------------------------------------------------------- the store's cycle


def test_a_cycle_records_successes_and_claims_their_replacements_in_one_transaction(db_url: str, store: Store) -> None:
    ids = enqueue(store, 3)

    async def body(pool: AsyncConnectionPool[Any]) -> None:
        async with pool.connection() as conn:
            first = await AsyncStore(conn).cycle([], {"q": 2}, "w")
            assert [j.id for j in first.claimed["q"]] == ids[:2] and first.recorded == {}
            done = [Success(j.id, j.version, 1.5, 0.5) for j in first.claimed["q"]]
            stale = Success(ids[2], 1)  # not running: refused, not raised
            second = await AsyncStore(conn).cycle([*done, stale], {"q": 5}, "w")
            assert second.recorded == {ids[0]: True, ids[1]: True, ids[2]: False}
            assert [j.id for j in second.claimed["q"]] == ids[2:]

    run(db_url, body)
    assert [j.state for j in map(store.job, ids) if j] == ["succeeded", "succeeded", "running"]
    assert store.events_for_job(ids[0])[-1].metadata == {"worker": "w", "duration_ms": 1.5, "wait_ms": 0.5}


# ---------------------------------------------------------------- the completer


def _outcome(store: Store, job_id: int, kind: Any, **kw: Any) -> Outcome:
    job = store.job(job_id)
    assert job is not None
    return Outcome(job=job, kind=kind, duration=0.01, **kw)


def test_the_completer_records_a_failure_at_its_retry_time_and_what_became_of_an_outcome_gone_stale(
    db_url: str, store: Store
) -> None:
    first, second, third = enqueue(store, 3)
    store.claim("q", 3, "w", lease=timedelta(seconds=1))
    later = datetime.now(UTC) + timedelta(minutes=5)
    failed = _outcome(store, first, "failed", error="RuntimeError: no", retry_at=later, traceback="tb")
    after_cancel = _outcome(store, second, "snoozed", run_at=later)
    store.cancel(second, "operator")  # meanwhile: the snooze no longer fits; the body's end is what counts
    after_rescue = _outcome(store, third, "failed", error="late", retry_at=later)
    store.rescue(as_of=later, job_ids=[third])  # meanwhile its lease lapsed: the late outcome is dropped

    async def body(pool: AsyncConnectionPool[Any]) -> None:
        completer = Completer(pool, app_registry(), "w")
        for outcome in (failed, after_cancel, after_rescue):
            await completer.record(outcome)  # refusals are logged, not raised

    run(db_url, body)
    job = store.job(first)
    assert job is not None and (job.state, job.run_at, job.last_error) == ("retryable", later, "RuntimeError: no")
    assert store.events_for_job(first)[-1].metadata["traceback"] == "tb"
    stopped = store.events_for_job(second)[-1]
    assert (stopped.type, stopped.data["how"]) == ("stopped", "the body ended after the cancel (snoozed)")
    assert stopped.metadata["worker"] == "w" and store.job(second).state == "cancelled"  # type: ignore[union-attr]
    assert [e.type for e in store.events_for_job(third)][-1] == "rescued"


# ---------------------------------------------------------------- the heartbeat


def test_the_heartbeat_returns_a_lost_claim_within_two_beats_however_busy_the_claims(db_url: str, store: Store) -> None:
    held, lost = enqueue(store, 2)
    [claimed_held] = store.claim("q", 1, "hb")
    store.claim("q", 1, "hb")  # its answer "lost": the producer never saw it

    async def body(pool: AsyncConnectionPool[Any]) -> None:
        config = WorkerConfig(id="hb")
        producer = Producer(pool, db_url, config, app_registry(), Completer(pool, app_registry(), "hb"))
        producer.running[held] = claimed_held
        heartbeat = Heartbeat(pool, "hb", config.lease, producer)

        def claim_in_flight() -> None:  # a steady backlog: some claim is always out
            producer.claims_sent += 1
            producer.claims_in_flight = {producer.claims_sent}

        async with pool.connection() as conn:
            claim_in_flight()
            await heartbeat.check(AsyncStore(conn))
            assert store.job(lost).state == "running", "one beat: a claim in flight may still hand it over"  # type: ignore[union-attr]
            claim_in_flight()  # the claim of the first beat came back; another one is out
            await heartbeat.check(AsyncStore(conn))

    run(db_url, body)
    rescued = store.events_for_job(lost)[-1]
    assert rescued.type == "rescued" and "never received the claim's answer" in rescued.data["error"]
    assert "vanished" not in rescued.data["error"] and "lease expired" not in rescued.data["error"]
    assert store.job(held).state == "running"  # type: ignore[union-attr]


def test_the_heartbeat_waits_while_a_claim_from_before_its_last_beat_is_still_out(db_url: str, store: Store) -> None:
    [lost] = enqueue(store, 1)
    store.claim("q", 1, "hb")

    async def body(pool: AsyncConnectionPool[Any]) -> None:
        producer = Producer(pool, db_url, WorkerConfig(id="hb"), app_registry(), Completer(pool, app_registry(), "hb"))
        heartbeat = Heartbeat(pool, "hb", 30, producer)
        producer.claims_sent, producer.claims_in_flight = 1, {1}  # hung since before the first beat
        async with pool.connection() as conn:
            for _ in range(3):
                await heartbeat.check(AsyncStore(conn))
            assert store.job(lost).state == "running"  # type: ignore[union-attr]
            producer.claims_in_flight = set()  # it failed at last: its jobs can only be lost ones
            await heartbeat.check(AsyncStore(conn))
            await heartbeat.check(AsyncStore(conn))

    run(db_url, body)
    assert store.job(lost).state == "retryable"  # type: ignore[union-attr]


def test_a_lost_claim_gives_its_attempt_back_so_a_last_attempt_is_not_discarded(store: Store) -> None:
    # The body of a lost claim never began: discarding a job on its last attempt for a reply that
    # went missing would contradict the reason its event gives.
    [job] = enqueue(store, 1, attempts=1)
    store.claim("q", 1, "hb")
    assert store.rescue_orphans([job], "never received the claim's answer", {"reason": "lost claim"}) == [job]
    after = store.job(job)
    assert after is not None and (after.state, after.attempt) == ("retryable", 0)
    rescued = store.events_for_job(job)[-1]
    assert rescued.type == "rescued" and rescued.data["unrun"] is True
    [again] = store.claim("q", 1, "hb")
    assert again.attempt == 1
    # A vanished worker's body may have run: its rescue spends the attempt, the last one discards.
    store.conn.execute("DELETE FROM ledger.workers WHERE id = 'hb'")
    assert [j.id for j in store.rescue(job_ids=[job])] == [job]
    assert store.job(job).state == "discarded"  # type: ignore[union-attr]
    assert "unrun" not in store.events_for_job(job)[-1].data
    assert store.projections_diff() == []  # the rebuild's fold agrees


# ---------------------------------------------------------------- the producer


@pytest.mark.parametrize("cycles", [1, 3])
def test_the_producer_claims_runs_and_records_every_job_within_its_concurrency(
    db_url: str, store: Store, cycles: int
) -> None:
    registry = app_registry()
    live, peak = 0, 0

    @registry.kind("slow", queue="q")
    async def slow(ctx: JobContext[NoArgs]) -> None:
        # The bodies count themselves: how many run at once is measured where they run.
        nonlocal live, peak
        live += 1
        peak = max(peak, live)
        await asyncio.sleep(0.005)
        live -= 1

    ids = enqueue(store, 200, kind="slow")

    async def body(pool: AsyncConnectionPool[Any]) -> None:
        config = WorkerConfig(queues="q=7", cycles=cycles, id="p")
        producer = Producer(pool, db_url, config, registry, Completer(pool, registry, "p"))
        async with anyio.create_task_group() as tg:
            tg.start_soon(producer.run)
            producer.wake()
            while producer.stats["claimed"] < 200 or producer.running:
                await anyio.sleep(0.01)
            tg.cancel_scope.cancel()
        assert producer.stats["claimed"] == 200

    run(db_url, body)
    assert 1 < peak <= 7, peak
    assert {j.state for j in map(store.job, ids) if j} == {"succeeded"}
    assert store.projections_diff() == []
