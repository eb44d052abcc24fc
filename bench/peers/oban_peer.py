"""oban-py (PyPI `oban` 0.7.0) as a benchmark peer, run under its own Python >= 3.12 (bench/envs.py).

    worker LIMIT POOL DEBOUNCE LOGS

The worker is what `oban start` builds (oban/cli.py): orjson for psycopg's JSON,
a psycopg pool (oban's defaults 1..10), an Oban with one queue `default` of
LIMIT concurrent jobs, the telemetry logger attached (LOGS=log: a JSON line at
INFO for each job's start and stop, what the CLI prints), all under uvloop.
POOL is the pool's maximum size, DEBOUNCE the producer's pause in seconds
between fetches while jobs run (oban's default 0.005). The peer starts Oban
after GO, as Procrastinate's peer starts its worker, so the clock includes
Oban's own start-up (a producer row, a leader election, a first staging pass).
This module must import nothing of ledger: it runs in another environment.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson
import uvloop
from oban import Oban, worker
from oban.schema import install
from oban.telemetry import logger as telemetry_logger
from psycopg.types.json import set_json_dumps, set_json_loads
from psycopg_pool import AsyncConnectionPool

from bench.peers.common import DATABASE_URL, Peer, chunks, latency_probe, ping, timed, wait_for_go

set_json_dumps(orjson.dumps)
set_json_loads(orjson.loads)


@worker(queue="default")
class Noop:
    async def process(self, job: Any) -> None:
        return None


@worker(queue="default")
class Ping:
    async def process(self, job: Any) -> None:
        ping(job.args["key"])


async def pool(max_size: int = 10) -> AsyncConnectionPool:
    p = AsyncConnectionPool(conninfo=DATABASE_URL, min_size=1, max_size=max_size, open=False)
    await p.open()
    await p.wait()
    return p


async def setup() -> None:
    p = await pool()
    await install(p)
    await p.close()


async def client() -> tuple[Oban, AsyncConnectionPool]:
    p = await pool()
    return Oban(pool=p), p  # no queues: client only, as its docs set up an application that enqueues


async def enqueue_single(n: str) -> None:
    oban, p = await client()
    started = time.perf_counter()
    for _ in range(int(n)):
        await oban.enqueue(Noop.new())
    timed(int(n), started)
    await p.close()


async def enqueue_batch(n: str, size: str) -> None:
    oban, p = await client()
    k = int(size)
    started = time.perf_counter()
    for _ in range(int(n) // k):
        await oban.enqueue_many([Noop.new() for _ in range(k)])  # one INSERT for the batch (its docs)
    timed(int(n), started)
    await p.close()


async def fill(n: str) -> None:
    oban, p = await client()
    for size in chunks(int(n)):
        await oban.enqueue_many([Noop.new() for _ in range(size)])
    await p.close()


async def worker_(limit: str = "10", pool_max: str = "10", debounce: str = "0.005", logs: str = "log") -> None:
    logging.basicConfig(level=logging.INFO)  # as the CLI does; the harness keeps stderr only on request
    p = await pool(int(pool_max))
    oban = Oban(pool=p, queues={"default": {"limit": int(limit), "debounce_interval": float(debounce)}})
    if logs == "log":
        telemetry_logger.attach()
    await wait_for_go()
    async with oban:
        await asyncio.Event().wait()  # until SIGTERM


async def latency(n: str, gap_ms: str) -> None:
    oban, p = await client()

    async def one(key: str) -> None:
        await oban.enqueue(Ping.new({"key": key}))

    await latency_probe(int(n), float(gap_ms), one)
    await p.close()


if __name__ == "__main__":
    Peer(setup=setup, enqueue_single=enqueue_single, enqueue_batch=enqueue_batch, fill=fill, worker=worker_,
         latency=latency).main(worker_loop=uvloop.run)  # fmt: skip
