"""The worker runtime: starts the services, and stops them gracefully.

The services, one per file: the producer (worker/producer.py: the fetch
loop, where a claim happens, and the jobs' slots), the completer
(worker/completer.py: where outcomes are recorded), the heartbeat
(worker/heartbeat.py: the lease, and lost claims), the scheduler
(worker/periodic.py: periodic jobs, including the maintenance jobs of
worker/maintenance.py), the listener (worker/listener.py: NOTIFY, and cancels)
and the progress writer (worker/progress.py: what handlers report with
ctx.progress).

Shutdown: the first SIGTERM/SIGINT stops claiming and lets running jobs
finish (and their outcomes be recorded) for up to shutdown_timeout; the
second signal, or the timeout, abandons the rest. Abandoned jobs stay
`running` under this worker's name; removing its heartbeat row lets the next
rescue pass return them to work. Nothing is lost either way.
"""

from __future__ import annotations

import logging
import signal
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
import psycopg
from psycopg_pool import AsyncConnectionPool

from ledger.apps import App
from ledger.db import RECONNECT_TIMEOUT, connect, connection_options, describe, fit_async, through_pooler_async
from ledger.kinds import Registry
from ledger.migrate import migrate
from ledger.store import Store
from ledger.store_async import AsyncStore

from .completer import Completer
from .config import WorkerConfig
from .heartbeat import Heartbeat
from .listener import Listener
from .maintenance import worker_registry
from .periodic import Scheduler
from .producer import Producer
from .progress import ProgressWriter

if TYPE_CHECKING:
    from .metrics import WorkerMetrics

__all__ = ["Worker"]

log = logging.getLogger("worker")


class Worker:
    def __init__(
        self,
        config: WorkerConfig,
        registry: Registry,
        database_url: str,
        *,
        app: App | None = None,
        listen_url: str | None = None,
    ) -> None:
        self.config = config
        self.app = app
        # This worker's own view: the app's kinds, the maintenance handlers, its schedule.
        self.registry = worker_registry(registry, config)
        self.url = database_url
        # LISTEN needs a session of its own: behind a transaction-pooling proxy, a direct
        # connection to PostgreSQL (LEDGER_LISTEN_URL) while the rest goes through the proxy.
        self.listen_url = listen_url
        self.abandoning = anyio.Event()
        self.stop_requested = anyio.Event()
        self.metrics: WorkerMetrics | None = None
        self.metrics_port: int | None = None
        """The port the metrics endpoint is bound to, once it is (config.metrics_port may be 0)."""

    async def run(self) -> int:
        """Run until a signal stops it; 0 when every job finished, 1 when some were abandoned."""
        await anyio.to_thread.run_sync(self._migrate)
        limits = self.config.queue_limits
        total = sum(limits.values())
        anyio.to_thread.current_default_thread_limiter().total_tokens = max(total + 4, 8)
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            self.url,
            # Open up front: the cycles, the heartbeat and the scheduler each hold one at
            # times, and a connection opened on demand costs milliseconds of pickup latency.
            min_size=self.config.cycles + 2,
            max_size=max(self.config.cycles + 4, min(20, total // 2 + 2)),
            kwargs={"autocommit": True, **connection_options(self.url)},
            configure=fit_async,  # prepared statements unless a pooler sits in between
            reconnect_timeout=RECONNECT_TIMEOUT,  # back within seconds of a partition's heal
            # No check on checkout: it would cost a round trip per cycle. A broken
            # connection fails its statement instead; the cycle retries with backoff
            # and the pool replaces connections it finds closed.
            timeout=5.0,  # a cycle waits at most this for a connection, then retries with backoff
            open=False,
        )
        await pool.open(wait=True, timeout=30)
        try:
            completer = Completer(pool, self.registry, self.config.id)
            progress = ProgressWriter(pool)
            producer = Producer(pool, self.url, self.config, self.registry, completer, progress)
            log.info(self._describe())
            if self.config.metrics_port is not None:
                # Imported here: a worker without an endpoint needs no prometheus_client.
                from .metrics import WorkerMetrics

                self.metrics = WorkerMetrics()
                self.metrics.watch(producer)
                self.metrics_port = self.metrics.serve(self.config.metrics_host, self.config.metrics_port)
            async with anyio.create_task_group() as services:
                services.start_soon(self._signals, producer)
                services.start_soon(Heartbeat(pool, self.config.id, self.config.lease, producer).run)
                services.start_soon(Scheduler(pool, self.registry).run)
                services.start_soon(progress.run)
                listen = await self._listen_target(pool)
                if listen is not None:
                    services.start_soon(Listener(listen, list(limits), producer.wake, producer.cancel).run)
                log.info("worker started", extra={"worker": self.config.id})
                # The cycle loops outlive claiming: while stopping they still record
                # the outcomes of the jobs that are finishing.
                services.start_soon(producer.run)
                await self.stop_requested.wait()
                abandoned = await self._drain(producer)
                services.cancel_scope.cancel()
            await self._leave(pool)
        finally:
            if self.metrics is not None:
                self.metrics.close()
            await pool.close()
        stats = producer.stats
        cycles = stats["cycles"] or 1
        log.info("worker stopped", extra={
            "worker": self.config.id, "abandoned": abandoned, "cycles": stats["cycles"],
            "claimed": stats["claimed"], "recorded_in_batches": stats["recorded"],
            "mean_cycle_ms": round(stats["cycle_us"] / cycles / 1000, 2),
        })  # fmt: skip
        return 1 if abandoned else 0

    def _describe(self) -> str:
        """The start-up line: what this worker runs, for whom, against which database."""
        return (
            f"{self.config.describe()} app={self.app or 'none (--app, LEDGER_APP or [tool.ledger] app)'} "
            f"kinds={','.join(sorted(self.registry.kinds))} database={describe(self.url)}"
        )

    async def _listen_target(self, pool: AsyncConnectionPool[Any]) -> str | None:
        """Where the listener connects; None to poll only.

        LEDGER_LISTEN_URL when given. Else DATABASE_URL, unless a pooler sits
        in between: a LISTEN sent through transaction pooling lands on a
        server connection the proxy then lends to other clients, and this
        worker would hear nothing (while they hear its notifications). So it
        polls, and says how to be woken at once instead.
        """
        if self.config.poll_only:
            return None
        if self.listen_url:
            log.info("listener connects to %s (LEDGER_LISTEN_URL)", describe(self.listen_url))
            return self.listen_url
        try:
            async with pool.connection() as conn:
                pooled = await through_pooler_async(conn)
        except psycopg.OperationalError:
            return self.url  # the listener retries on its own
        if pooled:
            log.warning(
                "DATABASE_URL reaches PostgreSQL through a connection pooler, where LISTEN cannot work: "
                "polling every %gs instead; set LEDGER_LISTEN_URL to a direct connection to be woken at once "
                "(or --poll-only to say so)",
                self.config.poll_interval,
            )
            return None
        return self.url

    def _migrate(self) -> None:
        """The schema where it is missing (in development), then this worker's kinds' and queues' limits."""
        with connect(self.url) as conn:
            result = migrate(conn)
            limits = self.registry.limits()
            store = Store(conn)
            for scope, limit in limits.items():
                store.limit_set(scope, limit)
        if result.applied:
            log.info(str(result))
        if limits:
            log.info("limits declared", extra={"limits": sorted(limits)})

    async def _signals(self, producer: Producer) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                name = signal.Signals(signum).name
                if not producer.stopping:
                    log.info(
                        "worker stopping on %s: no new jobs; waiting up to %gs for %d running job(s)",
                        name,
                        self.config.shutdown_timeout,
                        len(producer.running),
                    )
                    producer.stop_claiming()
                    self.stop_requested.set()
                else:
                    log.warning("second %s: abandoning %d running job(s) to the rescue", name, len(producer.running))
                    self.abandoning.set()

    async def _drain(self, producer: Producer) -> int:
        """Wait for running jobs until the timeout or a second signal; cancel (abandon) what is left."""
        if producer.running or producer.in_flight:
            with anyio.move_on_after(self.config.shutdown_timeout):
                async with anyio.create_task_group() as waiter:

                    async def until_abandoned() -> None:
                        await self.abandoning.wait()
                        waiter.cancel_scope.cancel()

                    async def until_idle() -> None:
                        # Polled, not signalled: idle needs both no running job and no
                        # cycle in flight (which may still hand over claimed jobs).
                        while producer.running or producer.in_flight:
                            await anyio.sleep(0.05)
                        waiter.cancel_scope.cancel()

                    waiter.start_soon(until_abandoned)
                    waiter.start_soon(until_idle)
        left = len(producer.running)
        if left:
            log.warning(
                "abandoning %d job(s) still running: %s; the rescue will return them to work",
                left,
                sorted(producer.running),
            )
            producer.abandon()
        return left

    async def _leave(self, pool: AsyncConnectionPool[Any]) -> None:
        """Drop this worker's heartbeat so anything it abandoned is rescued at the next pass."""
        try:
            with anyio.fail_after(5):
                async with pool.connection() as conn:
                    await AsyncStore(conn).worker_stop(self.config.id)
        except (psycopg.Error, TimeoutError) as exc:
            log.warning("could not remove this worker's heartbeat (its lease will expire instead): %s", exc)
