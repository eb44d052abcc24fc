"""Job kinds the worker tests run: `ledger worker --app tests.jobapp`.

Each execution is written to a side table `executions`, so tests can count
how often a job body really ran (at-least-once, exactly-once checks).
"""

from __future__ import annotations

import time
from datetime import timedelta
from threading import Lock

from psycopg_pool import ConnectionPool
from pydantic import BaseModel

from ledger.db import connection_options, fit
from ledger.kinds import JobContext, Limit, NoArgs, default_registry

_pools: dict[str, ConnectionPool] = {}
_lock = Lock()

SIDE_TABLE = (
    "CREATE TABLE IF NOT EXISTS executions (job_id bigint, worker text, at timestamptz DEFAULT clock_timestamp())"
)


def _pool(url: str) -> ConnectionPool:
    with _lock:
        if url not in _pools:
            # The project's connection options: prepared statements only on a direct connection
            # (these bodies run through PgBouncer too) and TCP timeouts (and through a partition).
            _pools[url] = ConnectionPool(
                url, min_size=1, max_size=4, kwargs=connection_options(url), configure=fit, open=True
            )
    return _pools[url]


def record(ctx: JobContext[BaseModel]) -> None:
    with _pool(ctx.database_url).connection() as conn:
        conn.execute("INSERT INTO executions (job_id, worker) VALUES (%s, %s)", [ctx.id, ctx.worker])


class Sleep(BaseModel):
    seconds: float = 0.0


@default_registry.kind("sleep", args=Sleep, max_attempts=5, timeout=60)
def sleep(ctx: JobContext[Sleep]) -> None:
    time.sleep(ctx.args.seconds)
    record(ctx)


@default_registry.kind("errand", args=Sleep, max_attempts=5, timeout=60)
def errand(ctx: JobContext[Sleep]) -> None:
    """Does its side effect first, then takes its time: a worker cut off from the
    database meanwhile finishes it anyway and holds a success it cannot record."""
    record(ctx)
    time.sleep(ctx.args.seconds)


@default_registry.kind("noop")
async def noop(ctx: JobContext[NoArgs]) -> None:
    return None


@default_registry.kind("flaky", max_attempts=3, backoff=lambda attempt: 0.3 * 2 ** (attempt - 1))
def flaky(ctx: JobContext[NoArgs]) -> None:
    """Fails until the table `fixed` exists: a bug fixed, then a replay."""
    record(ctx)
    with _pool(ctx.database_url).connection() as conn:
        fixed = conn.execute("SELECT to_regclass('fixed') IS NOT NULL").fetchone()
    if not (fixed and fixed[0]):
        raise RuntimeError("upstream is down")


@default_registry.kind("snoozer")
def snoozer(ctx: JobContext[NoArgs]) -> None:
    """Snoozes on its first attempt, succeeds on the next."""
    from datetime import UTC, datetime, timedelta

    from ledger.kinds import JobSnooze

    record(ctx)
    if ctx.job.max_attempts == 5:  # not snoozed yet (each snooze adds one)
        raise JobSnooze(datetime.now(UTC) + timedelta(milliseconds=200))


@default_registry.kind("quitter")
async def quitter(ctx: JobContext[NoArgs]) -> None:
    from ledger.kinds import JobCancel

    raise JobCancel("nothing left to do")


@default_registry.kind("hopeless", max_attempts=5)
async def hopeless(ctx: JobContext[NoArgs]) -> None:
    from ledger.kinds import JobDiscard

    raise JobDiscard("the account was deleted; retrying cannot help")


@default_registry.kind("sluggish", timeout=0.3, max_attempts=1)
async def sluggish(ctx: JobContext[NoArgs]) -> None:
    import asyncio

    await asyncio.sleep(30)


@default_registry.on_error
def alert(job: object, error: BaseException, will_retry: bool) -> None:
    """The application's error hook: here it leaves a line in the side table."""
    from ledger.models import Job

    assert isinstance(job, Job)
    import os

    with _pool(os.environ["DATABASE_URL"]).connection() as conn:
        conn.execute("INSERT INTO executions (job_id, worker) VALUES (%s, %s)", [job.id, f"hook:{will_retry}"])


class Free(BaseModel):
    """Any JSON object: for the hostile-input tests."""

    model_config = {"extra": "allow"}


@default_registry.kind("free", args=Free)
async def free(ctx: JobContext[Free]) -> None:
    return None


_live = 0


@default_registry.kind("crowd", queue="crowd")
def crowd(ctx: JobContext[NoArgs]) -> None:
    """Leaves how many `crowd` bodies ran at once in this worker when it started: a concurrency check."""
    global _live
    with _lock:
        _live += 1
        peak = _live
    try:
        with _pool(ctx.database_url).connection() as conn:
            conn.execute("INSERT INTO executions (job_id, worker) VALUES (%s, %s)", [ctx.id, f"live:{peak}"])
        time.sleep(0.05)
    finally:
        with _lock:
            _live -= 1


@default_registry.kind("dawdle", max_attempts=3)
async def dawdle(ctx: JobContext[NoArgs]) -> None:
    """An async body that would run for a minute: an operator's cancel must stop it."""
    import asyncio

    await asyncio.sleep(60)
    record(ctx)


@default_registry.kind("patient", max_attempts=3)
def patient(ctx: JobContext[NoArgs]) -> None:
    """A sync body that works in small steps and stops early once its job is cancelled."""
    for _ in range(600):
        if ctx.cancelled.is_set():
            return
        time.sleep(0.05)
    record(ctx)


@default_registry.kind("blip", args=Sleep, max_attempts=3)
def blip(ctx: JobContext[Sleep]) -> None:
    """1-20 ms of work: the steady backlog of the lost-claim test."""
    time.sleep(ctx.args.seconds)


class Customer(BaseModel):
    customer: str
    seconds: float = 0.05


def record_span(ctx: JobContext[Customer], what: str) -> None:
    with _pool(ctx.database_url).connection() as conn:
        conn.execute("INSERT INTO executions (job_id, worker) VALUES (%s, %s)", [ctx.id, f"{what}:{ctx.args.customer}"])


@default_registry.kind("export", args=Customer, queue="limited", limit=Limit(concurrency=1, key="customer"))
def export(ctx: JobContext[Customer]) -> None:
    """At most one export per customer runs at once across the fleet: its start and end go to the side table."""
    record_span(ctx, "start")
    time.sleep(ctx.args.seconds)
    record_span(ctx, "end")


@default_registry.kind(
    "charge", args=Customer, queue="limited", limit=Limit(rate=3, per=timedelta(seconds=1), key="customer")
)
async def charge(ctx: JobContext[Customer]) -> None:
    """At most three charges per customer start in any second."""
    return None


class Answer(BaseModel):
    n: int
    seconds: float = 0.0
    huge: bool = False


@default_registry.kind("answer", args=Answer, max_attempts=3)
async def answer(ctx: JobContext[Answer]) -> dict[str, object]:
    """Returns its result: what client.wait gives back."""
    import asyncio

    await asyncio.sleep(ctx.args.seconds)
    if ctx.args.huge:
        return {"blob": "x" * 70_000}
    return {"answer": ctx.args.n * 2}


@default_registry.kind("steps", max_attempts=1)
def steps(ctx: JobContext[NoArgs]) -> str:
    """Reports its progress step by step."""
    for done in range(1, 6):
        ctx.progress(done=done, total=5, message=f"step {done}")
        time.sleep(0.4)
    return "done"
