"""awa (PyPI `awa-pg` 0.6.9) as a benchmark peer: its AsyncClient, a Rust runtime driven through PyO3.

    worker                        documented defaults: AsyncClient(url) (a pool of 10), start() with
                                  no queue list, so each registered queue gets 10 workers, 200 ms poll
    worker W POOL POLL [CLAIMERS] W workers on queue `default`, a pool of POOL connections, POLL ms
                                  poll, CLAIMERS claim loops (bench/README.md: the tuned row)

Fresh installs run on awa's queue-storage engine: `awa migrate` installs it and the first
worker of a fresh database switches to it (`awa.storage_auto_finalize_if_fresh`); `setup`
does both steps, so enqueues before the first worker (the `fill` of a drain) go there too.
Queue-storage stripes are a setting of producers and workers alike (`enqueue_many_copy` takes
the same count), so every verb reads them from BENCH_AWA_STRIPES (default 1, awa's default).
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass

import awa

from bench.peers.common import DATABASE_URL, Peer, chunks, latency_probe, ping, timed, wait_for_go

STRIPES = int(os.environ.get("BENCH_AWA_STRIPES", "1"))


@dataclass
class Noop:
    pass


@dataclass
class Ping:
    key: str


def client(pool: int | None = None) -> awa.AsyncClient:
    c = awa.AsyncClient(DATABASE_URL) if pool is None else awa.AsyncClient(DATABASE_URL, max_connections=pool)

    @c.task(Noop, kind="noop")
    async def noop(job: awa.Job[Noop]) -> None:
        return None

    @c.task(Ping, kind="ping")
    async def ping_job(job: awa.Job[Ping]) -> None:
        ping(job.args.key)

    return c


async def setup() -> None:
    async with awa.AsyncClient(DATABASE_URL) as c:
        await c.migrate()
        tx = await c.transaction()
        await tx.fetch_one("SELECT awa.storage_auto_finalize_if_fresh('awa') AS fresh")
        await tx.commit()


async def enqueue_single(n: str) -> None:
    async with awa.AsyncClient(DATABASE_URL) as c:
        started = time.perf_counter()
        for _ in range(int(n)):
            await c.insert(Noop(), kind="noop")
        timed(int(n), started)


async def _copy(c: awa.AsyncClient, size: int) -> None:
    # COPY ingestion: the producer path its README gives for high-volume Python producers.
    await c.enqueue_many_copy([Noop()] * size, kind="noop", queue_storage_queue_stripe_count=STRIPES)


async def enqueue_batch(n: str, size: str) -> None:
    async with awa.AsyncClient(DATABASE_URL) as c:
        k = int(size)
        started = time.perf_counter()
        for _ in range(int(n) // k):
            await _copy(c, k)
        timed(int(n), started)


async def fill(n: str) -> None:
    async with awa.AsyncClient(DATABASE_URL) as c:
        for size in chunks(int(n)):
            await _copy(c, size)


async def worker(workers: str = "", pool: str = "", poll_ms: str = "200", claimers: str = "1") -> None:
    c = client(int(pool) if pool else None)
    await wait_for_go()
    if workers:
        queue = {"name": "default", "max_workers": int(workers), "claimers": int(claimers)}
        await c.start([queue], poll_interval_ms=int(poll_ms), queue_storage_queue_stripe_count=STRIPES)
    else:
        await c.start()  # its default: the queues the tasks name, 10 workers each
    await asyncio.Event().wait()  # until SIGTERM


async def latency(n: str, gap_ms: str) -> None:
    async with awa.AsyncClient(DATABASE_URL) as c:

        async def one(key: str) -> None:
            await c.insert(Ping(key=key), kind="ping")

        await latency_probe(int(n), float(gap_ms), one)


if __name__ == "__main__":
    Peer(setup=setup, enqueue_single=enqueue_single, enqueue_batch=enqueue_batch, fill=fill, worker=worker,
         latency=latency).main()  # fmt: skip
