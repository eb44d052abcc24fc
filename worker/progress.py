"""The progress writer: keeps what handlers report with ctx.progress(...), the latest of each job every half second.

A handler may report as often as it likes (a loop over a million rows); the
database sees at most one write per job per interval, the latest report
winning. Reports come from the event loop and from sync handlers' threads,
hence the lock. A report for an attempt that no longer runs (it ended, or was
cancelled or rescued meanwhile) is dropped by ledger.job_progress_set.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import anyio
import psycopg
from psycopg_pool import AsyncConnectionPool

from ledger.jsoncheck import dump_json
from ledger.models import Job
from ledger.store_async import AsyncStore

__all__ = ["ProgressWriter"]

log = logging.getLogger(__name__)


class ProgressWriter:
    def __init__(self, pool: AsyncConnectionPool[Any], every: float = 0.5) -> None:
        self.pool = pool
        self.every = every
        self._latest: dict[int, tuple[int, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def reporter(self, job: Job) -> Callable[[dict[str, Any]], None]:
        """What ctx.progress calls for this attempt: checks the fields are JSON (InvalidArguments, in the
        handler, naming the field) and keeps them as the job's latest."""

        def report(fields: dict[str, Any]) -> None:
            dump_json(fields, "progress")
            with self._lock:
                self._latest[job.id] = (job.attempt, fields)

        return report

    async def run(self) -> None:
        """Write the latest reports every interval until cancelled."""
        while True:
            await anyio.sleep(self.every)
            await self.flush()

    async def flush(self) -> None:
        with self._lock:
            latest, self._latest = self._latest, {}
        if not latest:
            return
        try:
            async with self.pool.connection() as conn:
                store = AsyncStore(conn)
                for job_id, (attempt, value) in latest.items():
                    await store.progress_set(job_id, attempt, value)
        except psycopg.OperationalError as exc:
            log.warning("progress of %d job(s) not written (database unavailable): %s", len(latest), exc)
