"""Enqueue with a uniqueness rule on and off: one job per call and batches of 1,000, interleaved.

    python -m bench.unique [ROUNDS]     # on DATABASE_URL's server, in a database of its own

Each measurement starts from a fresh database (bench_unique). "On" gives every
job its own key, so every job is inserted: what the rule costs, not what a
duplicate saves.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time

import psycopg
from psycopg.conninfo import make_conninfo

from bench.harness import as_url
from ledger.client import AsyncClient
from ledger.db import database_url
from ledger.migrate import migrate
from ledger.models import Unique

SINGLES = 2_000
BATCHED = 50_000


def fresh(server: str) -> str:
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute("DROP DATABASE IF EXISTS bench_unique WITH (FORCE)")
        admin.execute("CREATE DATABASE bench_unique")
    url = as_url(make_conninfo(server, dbname="bench_unique"))
    with psycopg.connect(url, autocommit=True) as conn:
        migrate(conn)
    return url


async def singles(url: str, unique: bool) -> float:
    async with AsyncClient(url) as client:
        started = time.perf_counter()
        for i in range(SINGLES):
            await client.enqueue("heartbeat", unique=Unique(key=f"k{i}") if unique else None)
        return SINGLES / (time.perf_counter() - started)


async def batches(url: str, unique: bool) -> float:
    async with AsyncClient(url) as client:
        started = time.perf_counter()
        for b in range(BATCHED // 1000):
            rule = [{"unique": Unique(key=f"b{b}-{i}")} if unique else {} for i in range(1000)]
            await client.enqueue_many([{"kind": "heartbeat", **r} for r in rule])  # type: ignore[typeddict-item]
        return BATCHED / (time.perf_counter() - started)


def main() -> None:
    server = database_url()
    rates: dict[str, list[float]] = {}
    for _ in range(int(sys.argv[1]) if len(sys.argv) > 1 else 3):
        for unique in (False, True):
            rates.setdefault(f"1 per call, unique {'on ' if unique else 'off'}", []).append(
                asyncio.run(singles(fresh(server), unique)))  # fmt: skip
            rates.setdefault(f"batches of 1000, unique {'on ' if unique else 'off'}", []).append(
                asyncio.run(batches(fresh(server), unique)))  # fmt: skip
    for name, values in rates.items():
        print(f"{name}: median {statistics.median(values):,.0f} jobs/s  runs {[round(v) for v in values]}")


if __name__ == "__main__":
    main()
