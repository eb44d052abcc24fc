"""What the store's methods send: the parameters of its named queries, built from plain Python values.

Pure (no I/O), shared by AsyncStore and the Store generated from it, so the
two doors send byte for byte the same statements.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from psycopg.types.json import Jsonb

from .defaults import LEASE
from .models import Job

__all__ = [
    "Cycle",
    "EnqueueRow",
    "Success",
    "UniqueRow",
    "claim_params",
    "command_params",
    "enqueue_one_params",
    "enqueue_params",
    "succeed_params",
]

EnqueueRow = tuple[str, dict[str, Any] | str, str, int, int, datetime | None]
"""(kind, args, queue, priority, max_attempts, run_at) of one job to enqueue.

args is a dict, or its JSON text when the caller has dumped it already (the
client has: it checks the text it sends)."""


class Success(NamedTuple):
    """One successful attempt for the batch completer: the job at the version its claim returned.

    duration_ms and wait_ms (due -> started) feed the metrics' histograms; result is the
    handler's return value as JSON text (None: it returned nothing).
    """

    job_id: int
    version: int
    duration_ms: float | None = None
    wait_ms: float | None = None
    result: str | None = None


class Cycle(NamedTuple):
    """What one worker cycle brought back: the jobs claimed per queue, and per success whether it was recorded."""

    claimed: dict[str, list[Job]]
    recorded: dict[int, bool]


UniqueRow = tuple[str, timedelta | None, Sequence[str]]
"""(key, period, states) of one unique job: the key as the client computed it (the period's bucket is
added by the database, on its clock)."""


def _args_text(args: dict[str, Any] | str) -> str:
    """A job's args as the JSON text sent: the client's own dump when it made one (see EnqueueRow)."""
    return args if isinstance(args, str) else json.dumps(args)


def enqueue_params(
    rows: Sequence[EnqueueRow], metadata: dict[str, Any] | None, unique: Sequence[UniqueRow | None] | None = None
) -> dict[str, Any]:
    """Parameters of the job_enqueue_many query: one array per column, the args as one JSON array.

    The unique arrays go only when some job has a rule: NULL otherwise, and the database skips them.
    """
    args = ",".join(_args_text(a) for _, a, *_ in rows)
    has_unique = unique is not None and any(u is not None for u in unique)
    uniq = list(unique or []) if has_unique else []
    return {
        "unique_keys": [u[0] if u else None for u in uniq] if has_unique else None,
        "unique_periods": [u[1] if u else None for u in uniq] if has_unique else None,
        "unique_states": [",".join(u[2]) if u else None for u in uniq] if has_unique else None,
        "kinds": [r[0] for r in rows],
        "args": f"[{args}]",
        "queues": [r[2] for r in rows],
        "priorities": [r[3] for r in rows],
        "max_attempts": [r[4] for r in rows],
        "run_ats": [r[5] for r in rows],
        "metadata": Jsonb(metadata or {}),
    }


def enqueue_one_params(row: EnqueueRow, metadata: dict[str, Any] | None) -> dict[str, Any]:
    """Parameters of the job_enqueue query: one job, as scalars."""
    kind, args, queue, priority, max_attempts, run_at = row
    return {
        "kind": kind, "args": _args_text(args), "queue": queue,
        "priority": priority, "max_attempts": max_attempts, "run_at": run_at, "metadata": Jsonb(metadata or {}),
    }  # fmt: skip


def claim_params(
    queue: str, n: int, worker: str, lease: timedelta = LEASE, kinds: Sequence[str] | None = None
) -> dict[str, Any]:
    """Parameters of job_claim; `kinds` None claims any kind."""
    return {
        "queue": queue, "n": n, "worker": worker, "lease": lease, "metadata": Jsonb({}),
        "kinds": list(kinds) if kinds is not None else None,
    }  # fmt: skip


def succeed_params(successes: Sequence[Success | tuple[int, int]], worker: str | None) -> dict[str, Any]:
    """Parameters of job_succeed_many: plain arrays, which cost less to send and parse than JSON per job."""
    done = [s if isinstance(s, Success) else Success(*s) for s in successes]
    return {
        "ids": [s.job_id for s in done],
        "versions": [s.version for s in done],
        "worker": worker,
        "duration_ms": [s.duration_ms for s in done],
        "wait_ms": [s.wait_ms for s in done],
        # Only when some job returned something: most batches send a NULL.
        "results": [s.result for s in done] if any(s.result is not None for s in done) else None,
    }


def command_params(
    job_id: int, expected_version: int | None, metadata: dict[str, Any] | None, **extra: Any
) -> dict[str, Any]:
    """Parameters of a single-job command (succeed, fail, cancel, snooze, replay)."""
    return {"id": job_id, "expected_version": expected_version, "metadata": Jsonb(metadata or {}), **extra}
