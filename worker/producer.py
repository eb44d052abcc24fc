"""The producer: the fetch loop, where a claim happens, and the slots the claimed jobs run in.

The cycle: one transaction, pipelined, that records every success waiting
in the completer and claims, per queue with free slots, exactly that many
jobs (AsyncStore.cycle: ledger.job_succeed_many and ledger.job_claim). One
commit pays for both sides, which is what lets a single process pass the
commit-per-job ceiling. After a claim that came back short the queue is
drained, so the loop sleeps until a NOTIFY, a finished job, or the jittered
poll wakes it: an idle worker costs one query per poll interval.

Several cycles are in flight at once (`cycles`): PostgreSQL works on one
while this process runs the jobs another brought back. Each claimed job runs
in a bare asyncio task (worker/executor.py); its outcome goes to the
completer. A job stays in `running` until its outcome is recorded, which is
what the heartbeat's lost-claim check and a graceful shutdown look at.

A claim asks only for the kinds this worker has handlers for, so a job of a
kind it does not know stays available for a worker that does. An operator's
cancel of a running job arrives here (`cancel`, from the listener's NOTIFY
or the heartbeat's check): an async body is cancelled, a sync one sees
ctx.cancelled set.

With OpenTelemetry configured, the trace context each claimed job's enqueue
recorded is read in one query per claim (AsyncStore.trace_carriers), beside
the jobs, which start at once and wait for it only when they begin their span.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import random
import time
from collections import Counter
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import anyio
import psycopg
from psycopg_pool import AsyncConnectionPool

from ledger import tracing
from ledger.db import connect_async
from ledger.kinds import CancelFlag, Registry
from ledger.models import Job
from ledger.store_async import AsyncStore

from .completer import Completer
from .config import WorkerConfig
from .executor import execute
from .progress import ProgressWriter

if TYPE_CHECKING:
    from prometheus_client import Histogram

__all__ = ["Producer"]

log = logging.getLogger("worker")


class Producer:
    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        url: str,
        config: WorkerConfig,
        registry: Registry,
        completer: Completer,
        progress: ProgressWriter | None = None,
    ) -> None:
        self.pool = pool
        self.progress = progress
        self.url = url
        self.config = config
        self.registry = registry
        self.completer = completer
        self.lease = timedelta(seconds=config.lease)
        self.limits = config.queue_limits
        self.per_cycle = {q: -(-n // config.cycles) for q, n in self.limits.items()}
        self.active: Counter[str] = Counter()  # bodies running, per queue
        self.reserved: Counter[str] = Counter()  # slots a claim in flight may fill
        self.running: dict[int, Job] = {}  # claimed jobs whose outcome is not recorded yet
        self.bodies: dict[int, tuple[asyncio.Task[None], CancelFlag]] = {}  # jobs whose body runs now
        self.tasks: set[asyncio.Task[None]] = set()
        self.in_flight = 0  # cycles between take() and settle(): their jobs are not in `running` yet
        self.claims_sent = 0  # claim cycles started, ever: each one's number
        self.claims_in_flight: set[int] = set()  # the numbers of the claim cycles not back yet (heartbeat.py)
        # What a claim may take: the kinds this worker can run (the built-ins and the app's).
        self.kinds = sorted(name for name, kind in registry.kinds.items() if kind.handler is not None)
        self.stats: Counter[str] = Counter()  # cycles, claimed, recorded, cycle_us: logged at stop
        # What worker/metrics.py reports: plain counters here, read at scrape time.
        self.claimed: Counter[str] = Counter()  # jobs claimed, per queue
        self.outcomes: Counter[tuple[str, str]] = Counter()  # attempts, per (kind, outcome)
        self.claim_seconds: Histogram | None = None  # set when the worker serves its metrics
        self.stopping = False
        self._wakes: list[anyio.Event] = []
        self._claimer: psycopg.AsyncConnection[Any] | None = None  # see _lone_claim
        self._claimer_busy = False

    def wake(self) -> None:
        """Rouse one idle cycle loop. One NOTIFY needs one claim; under load each busy
        cycle rouses the next, so the cycles in flight ramp up with the work."""
        for event in self._wakes:
            if not event.is_set():
                event.set()
                return

    def stop_claiming(self) -> None:
        """Claim no more; the cycle loops go on recording the outcomes of the jobs that are finishing."""
        self.stopping = True
        self.wake()

    def cancel(self, job_id: int) -> bool:
        """An operator cancelled this job while it runs here: stop its body. False if no body of it runs here.

        An async handler's task is cancelled (the executor turns that into a
        `stopped` outcome); a sync handler cannot be interrupted, so it gets
        ctx.cancelled set and its outcome, whenever it comes, is recorded as
        the end of a cancelled body.
        """
        held = self.bodies.get(job_id)
        if held is None:
            return False
        task, cancelled = held
        if cancelled.is_set():
            return True
        cancelled.set()
        job = self.running.get(job_id)
        kind = self.registry.kinds.get(job.kind) if job else None
        if kind is not None and inspect.iscoroutinefunction(kind.handler):
            task.cancel()
        log.info("job %s cancelled while running: stopping its body", job_id, extra={"job_id": job_id})
        return True

    def abandon(self) -> None:
        """Cancel every job still running (shutdown timeout or second signal): the rescue returns them."""
        for task in list(self.tasks):
            task.cancel()

    async def run(self) -> None:
        """Run the cycle loops until cancelled."""
        try:
            async with anyio.create_task_group() as loops:
                for _ in range(self.config.cycles):
                    loops.start_soon(self._cycle_loop)
        finally:
            if self._claimer is not None:
                with anyio.CancelScope(shield=True):
                    await self._claimer.close()

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
        seq = 0
        if wanted:
            self.claims_sent += 1
            seq = self.claims_sent
            self.claims_in_flight.add(seq)
        claimed: dict[str, list[Job]]
        recorded: dict[int, bool] = {}
        sent = time.perf_counter()
        try:
            if not batch and len(wanted) == 1:
                [(queue, n)] = wanted.items()
                claimed = {queue: await self._lone_claim(queue, n)}
            else:
                async with self.pool.connection() as conn:
                    claimed, recorded = await AsyncStore(conn).cycle(
                        Completer.successes(batch), wanted, self.config.id, lease=self.lease, kinds=self.kinds
                    )
        except BaseException:
            self.completer.put_back(batch)
            raise
        finally:
            self.in_flight -= 1
            self.claims_in_flight.discard(seq)
            for queue, n in wanted.items():
                self.reserved[queue] -= n
        if wanted and self.claim_seconds is not None:
            self.claim_seconds.observe(time.perf_counter() - sent)
        self.completer.settle(batch, recorded)
        self.stats.update(cycles=1, recorded=len(batch), claimed=sum(len(g) for g in claimed.values()),
                          cycle_us=int((time.perf_counter() - began) * 1e6))  # fmt: skip
        more = False
        loop = asyncio.get_running_loop()
        carriers: asyncio.Task[dict[int, dict[str, str]]] | None = None
        if tracing.enabled() and any(claimed.values()):
            carriers = loop.create_task(self._trace_carriers([j.id for got in claimed.values() for j in got]))
        for queue, got in claimed.items():
            # A queue that filled every slot asked for may have more waiting.
            more = more or len(got) == wanted[queue]
            self.claimed[queue] += len(got)
            for job in got:
                self.active[queue] += 1
                self.running[job.id] = job
                # A bare asyncio task per job (anyio's start_soon costs several times
                # more); they are tracked so an abandon can cancel them.
                cancelled = CancelFlag()
                task = loop.create_task(self._run_job(job, cancelled, carriers))
                self.tasks.add(task)
                self.bodies[job.id] = (task, cancelled)
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
                return await AsyncStore(conn).claim(queue, n, self.config.id, lease=self.lease, kinds=self.kinds)
        self._claimer_busy = True
        try:
            if self._claimer is None or self._claimer.closed:
                self._claimer = await connect_async(self.url)
            try:
                store = AsyncStore(self._claimer)
                return await store.claim(queue, n, self.config.id, lease=self.lease, kinds=self.kinds)
            except psycopg.OperationalError:
                await self._claimer.close()  # broken: the next lone claim opens a new one
                raise
        finally:
            self._claimer_busy = False

    async def _trace_carriers(self, ids: list[int]) -> dict[int, dict[str, str]]:
        """The trace contexts the claimed jobs' enqueues recorded; none if the database cannot say now
        (the attempts then start traces of their own rather than wait)."""
        try:
            async with self.pool.connection() as conn:
                return await AsyncStore(conn).trace_carriers(ids)
        except (psycopg.Error, TimeoutError) as exc:
            log.warning("could not read the trace context of %d claimed job(s): %s", len(ids), exc)
            return {}

    async def _run_job(
        self, job: Job, cancelled: CancelFlag, carriers: asyncio.Task[dict[int, dict[str, str]]] | None
    ) -> None:
        # The slot is free once the body is done, not once its outcome is
        # committed: the next cycle then records this success and claims a
        # replacement in one transaction. (Freed at the commit, every other
        # cycle found no free slot and only recorded: measured, it halved
        # the drain.) The job stays in `running` until its outcome is recorded.
        try:
            trace = (await carriers).get(job.id) if carriers is not None else None
            report = self.progress.reporter(job) if self.progress is not None else None
            outcome = await execute(
                job, self.registry, self.config.id, self.url, cancelled=cancelled, trace=trace, progress=report
            )
        except BaseException:
            self.running.pop(job.id, None)  # abandoned: nothing to record
            raise
        finally:
            self.bodies.pop(job.id, None)
            self.active[job.queue] -= 1
            self.wake()
        if cancelled.is_set() and outcome.kind != "stopped":
            # A sync body that ran on after its cancel: what is recorded is how it ended.
            ended = outcome.kind + (f": {outcome.error}" if outcome.error else "")
            outcome = dataclasses.replace(outcome, kind="stopped", error=f"the body ended after the cancel ({ended})")
        self.outcomes[job.kind, outcome.kind] += 1
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
