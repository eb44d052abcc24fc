"""ledger as a benchmark peer: its real client and its real worker runtime."""

from __future__ import annotations

import os
import time

import anyio
from pydantic import BaseModel

from bench.peers.common import DATABASE_URL, Peer, chunks, latency_probe, ping, timed, wait_for_go
from ledger.client import AsyncClient
from ledger.db import connect
from ledger.kinds import JobContext, NoArgs, builtin_registry
from ledger.logs import setup_logging
from ledger.migrate import migrate
from ledger.worker.config import WorkerConfig
from ledger.worker.runtime import Worker

registry = builtin_registry()


class Ping(BaseModel):
    key: str


@registry.kind("noop")
async def noop(ctx: JobContext[NoArgs]) -> None:
    return None


class Io(BaseModel):
    ms: float


@registry.kind("io", args=Io)
async def io(ctx: JobContext[Io]) -> None:
    """A job that waits on I/O for `ms`: what the defaults are chosen for (docs/design.md, "The defaults")."""
    await anyio.sleep(ctx.args.ms / 1000)


@registry.kind("ping", args=Ping)
async def ping_job(ctx: JobContext[Ping]) -> None:
    ping(ctx.args.key)


def client() -> AsyncClient:
    return AsyncClient(DATABASE_URL, registry=registry)


async def setup() -> None:
    with connect(DATABASE_URL) as conn:
        migrate(conn)


# Connected before the clock starts, as the peers' own connections are.
async def enqueue_single(n: str) -> None:
    async with client() as c:
        started = time.perf_counter()
        for _ in range(int(n)):
            await c.enqueue("noop")
        timed(int(n), started)


async def enqueue_batch(n: str, size: str) -> None:
    async with client() as c:
        batch = [{"kind": "noop"}] * int(size)
        started = time.perf_counter()
        for _ in range(int(n) // int(size)):
            await c.enqueue_many(batch)
        timed(int(n), started)


async def fill(n: str) -> None:
    """No-op jobs; with BENCH_IO_MS set (ledger's own measurement of its defaults), jobs that wait that long."""
    io_ms = os.environ.get("BENCH_IO_MS")
    job: dict[str, object] = {"kind": "io", "args": {"ms": float(io_ms)}} if io_ms else {"kind": "noop"}
    c = client()
    for size in chunks(int(n)):
        await c.enqueue_many([job] * size)
    await c.close()


async def worker(concurrency: str = "", cycles: str = "2") -> None:
    """No arguments: WorkerConfig's defaults, what `just worker` starts; else the bench's tuned settings."""
    if not concurrency:
        config = WorkerConfig(id="bench")
    else:
        config = WorkerConfig(
            queues=f"default={concurrency}", cycles=int(cycles), poll_interval=1.0,
            heartbeat_every=3600, rescue_every=3600, retention="off", id="bench",
        )  # fmt: skip
    setup_logging()  # INFO: start-up and the "worker stopped" line with cycle statistics
    w = Worker(config, registry, DATABASE_URL)
    await wait_for_go()
    await w.run()


async def latency(n: str, gap_ms: str) -> None:
    c = client()

    async def one(key: str) -> None:
        await c.enqueue("ping", {"key": key})

    await latency_probe(int(n), float(gap_ms), one)
    await c.close()


if __name__ == "__main__":
    Peer(setup=setup, enqueue_single=enqueue_single, enqueue_batch=enqueue_batch, fill=fill, worker=worker,
         latency=latency).main()  # fmt: skip
