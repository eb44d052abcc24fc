"""The pickup floor: what this machine's PostgreSQL allows, with no queue library at all.

A table of rows, an enqueue that inserts one row and NOTIFYs in one
transaction, and a worker that LISTENs on its own connection and, on each
notification, claims with one autocommit `UPDATE ... FOR UPDATE SKIP LOCKED
RETURNING` on a second connection, then starts the "body" (the ping). It is
the least a PostgreSQL queue with durable commits can do between an
enqueue's commit and a job's start: one wake-up by NOTIFY and one committed
claim. Only the latency scenario runs it.
"""

from __future__ import annotations

import psycopg

from bench.peers.common import DATABASE_URL, Peer, latency_probe, ping, wait_for_go

CLAIM = """
UPDATE floor_jobs SET state = 1 WHERE id IN (
    SELECT id FROM floor_jobs WHERE state = 0 ORDER BY id LIMIT 10 FOR UPDATE SKIP LOCKED
) RETURNING key
"""


async def setup() -> None:
    async with await psycopg.AsyncConnection.connect(DATABASE_URL, autocommit=True) as conn:
        await conn.execute("CREATE TABLE floor_jobs (id bigserial PRIMARY KEY, key text, state int NOT NULL DEFAULT 0)")
        await conn.execute("CREATE INDEX ON floor_jobs (id) WHERE state = 0")


async def worker() -> None:
    listen = await psycopg.AsyncConnection.connect(DATABASE_URL, autocommit=True)
    claim = await psycopg.AsyncConnection.connect(DATABASE_URL, autocommit=True)
    await listen.execute("LISTEN floor")
    await wait_for_go()
    async for _ in listen.notifies():
        cur = await claim.execute(CLAIM)
        for (key,) in await cur.fetchall():
            ping(key)


async def latency(n: str, gap_ms: str) -> None:
    async with await psycopg.AsyncConnection.connect(DATABASE_URL, autocommit=True) as conn:

        async def one(key: str) -> None:
            async with conn.transaction():
                await conn.execute("INSERT INTO floor_jobs (key) VALUES (%s)", [key])
                await conn.execute("NOTIFY floor")

        await latency_probe(int(n), float(gap_ms), one)


if __name__ == "__main__":
    Peer(setup=setup, worker=worker, latency=latency).main()
