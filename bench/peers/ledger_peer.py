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
from ledger.models import Limit
from ledger.store_async import AsyncStore
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


class Keyed(BaseModel):
    k: int


# BENCH_LIMIT_KEYS=100: the drain's jobs are spread over that many keys, each limited to
# BENCH_LIMIT_PER_KEY (4) running at once: what a per-key limit costs the claim (docs/design.md).
LIMIT_KEYS = int(os.environ.get("BENCH_LIMIT_KEYS", "0"))
KEY_LIMIT = Limit(concurrency=int(os.environ.get("BENCH_LIMIT_PER_KEY", "4")), key="k")


@registry.kind("keyed", args=Keyed, limit=KEY_LIMIT if LIMIT_KEYS else None)
async def keyed(ctx: JobContext[Keyed]) -> None:
    return None


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
    """No-op jobs; with BENCH_IO_MS set (ledger's own measurement of its defaults), jobs that wait
    that long; with BENCH_LIMIT_KEYS, no-op jobs under a per-key limit (declared before they are
    enqueued: a job's limit key is fixed at enqueue)."""
    io_ms = os.environ.get("BENCH_IO_MS")
    jobs: list[dict[str, object]] = [{"kind": "io", "args": {"ms": float(io_ms)}} if io_ms else {"kind": "noop"}]
    c = client()
    if LIMIT_KEYS:
        await AsyncStore(await c.connect()).limit_set("kind:keyed", KEY_LIMIT)
        jobs = [{"kind": "keyed", "args": {"k": k}} for k in range(LIMIT_KEYS)]
    for size in chunks(int(n)):
        await c.enqueue_many([jobs[i % len(jobs)] for i in range(size)])
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
