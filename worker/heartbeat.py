"""The heartbeat: renews this worker's lease, and returns to work the claims it lost.

A worker's heartbeat row (ledger.workers) is the lease of all its running
jobs: renewed every lease/3, so a live worker's jobs are never rescued, and
one write keeps them all alive instead of one per job.

A claim can commit while its answer is lost with the connection (the server
restarted after the commit, before the reply). Those jobs are `running`
under a worker whose heartbeat goes on, so the rescue would never take
them: once per heartbeat this service compares the jobs the database says
this worker runs with the ones it holds and rescues the difference.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import anyio
import psycopg
from psycopg_pool import AsyncConnectionPool

from ledger.store_async import AsyncStore

from .producer import Producer

__all__ = ["Heartbeat"]

log = logging.getLogger("worker")


class Heartbeat:
    def __init__(self, pool: AsyncConnectionPool[Any], worker: str, lease: float, producer: Producer) -> None:
        self.pool = pool
        self.worker = worker
        self.lease = timedelta(seconds=lease)
        self.producer = producer

    async def run(self) -> None:
        """Renew the lease every lease/3 until cancelled; a lost database is logged and tried again."""
        while True:
            try:
                async with self.pool.connection() as conn:
                    store = AsyncStore(conn)
                    await store.worker_heartbeat(self.worker, self.lease)
                    await self.return_lost_claims(store)
            except psycopg.OperationalError as exc:
                log.warning("heartbeat failed (database unavailable): %s", exc)
            await anyio.sleep(self.lease.total_seconds() / 3)

    async def return_lost_claims(self, store: AsyncStore) -> None:
        """Rescue jobs running under this worker's name that it does not know it holds.

        It compares only when no cycle is in flight and none started
        meanwhile, because a claim in flight holds jobs the worker has not
        seen yet.
        """
        producer = self.producer
        if producer.in_flight or producer.stopping:
            return
        sent = producer.claims_sent
        held = await store.jobs_running_for_worker(self.worker)
        if producer.in_flight or producer.claims_sent != sent:
            return
        lost = sorted(held - producer.running.keys())
        if not lost:
            return
        meta = {"reason": "claimed, but the claim's answer was lost with the connection"}
        rescued = await store.rescue_orphans(lost, meta)
        log.warning("returned %d job(s) whose claim answer was lost to work: %s", len(rescued), rescued)
