"""Job kinds the worker tests run: `ledger worker --app tests.jobapp`.

Each execution is written to a side table `executions`, so tests can count
how often a job body really ran (at-least-once, exactly-once checks).
"""

from __future__ import annotations

import time
from threading import Lock

from psycopg_pool import ConnectionPool
from pydantic import BaseModel

from ledger.kinds import JobContext, NoArgs, default_registry

_pools: dict[str, ConnectionPool] = {}
_lock = Lock()

SIDE_TABLE = (
    "CREATE TABLE IF NOT EXISTS executions (job_id bigint, worker text, at timestamptz DEFAULT clock_timestamp())"
)


def record(ctx: JobContext[BaseModel]) -> None:
    with _lock:
        if ctx.database_url not in _pools:
            _pools[ctx.database_url] = ConnectionPool(ctx.database_url, min_size=1, max_size=4, open=True)
    with _pools[ctx.database_url].connection() as conn:
        conn.execute("INSERT INTO executions (job_id, worker) VALUES (%s, %s)", [ctx.id, ctx.worker])


class Sleep(BaseModel):
    seconds: float = 0.0


@default_registry.kind("sleep", args=Sleep, max_attempts=5, timeout=60)
def sleep(ctx: JobContext[Sleep]) -> None:
    time.sleep(ctx.args.seconds)
    record(ctx)


@default_registry.kind("noop")
async def noop(ctx: JobContext[NoArgs]) -> None:
    return None


@default_registry.kind("flaky", max_attempts=3, backoff=lambda attempt: 0.3 * 2 ** (attempt - 1))
def flaky(ctx: JobContext[NoArgs]) -> None:
    """Fails until the table `fixed` exists: a bug fixed, then a replay."""
    record(ctx)
    with _pools[ctx.database_url].connection() as conn:
        fixed = conn.execute("SELECT to_regclass('fixed') IS NOT NULL").fetchone()
    if not (fixed and fixed[0]):
        raise RuntimeError("upstream is down")
