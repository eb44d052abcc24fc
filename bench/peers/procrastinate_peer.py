"""Procrastinate 3.10 as a benchmark peer: PsycopgConnector, async tasks, LISTEN/NOTIFY on (its default).

    worker CONCURRENCY [POOL]   CONCURRENCY sub-workers; POOL the connector's pool size
                                (psycopg_pool's default when absent: 4 connections)

Its docs ("Mind the size of your PostgreSQL pool") ask, for short jobs, for a
pool of as many connections as the concurrency plus one: the tuned row's POOL.
"""

from __future__ import annotations

import time

import procrastinate

from bench.peers.common import DATABASE_URL, Peer, chunks, latency_probe, ping, timed, wait_for_go


def make_app(pool: int | None = None) -> procrastinate.App:
    sizes = {} if pool is None else {"min_size": pool, "max_size": pool}
    return procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=DATABASE_URL, **sizes))


app = make_app()


@app.task(name="noop")
async def noop() -> None:
    return None


@app.task(name="ping")
async def ping_task(key: str) -> None:
    ping(key)


async def setup() -> None:
    async with app.open_async():
        await app.schema_manager.apply_schema_async()


async def enqueue_single(n: str) -> None:
    async with app.open_async():
        started = time.perf_counter()
        for _ in range(int(n)):
            await noop.defer_async()
        timed(int(n), started)


async def enqueue_batch(n: str, size: str) -> None:
    async with app.open_async():
        batch = [{}] * int(size)
        started = time.perf_counter()
        for _ in range(int(n) // int(size)):
            await noop.batch_defer_async(*batch)
        timed(int(n), started)


async def fill(n: str) -> None:
    async with app.open_async():
        for size in chunks(int(n)):
            await noop.batch_defer_async(*([{}] * size))


async def worker(concurrency: str, pool: str = "") -> None:
    worker_app = app if not pool else app.with_connector(make_app(int(pool)).connector)
    async with worker_app.open_async():
        await wait_for_go()
        await worker_app.run_worker_async(concurrency=int(concurrency), wait=True)


async def latency(n: str, gap_ms: str) -> None:
    async with app.open_async():

        async def one(key: str) -> None:
            await ping_task.defer_async(key=key)

        await latency_probe(int(n), float(gap_ms), one)


if __name__ == "__main__":
    Peer(setup=setup, enqueue_single=enqueue_single, enqueue_batch=enqueue_batch, fill=fill, worker=worker,
         latency=latency).main()  # fmt: skip
