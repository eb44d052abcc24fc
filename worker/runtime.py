"""The worker runtime: wires listener, fetch loop, executor, completer, scheduler and shutdown.

Fetching: one claim per queue with free slots, asking for exactly the free
slots, in one round trip (ledger.job_claim). After a claim that came back
short the queue is drained, so the loop sleeps until a NOTIFY, a finished
job of a saturated queue, or the jittered poll wakes it: an idle worker
costs one query per poll interval.

Shutdown: the first SIGTERM/SIGINT stops claiming and lets running jobs
finish (and their outcomes be recorded) for up to shutdown_timeout; the
second signal, or the timeout, abandons the rest. Abandoned jobs stay
`running` under this worker's name; removing its heartbeat row lets the next
rescue pass return them to work. Nothing is lost either way.
"""

from __future__ import annotations

import logging
import random
import signal
from collections import Counter
from datetime import timedelta
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread
import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from ledger.db import connect
from ledger.kinds import HEARTBEAT, RESCUE, Registry
from ledger.migrate import migrate
from ledger.models import Job
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
        self.active: Counter[str] = Counter()
        self.saturated: dict[str, bool] = dict.fromkeys(self.limits, False)
        self.running: dict[int, Job] = {}
        self.stopping = False
        self.abandoning = anyio.Event()
        self.idle = anyio.Event()
        self._wake = anyio.Event()
        # The configured periods replace the built-in defaults.
        registry.periodic(HEARTBEAT, timedelta(seconds=config.heartbeat_every))
        registry.periodic(RESCUE, timedelta(seconds=config.rescue_every))

    def wake(self) -> None:
        self._wake.set()

    # ------------------------------------------------------------ lifecycle

    async def run(self) -> int:
        """Run until a signal stops it; 0 when every job finished, 1 when some were abandoned."""
        await anyio.to_thread.run_sync(self._migrate)
        total = sum(self.limits.values())
        anyio.to_thread.current_default_thread_limiter().total_tokens = max(total + 4, 8)
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            self.url,
            min_size=2,
            max_size=max(4, min(20, total // 2 + 2)),
            kwargs={"autocommit": True},
            check=AsyncConnectionPool.check_connection,
            timeout=5.0,  # a claim waits at most this for a connection, then retries with backoff
            open=False,
        )
        await pool.open(wait=True, timeout=30)
        self.pool = pool
        self.completer = Completer(pool, self.registry, self.config.id)
        log.info(self.config.describe())
        abandoned = 0
        try:
            async with anyio.create_task_group() as services:
                services.start_soon(self.completer.run)
                services.start_soon(self._signals)
                services.start_soon(self._heartbeat)
                services.start_soon(Scheduler(pool, self.registry).run)
                if not self.config.poll_only:
                    services.start_soon(Listener(self.url, list(self.limits), self.wake).run)
                log.info("worker started", extra={"worker": self.config.id})
                async with anyio.create_task_group() as jobs:
                    await self._fetch_loop(jobs)
                    abandoned = await self._drain(jobs)
                services.cancel_scope.cancel()
            await self._leave()
        finally:
            await pool.close()
        log.info("worker stopped", extra={"worker": self.config.id, "abandoned": abandoned})
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
                    self.wake()
                else:
                    log.warning("second %s: abandoning %d running job(s) to the rescue", name, len(self.running))
                    self.abandoning.set()

    async def _drain(self, jobs: anyio.abc.TaskGroup) -> int:
        """Wait for running jobs until the timeout or a second signal; cancel (abandon) what is left."""
        if self.running:
            with anyio.move_on_after(self.config.shutdown_timeout):
                async with anyio.create_task_group() as waiter:

                    async def until_abandoned() -> None:
                        await self.abandoning.wait()
                        waiter.cancel_scope.cancel()

                    async def until_idle() -> None:
                        while self.running:
                            self.idle = anyio.Event()
                            await self.idle.wait()
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
            jobs.cancel_scope.cancel()
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
            except psycopg.OperationalError as exc:
                log.warning("heartbeat failed (database unavailable): %s", exc)
            await anyio.sleep(self.config.lease / 3)

    # ------------------------------------------------------------ fetching

    async def _fetch_loop(self, jobs: anyio.abc.TaskGroup) -> None:
        delay = 0.1
        while not self.stopping:
            self._wake = anyio.Event()
            try:
                more = await self._fetch_once(jobs)
                delay = 0.1
            except psycopg.OperationalError as exc:
                log.warning("claim failed (database unavailable); retrying in %.1fs: %s", delay, exc)
                with anyio.move_on_after(delay):
                    while not self.stopping:
                        await anyio.sleep(0.05)
                delay = min(delay * 2, 5.0)
                continue
            if more:
                continue
            poll = self.config.poll_interval * random.uniform(0.9, 1.1)
            with anyio.move_on_after(poll):
                await self._wake.wait()

    async def _fetch_once(self, jobs: anyio.abc.TaskGroup) -> bool:
        """Claim up to the free slots of each queue; True if a queue may have more right now."""
        more = False
        for queue, limit in self.limits.items():
            free = limit - self.active[queue]
            if free <= 0 or self.stopping:
                continue
            claimed = await self._claim(queue, free)
            self.saturated[queue] = len(claimed) == free
            for job in claimed:
                self.active[queue] += 1
                self.running[job.id] = job
                jobs.start_soon(self._run_job, job)
            more = more or (self.saturated[queue] and self.active[queue] < limit)
        return more

    async def _claim(self, queue: str, n: int) -> list[Job]:
        params = {
            "queues": [queue], "n": n, "worker": self.config.id,
            "lease": timedelta(seconds=self.config.lease), "metadata": Jsonb({}),
        }  # fmt: skip
        async with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(query("job_claim"), params)
            return [Job.model_validate(r) for r in await cur.fetchall()]

    async def _run_job(self, job: Job) -> None:
        try:
            outcome = await execute(job, self.registry, self.config.id, self.url)
            # Once an outcome exists, record it even while abandoning: it is a finished fact.
            with anyio.CancelScope(shield=True), anyio.move_on_after(max(self.config.shutdown_timeout, 5)):
                await self.completer.record(outcome)
        finally:
            self.active[job.queue] -= 1
            self.running.pop(job.id, None)
            if not self.running:
                self.idle.set()
            if self.saturated.get(job.queue):
                self.wake()
