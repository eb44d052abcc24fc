"""The heartbeat: renews this worker's lease, returns to work the claims it lost, and notices cancels.

A worker's heartbeat row (ledger.workers) is the lease of all its running
jobs: renewed every lease/3, so a live worker's jobs are never rescued, and
one write keeps them all alive instead of one per job. The row also says
which queues and kinds the worker serves (ledger.kinds_unserved).

Once per beat it compares the jobs the database says this worker runs with
the ones it holds:
- **Lost claims.** A claim can commit while its answer is lost with the
  connection (the server restarted after the commit, before the reply).
  Those jobs are `running` under a worker whose heartbeat goes on, so the
  lease-based rescue would never take them. A job the database holds in
  this worker's name but the worker does not is suspect, since a claim in
  flight may be about to hand it over; it is lost if it is still suspect at
  the next beat and every claim that was in flight at the first has come
  back. So a lost claim returns to work within two beats, however busy the
  worker is (before, the check waited for a moment with no claim in flight,
  which under a steady backlog never came).
- **Cancels.** A body still running here whose job the database no longer
  shows running for this worker, at two beats in a row, was cancelled (or
  rescued) behind its back: it is stopped as a NOTIFY would have (a worker
  without LISTEN, or one that missed the notification, still learns).
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
        self._suspects: set[int] = set()  # held in the database, not here, at the last beat
        self._watermark = 0  # the last claim cycle started before that beat
        self._gone: set[int] = set()  # running here, not in the database, at the last beat

    async def run(self) -> None:
        """Renew the lease every lease/3 until cancelled; a lost database is logged and tried again."""
        while True:
            try:
                async with self.pool.connection() as conn:
                    store = AsyncStore(conn)
                    await store.worker_heartbeat(
                        self.worker, self.lease, queues=list(self.producer.limits), kinds=self.producer.kinds
                    )
                    await self.check(store)
            except psycopg.OperationalError as exc:
                log.warning("heartbeat failed (database unavailable): %s", exc)
            await anyio.sleep(self.lease.total_seconds() / 3)

    async def check(self, store: AsyncStore) -> None:
        """Compare the jobs the database says this worker runs with the ones it holds (see the module)."""
        producer = self.producer
        if producer.stopping:
            return
        started_before = producer.claims_sent
        held = await store.jobs_running_for_worker(self.worker)
        await self._return_lost_claims(store, held - producer.running.keys(), started_before)
        self._stop_cancelled(set(producer.bodies) - held)

    async def _return_lost_claims(self, store: AsyncStore, suspects: set[int], started_before: int) -> None:
        # Every claim in flight at the last beat has come back: a job suspect then and now is lost.
        settled = all(seq > self._watermark for seq in self.producer.claims_in_flight)
        if not settled:
            return  # a claim from before the last beat is still out (a hung connection): decide next beat
        lost = sorted(suspects & self._suspects)
        self._suspects, self._watermark = suspects - set(lost), started_before
        if not lost:
            return
        reason = (
            f"claimed by worker {self.worker}, which is alive but never received the claim's answer "
            "(its connection broke after the commit); returned to work without running"
        )
        rescued = await store.rescue_orphans(lost, reason, {"reason": "lost claim"})
        log.warning("returned %d job(s) whose claim answer was lost to work: %s", len(rescued), rescued)

    def _stop_cancelled(self, gone: set[int]) -> None:
        # Twice in a row: a body that started after the database was read is not mistaken for a cancel.
        for job_id in sorted(gone & self._gone):
            self.producer.cancel(job_id)
        self._gone = gone
