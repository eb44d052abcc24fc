"""The worker runtime: wires listener, fetch loop, executor, completer, scheduler and shutdown.

The cycle: one transaction, pipelined, that records every success waiting
in the completer (ledger.job_succeed_many) and claims, per queue with free
slots, exactly that many jobs (ledger.job_claim). One commit pays for both
sides, which is what lets a single process pass the commit-per-job ceiling.
After a claim that came back short the queue is drained, so the loop sleeps
until a NOTIFY, a finished job, or the jittered poll wakes it: an idle
worker costs one query per poll interval.

Shutdown: the first SIGTERM/SIGINT stops claiming and lets running jobs
finish (and their outcomes be recorded) for up to shutdown_timeout; the
second signal, or the timeout, abandons the rest. Abandoned jobs stay
`running` under this worker's name; removing its heartbeat row lets the next
rescue pass return them to work. Nothing is lost either way.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import signal
import time
from collections import Counter
from datetime import timedelta
from typing import Any

import anyio
import anyio.to_thread
import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from ledger.db import connect
from ledger.kinds import DEFAULT_QUEUE, HEARTBEAT, PRUNE, RESCUE, Registry
from ledger.migrate import migrate
from ledger.models import Job, job_rows
from ledger.queries import query

from .completer import Completer
from .config import WorkerConfig
from .executor import execute
from .listener import Listener
from .periodic import Scheduler

__all__ = ["Worker"]

log = logging.getLogger("worker")


class Worker:
    def __init__(self, config: WorkerConfig, registry: Registry, database_url: str) -> None:
        self.config = config
        self.registry = registry
        self.url = database_url
        self.limits = config.queue_limits
        self.per_cycle = {q: -(-n // config.cycles) for q, n in self.limits.items()}
        self.active: Counter[str] = Counter()
        self.reserved: Counter[str] = Counter()
        self.running: dict[int, Job] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.in_flight = 0  # cycles between take() and settle(): their jobs are not in `running` yet
        self.claims_sent = 0  # cycles that asked for jobs, ever: lets the orphan check see a claim it raced
        self.stats: Counter[str] = Counter()  # cycles, claimed, recorded, cycle_ms: logged at stop
        self.stopping = False
        self.abandoning = anyio.Event()
        self.stop_requested = anyio.Event()
        self._wakes: list[anyio.Event] = []
        self._claimer: psycopg.AsyncConnection[Any] | None = None  # see _lone_claim
        self._claimer_busy = False
        # Maintenance runs on a queue this worker serves: a worker of `mail` alone
        # would otherwise enqueue its rescue and prune into `default`, where no one
        # takes them, and a dead worker's jobs would never come back.
        if DEFAULT_QUEUE not in self.limits:
            home = next(iter(self.limits))
            for name in (HEARTBEAT, RESCUE, PRUNE):
                if name in registry.kinds:
                    registry.kinds[name] = dataclasses.replace(registry.kinds[name], queue=home)
        # The configured periods replace the built-in defaults.
        registry.periodic(HEARTBEAT, timedelta(seconds=config.heartbeat_every))
        registry.periodic(RESCUE, timedelta(seconds=config.rescue_every))
        if config.retention_period is not None:
            registry.periodic(
                PRUNE,
                timedelta(seconds=config.prune_every),
                args={"older_than_seconds": config.retention_period.total_seconds()},
            )

    def wake(self) -> None:
        """Rouse one idle cycle loop. One NOTIFY needs one claim; under load each busy
        cycle rouses the next, so the cycles in flight ramp up with the work."""
        for event in self._wakes:
            if not event.is_set():
                event.set()
                return

    # ------------------------------------------------------------ lifecycle

    async def run(self) -> int:
        """Run until a signal stops it; 0 when every job finished, 1 when some were abandoned."""
        await anyio.to_thread.run_sync(self._migrate)
        total = sum(self.limits.values())
        anyio.to_thread.current_default_thread_limiter().total_tokens = max(total + 4, 8)
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            self.url,
            # Open up front: the cycles, the heartbeat and the scheduler each hold one at
            # times, and a connection opened on demand costs milliseconds of pickup latency.
            min_size=self.config.cycles + 2,
            max_size=max(self.config.cycles + 4, min(20, total // 2 + 2)),
            kwargs={"autocommit": True},
            # No check on checkout: it would cost a round trip per cycle. A broken
            # connection fails its statement instead; the cycle retries with backoff
            # and the pool replaces connections it finds closed.
            timeout=5.0,  # a cycle waits at most this for a connection, then retries with backoff
            open=False,
        )
        await pool.open(wait=True, timeout=30)
        self.pool = pool
        self.completer = Completer(pool, self.registry, self.config.id, self.wake)
        log.info(self.config.describe())
        abandoned = 0
        try:
            async with anyio.create_task_group() as services:
                services.start_soon(self._signals)
                services.start_soon(self._heartbeat)
                services.start_soon(Scheduler(pool, self.registry).run)
                if not self.config.poll_only:
                    services.start_soon(Listener(self.url, list(self.limits), self.wake).run)
                log.info("worker started", extra={"worker": self.config.id})
                # The cycle loops outlive claiming: while stopping they still record
                # the outcomes of the jobs that are finishing.
                for _ in range(self.config.cycles):
                    services.start_soon(self._cycle_loop)
                await self.stop_requested.wait()
                abandoned = await self._drain()
                services.cancel_scope.cancel()
            await self._leave()
        finally:
            if self._claimer is not None:
                await self._claimer.close()
            await pool.close()
        cycles = self.stats["cycles"] or 1
        log.info("worker stopped", extra={
            "worker": self.config.id, "abandoned": abandoned, "cycles": self.stats["cycles"],
            "claimed": self.stats["claimed"], "recorded_in_batches": self.stats["recorded"],
            "mean_cycle_ms": round(self.stats["cycle_us"] / cycles / 1000, 2),
        })  # fmt: skip
        return 1 if abandoned else 0

    def _migrate(self) -> None:
        with connect(self.url) as conn:
            result = migrate(conn)
        if result.applied:
            log.info(str(result))

    async def _signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                name = signal.Signals(signum).name
                if not self.stopping:
                    self.stopping = True
                    log.info(
                        "worker stopping on %s: no new jobs; waiting up to %gs for %d running job(s)",
                        name,
                        self.config.shutdown_timeout,
                        len(self.running),
                    )
                    self.stop_requested.set()
                    self.wake()
                else:
                    log.warning("second %s: abandoning %d running job(s) to the rescue", name, len(self.running))
                    self.abandoning.set()

    async def _drain(self) -> int:
        """Wait for running jobs until the timeout or a second signal; cancel (abandon) what is left."""
        if self.running or self.in_flight:
            with anyio.move_on_after(self.config.shutdown_timeout):
                async with anyio.create_task_group() as waiter:

                    async def until_abandoned() -> None:
                        await self.abandoning.wait()
                        waiter.cancel_scope.cancel()

                    async def until_idle() -> None:
                        # Polled, not signalled: idle needs both no running job and no
                        # cycle in flight (which may still hand over claimed jobs).
                        while self.running or self.in_flight:
                            await anyio.sleep(0.05)
                        waiter.cancel_scope.cancel()

                    waiter.start_soon(until_abandoned)
                    waiter.start_soon(until_idle)
        left = len(self.running)
        if left:
            log.warning(
                "abandoning %d job(s) still running: %s; the rescue will return them to work",
                left,
                sorted(self.running),
            )
            for task in list(self.tasks):
                task.cancel()
        return left

    async def _leave(self) -> None:
        """Drop this worker's heartbeat so anything it abandoned is rescued at the next pass."""
        try:
            with anyio.fail_after(5):
                async with self.pool.connection() as conn:
                    await conn.execute(query("worker_stop"), {"worker": self.config.id})
        except (psycopg.Error, TimeoutError) as exc:
            log.warning("could not remove this worker's heartbeat (its lease will expire instead): %s", exc)

    async def _heartbeat(self) -> None:
        """Renew this worker's lease every lease/3, so a live worker's jobs are never rescued."""
        params = {"worker": self.config.id, "lease": timedelta(seconds=self.config.lease)}
        while True:
            try:
                async with self.pool.connection() as conn:
                    await conn.execute(query("worker_heartbeat"), params)
                    await self._return_orphans(conn)
            except psycopg.OperationalError as exc:
                log.warning("heartbeat failed (database unavailable): %s", exc)
            await anyio.sleep(self.config.lease / 3)

    async def _return_orphans(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Rescue jobs running under this worker's name that it does not know it holds.

        A claim can commit while its answer is lost with the connection (the
        server restarted after the commit, before the reply). Those jobs are
        `running` under a worker whose heartbeat goes on, so the rescue would
        never take them: this check, once per heartbeat, does. It compares only
        when no cycle is in flight and none started meanwhile, because a claim
        in flight holds jobs the worker has not seen yet.
        """
        if self.in_flight or self.stopping:
            return
        sent = self.claims_sent
        cur = await conn.execute(query("jobs_running_for_worker"), {"worker": self.config.id})
        held = {r[0] for r in await cur.fetchall()}
        if self.in_flight or self.claims_sent != sent:
            return
        orphans = sorted(held - self.running.keys())
        if not orphans:
            return
        meta = Jsonb({"reason": "claimed, but the claim's answer was lost with the connection"})
        cur = await conn.execute(query("job_rescue_orphans"), {"ids": orphans, "metadata": meta})
        rescued = [r[0] for r in await cur.fetchall()]
        log.warning("returned %d job(s) whose claim answer was lost to work: %s", len(rescued), rescued)

    # ------------------------------------------------------------ fetching

    async def _cycle_loop(self) -> None:
        delay = 0.1
        slot = len(self._wakes)
        self._wakes.append(anyio.Event())
        while True:
            self._wakes[slot] = wake = anyio.Event()
            try:
                more = await self._cycle()
                delay = 0.1
            except psycopg.OperationalError as exc:
                log.warning("cycle failed (database unavailable); retrying in %.1fs: %s", delay, exc)
                await anyio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            if more:
                self.wake()  # more work than one cycle: bring in a sibling
                continue
            poll = self.config.poll_interval * random.uniform(0.9, 1.1)
            with anyio.move_on_after(poll):
                await wake.wait()

    async def _cycle(self) -> bool:
        """Record waiting successes and claim into free slots, in one transaction.

        True if there may be more to do right away (a queue filled every slot it asked for).
        """
        began = time.perf_counter()
        batch = self.completer.take()
        wanted: dict[str, int] = {}
        if not self.stopping:
            for queue, limit in self.limits.items():
                # At most a cycles-th of the queue per cycle, so that several cycles are
                # in flight at once: PostgreSQL works on one while this process runs the
                # jobs another brought back. (Taking every free slot, each cycle waited for
                # the jobs of the one before: one cycle in flight whatever `cycles` said.)
                free = min(limit - self.active[queue] - self.reserved[queue], self.per_cycle[queue])
                if free > 0:
                    wanted[queue] = free
                    # Reserved until this cycle's claim returns, so a concurrent cycle
                    # cannot claim the same slots and overrun the queue's concurrency.
                    self.reserved[queue] += free
        if not batch and not wanted:
            return False
        self.in_flight += 1
        self.claims_sent += bool(wanted)
        claimed: dict[str, list[Job]] = {}
        rows: list[Any] = []
        try:
            if not batch and len(wanted) == 1:
                [(queue, n)] = wanted.items()
                claimed[queue] = await self._lone_claim(queue, n)
            else:
                claimed, rows = await self._cycle_pipelined(batch, wanted)
        except BaseException:
            self.completer.put_back(batch)
            raise
        finally:
            self.in_flight -= 1
            for queue, n in wanted.items():
                self.reserved[queue] -= n
        self.completer.settle(batch, rows)
        self.stats.update(cycles=1, recorded=len(batch), claimed=sum(len(g) for g in claimed.values()),
                          cycle_us=int((time.perf_counter() - began) * 1e6))  # fmt: skip
        more = False
        loop = asyncio.get_running_loop()
        for queue, got in claimed.items():
            # A queue that filled every slot asked for may have more waiting.
            more = more or len(got) == wanted[queue]
            for job in got:
                self.active[queue] += 1
                self.running[job.id] = job
                # A bare asyncio task per job (anyio's start_soon costs several times
                # more); they are tracked so an abandon can cancel them.
                task = loop.create_task(self._run_job(job))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
        return more or self.completer.has_pending

    async def _lone_claim(self, queue: str, n: int) -> list[Job]:
        """The claim alone, as one autocommit statement, on the worker's own connection if it is free.

        This is the idle worker woken by a NOTIFY: skipping the pipeline and
        BEGIN/COMMIT, and the pool's checkout and return (0.17 ms p50 of a
        0.72 ms claim, measured here), takes that work off pickup latency.
        """
        if self._claimer_busy:
            async with self.pool.connection() as conn:
                return await self._claim_on(conn, queue, n)
        self._claimer_busy = True
        try:
            if self._claimer is None or self._claimer.closed:
                self._claimer = await psycopg.AsyncConnection.connect(self.url, autocommit=True)
            try:
                return await self._claim_on(self._claimer, queue, n)
            except psycopg.OperationalError:
                await self._claimer.close()  # broken: the next lone claim opens a new one
                raise
        finally:
            self._claimer_busy = False

    async def _claim_on(self, conn: psycopg.AsyncConnection[Any], queue: str, n: int) -> list[Job]:
        cur = conn.cursor(row_factory=job_rows)
        await cur.execute(query("job_claim"), self._claim_params(queue, n), binary=True)
        return await cur.fetchall()

    async def _cycle_pipelined(
        self, batch: list[Any], wanted: dict[str, int]
    ) -> tuple[dict[str, list[Job]], list[Any]]:
        """Record `batch` and claim `wanted` in one transaction: one round trip and one commit.

        Pipeline mode, and BEGIN and COMMIT sent as statements: everything,
        COMMIT included, goes out before the first result is read. With
        `conn.transaction()` the COMMIT went out only after the results had
        been read, a second round trip per cycle (measured: pickup latency
        p50 2.2 ms -> 1.5 ms without it). If a statement fails, the pipeline
        skips the rest, COMMIT too; the pool rolls the connection back.
        """
        claimed: dict[str, list[Job]] = {}
        rows: list[Any] = []
        async with self.pool.connection() as conn, conn.pipeline():
            await conn.execute("BEGIN")
            done_cur = conn.cursor(row_factory=dict_row)
            if batch:
                await done_cur.execute(query("job_succeed_many"), self.completer.succeed_params(batch), binary=True)
            claim_curs = {q: conn.cursor(row_factory=job_rows) for q in wanted}
            for queue, n in wanted.items():
                # Binary results: timestamps and arrays parse several times faster than text.
                await claim_curs[queue].execute(query("job_claim"), self._claim_params(queue, n), binary=True)
            await conn.execute("COMMIT")
            if batch:
                rows = await done_cur.fetchall()
            for queue, cur in claim_curs.items():
                # Rows of ledger.jobs straight from the database: no need to validate them again.
                claimed[queue] = await cur.fetchall()
        return claimed, rows

    def _claim_params(self, queue: str, n: int) -> dict[str, Any]:
        return {
            "queue": queue, "n": n, "worker": self.config.id,
            "lease": timedelta(seconds=self.config.lease), "metadata": Jsonb({}),
        }  # fmt: skip

    async def _run_job(self, job: Job) -> None:
        # The slot is free once the body is done, not once its outcome is
        # committed: the next cycle then records this success and claims a
        # replacement in one transaction. (Freed at the commit, every other
        # cycle found no free slot and only recorded: measured, it halved
        # the drain.) The job stays in `running` until its outcome is recorded.
        try:
            outcome = await execute(job, self.registry, self.config.id, self.url)
        except BaseException:
            self.running.pop(job.id, None)  # abandoned: nothing to record
            raise
        finally:
            self.active[job.queue] -= 1
            self.wake()
        if outcome.kind == "succeeded":
            # Handed to the next cycle; this task ends now (no task waits per
            # job) and the job leaves `running` when the cycle has committed it.
            recorded = self.completer.submit(outcome)
            recorded.add_done_callback(lambda _: self.running.pop(job.id, None))
            return
        try:
            # Once an outcome exists it is a finished fact: an abandon must not cancel
            # its recording, which goes on (shielded) while this task ends.
            await asyncio.shield(self.completer.record(outcome))
        finally:
            self.running.pop(job.id, None)
