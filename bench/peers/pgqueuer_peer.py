"""PgQueuer 1.6 as a benchmark peer, with the asyncpg driver.

    worker MANAGERS BATCH    MANAGERS PgQueuer instances (one asyncpg connection each), each
                             run with batch_size BATCH

`pgq run module:factory`, the way its documentation starts a worker, runs one
PgQueuer with `run()`'s defaults (batch_size 10) under uvloop when uvloop is
installed (it is a dependency of pgqueuer 1.6); the worker here does the same.
Its own tools/benchmark.py drains with 5 instances; bigger batches raise its
rate further (the tuned row).
"""

from __future__ import annotations

import asyncio
import time

import asyncpg
import uvloop
from pgqueuer import PgQueuer
from pgqueuer.db import AsyncpgDriver
from pgqueuer.models import Job
from pgqueuer.queries import Queries

from bench.peers.common import DATABASE_URL, Peer, chunks, latency_probe, ping, timed, wait_for_go


def _dsn() -> str:
    # asyncpg wants a URL; the harness passes one.
    return DATABASE_URL


async def queries() -> Queries:
    return Queries(AsyncpgDriver(await asyncpg.connect(dsn=_dsn())))


async def setup() -> None:
    await (await queries()).install()


async def enqueue_single(n: str) -> None:
    q = await queries()
    started = time.perf_counter()
    for _ in range(int(n)):
        await q.enqueue("noop", None)
    timed(int(n), started)


async def enqueue_batch(n: str, size: str) -> None:
    q = await queries()
    k = int(size)
    started = time.perf_counter()
    for _ in range(int(n) // k):
        await q.enqueue(["noop"] * k, [None] * k, [0] * k)
    timed(int(n), started)


async def fill(n: str) -> None:
    q = await queries()
    for size in chunks(int(n)):
        await q.enqueue(["noop"] * size, [None] * size, [0] * size)


async def worker(managers: str, batch_size: str = "10") -> None:
    qms = []
    for _ in range(int(managers)):
        qm = PgQueuer(AsyncpgDriver(await asyncpg.connect(dsn=_dsn())))

        @qm.entrypoint("noop")
        async def noop(job: Job) -> None:
            return None

        @qm.entrypoint("ping")
        async def ping_job(job: Job) -> None:
            ping((job.payload or b"").decode())

        qms.append(qm)
    await wait_for_go()
    await asyncio.gather(*(qm.run(batch_size=int(batch_size)) for qm in qms))


async def latency(n: str, gap_ms: str) -> None:
    q = await queries()

    async def one(key: str) -> None:
        await q.enqueue("ping", key.encode())

    await latency_probe(int(n), float(gap_ms), one)


if __name__ == "__main__":
    Peer(setup=setup, enqueue_single=enqueue_single, enqueue_batch=enqueue_batch, fill=fill, worker=worker,
         latency=latency).main(worker_loop=uvloop.run)  # fmt: skip
