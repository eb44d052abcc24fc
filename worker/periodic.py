"""Periodic jobs and cron schedules: every worker ticks, the database lets one enqueue per period or slot.

Each tick calls ledger.periodic_enqueue for every registered periodic job;
its compare-and-set on ledger.periodic admits one caller per period, so two
or twenty workers still enqueue each periodic job once per period, and no
leader has to be elected or fail over.

Cron schedules work the same way with slots instead of periods. A worker
declares its app's schedules at start (ledger.schedule_declare), then reads
them (one small table), and for each whose next_run_at has come computes,
on the database's clock, which slot is due and which comes next
(ledger/cron.py `plan`, pure), and asks ledger.schedule_fire to move
next_run_at from the value it read to the next slot and enqueue the due
one. The first worker's move wins; the others find next_run_at moved and do
nothing. Between ticks it sleeps until the earliest next slot (at most 5 s),
so a slot's job is enqueued within milliseconds of its time.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio
import psycopg
from psycopg_pool import AsyncConnectionPool

from ledger.cron import plan, zone
from ledger.errors import LedgerError
from ledger.kinds import Periodic, Registry, Schedule
from ledger.models import ScheduleRow
from ledger.store_async import AsyncStore

__all__ = ["Scheduler"]

log = logging.getLogger(__name__)

MAX_SLEEP = 5.0
"""Seconds between two reads of the schedules at most: how soon a pause, a resume or a schedule
another worker declared is seen."""


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
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(self._periodic)
            tasks.start_soon(self._schedules)

    async def _periodic(self) -> None:
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

    # ------------------------------------------------------------ cron schedules

    async def declare(self) -> None:
        """Declare this app's schedules (a changed definition replaces the one in the database)."""
        async with self.pool.connection() as conn:
            store = AsyncStore(conn)
            for s in self.registry.schedules.values():
                kind = self.registry.get(s.kind)
                await store.schedule_declare(
                    s.name, s.cron, s.timezone, s.kind, s.args, queue=kind.queue, priority=kind.priority,
                    max_attempts=kind.max_attempts, missed=s.missed, grace=s.grace,
                )  # fmt: skip
        if self.registry.schedules:
            log.info("schedules declared", extra={"schedules": sorted(self.registry.schedules)})

    async def _schedules(self) -> None:
        declared = False
        while True:
            try:
                if not declared and self.registry.schedules:
                    await self.declare()
                declared = True
                pause = await self.fire_due()
            except psycopg.OperationalError as exc:
                log.warning("schedules not looked at (database unavailable): %s", exc)
                pause = MAX_SLEEP
            except (psycopg.Error, LedgerError) as exc:
                log.error("schedules not looked at: %s", exc)
                pause = MAX_SLEEP
            await anyio.sleep(pause)

    async def fire_due(self) -> float:
        """Enqueue the due slots of this app's schedules; seconds until the next one (at most MAX_SLEEP)."""
        mine = self.registry.schedules
        async with self.pool.connection() as conn:
            store = AsyncStore(conn)
            if not mine:
                return MAX_SLEEP
            rows, now = await store.schedules()
            upcoming = [now.timestamp() + MAX_SLEEP]
            for row in rows:
                schedule = mine.get(row.name)
                if schedule is None or row.paused or (row.cron, row.timezone) != (schedule.cron, schedule.timezone):
                    continue  # another app's, paused, or declared otherwise by a newer worker
                if row.next_run_at > now:
                    upcoming.append(row.next_run_at.timestamp())
                    continue
                try:
                    following = await self._fire(store, schedule, row, now)
                except LedgerError as exc:  # one bad schedule must not stop the others
                    log.error("schedule %s not enqueued: %s", row.name, exc)
                    continue
                if following is not None:
                    upcoming.append(following)
        return max(0.01, min(upcoming) - now.timestamp())

    async def _fire(self, store: AsyncStore, schedule: Schedule, row: ScheduleRow, now: Any) -> float | None:
        p = plan(schedule.cron, zone(schedule.timezone), row.next_run_at, now, schedule.missed, schedule.grace)
        taken, job_id = await store.schedule_fire(
            row.name, row.cron, row.timezone, expected=row.next_run_at, following=p.following, slot=p.fire,
            missed=p.missed, first_missed=p.first_missed, last_missed=p.last_missed,
        )  # fmt: skip
        if taken and p.missed:
            log.warning(
                "schedule %s: %d slot(s) passed while no worker ran (%s to %s); %s",
                row.name, p.missed, p.first_missed, p.last_missed,
                f"job {job_id} runs once for them" if schedule.missed == "once" and job_id else "skipped",
            )  # fmt: skip
        if taken and job_id is not None:
            log.info("scheduled job enqueued", extra={"schedule": row.name, "slot": str(p.fire), "job_id": job_id})
        return p.following.timestamp() if p.following is not None else None
