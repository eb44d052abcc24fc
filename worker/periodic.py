"""Periodic jobs: every worker ticks, the database lets one enqueue per period.

Each tick calls ledger.periodic_enqueue for every registered periodic job;
its compare-and-set on ledger.periodic admits one caller per period, so two
or twenty workers still enqueue each periodic job once per period, and no
leader has to be elected or fail over.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio
import psycopg
from psycopg_pool import AsyncConnectionPool

from ledger.errors import LedgerError
from ledger.kinds import Periodic, Registry
from ledger.store_async import AsyncStore

__all__ = ["Scheduler"]

log = logging.getLogger(__name__)


class Scheduler:
    def __init__(self, pool: AsyncConnectionPool[Any], registry: Registry) -> None:
        self.pool = pool
        self.registry = registry

    @property
    def tick(self) -> float:
        """Seconds between ticks: often enough to hit a period within a tenth of it, at most 5 s."""
        periods = [p.every.total_seconds() for p in self.registry.periodic_jobs.values()]
        return max(0.5, min([5.0, *(p / 10 for p in periods)]))

    async def enqueue_due(self, p: Periodic) -> int | None:
        kind = self.registry.get(p.kind)
        async with self.pool.connection() as conn:
            return await AsyncStore(conn).periodic_enqueue(
                p.name,
                p.every,
                p.kind,
                p.args,
                queue=kind.queue,
                priority=kind.priority,
                max_attempts=kind.max_attempts,
            )

    async def run(self) -> None:
        while True:
            for p in list(self.registry.periodic_jobs.values()):
                try:
                    job_id = await self.enqueue_due(p)
                except psycopg.OperationalError as exc:
                    log.warning("periodic %s not enqueued (database unavailable): %s", p.name, exc)
                    break
                except (psycopg.Error, LedgerError) as exc:
                    # One bad periodic job must not stop the worker or the others.
                    log.error("periodic %s not enqueued: %s", p.name, exc)
                    continue
                if job_id is not None:
                    # Debug: the rescue alone would print this every 30 s.
                    log.debug("periodic job enqueued", extra={"periodic": p.name, "kind": p.kind, "job_id": job_id})
            await anyio.sleep(self.tick)
