"""Retention: prune the history of jobs that finished long ago, a partition at a time.

The work is ledger.events_prune_partition (schema.sql), which drops or rewrites
whole partitions and never deletes event rows. This module walks the
partitions, one transaction each so that a partition's locks are held only
for its own swap, with a lock timeout so a long transaction elsewhere makes
the prune skip that partition (to be tried next time) instead of stalling
every worker behind its lock request.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from .errors import InvalidArguments
from .models import Partition
from .store import Store

__all__ = ["PartitionOutcome", "PruneReport", "prune"]


@dataclass(frozen=True)
class PartitionOutcome:
    name: str
    lo: int
    hi: int
    action: str
    """dropped, rewritten, kept (under half its jobs could go), open (still taking new jobs), busy (lock timeout)."""
    jobs_removed: int = 0
    events_removed: int = 0
    jobs_kept: int | None = None


@dataclass
class PruneReport:
    cutoff: datetime
    partitions: list[PartitionOutcome] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def jobs_removed(self) -> int:
        return sum(p.jobs_removed for p in self.partitions)

    @property
    def events_removed(self) -> int:
        return sum(p.events_removed for p in self.partitions)

    def count(self, action: str) -> int:
        return sum(1 for p in self.partitions if p.action == action)

    def __str__(self) -> str:
        return (
            f"pruned {self.jobs_removed} job(s) and {self.events_removed} event(s) finished before "
            f"{self.cutoff:%Y-%m-%d %H:%M:%S%z} in {self.seconds:.2f}s: "
            f"{self.count('dropped')} partition(s) dropped, {self.count('rewritten')} rewritten, "
            f"{self.count('kept')} kept, {self.count('busy')} busy"
        )


def prune(
    store: Store,
    older_than: timedelta,
    *,
    purge_discarded: bool = False,
    lock_timeout: timedelta = timedelta(milliseconds=500),
    attempts: int = 3,
) -> PruneReport:
    """Remove the jobs that finished more than `older_than` ago, with their events.

    Succeeded and cancelled jobs go; discarded jobs keep their history unless
    `purge_discarded`. The store's connection must be autocommit: each partition is
    its own transaction. A partition whose lock is not granted within
    `lock_timeout` (a long transaction is reading or writing it) is tried
    `attempts` times, then reported busy and left for the next prune: while
    the prune waits for its lock, appends queue behind it, so the wait is kept short.
    Keep `lock_timeout` below the server's deadlock_timeout (1 s by default): in
    a lock cycle with a worker, the prune then gives up first, not the worker.
    """
    if older_than < timedelta(0):
        raise InvalidArguments("older_than must not be negative", ["older_than"])
    started = time.perf_counter()
    report = PruneReport(cutoff=store.db_now_minus(older_than))
    for part in store.events_partitions():
        report.partitions.append(_prune_one(store, part, report.cutoff, purge_discarded, lock_timeout, attempts))
    report.seconds = time.perf_counter() - started
    return report


def _prune_one(
    store: Store,
    part: Partition,
    cutoff: datetime,
    purge_discarded: bool,
    lock_timeout: timedelta,
    attempts: int,
) -> PartitionOutcome:
    for attempt in range(attempts):
        out = store.events_prune_partition(part.lo, cutoff, purge_discarded=purge_discarded, lock_timeout=lock_timeout)
        if out is None:  # its locks were not granted in time: a long transaction holds them
            time.sleep(0.1 * (attempt + 1))
            continue
        return PartitionOutcome(
            part.name, part.lo, part.hi, out["action"], out["jobs_removed"], out["events_removed"], out["jobs_kept"]
        )
    return PartitionOutcome(part.name, part.lo, part.hi, "busy")
