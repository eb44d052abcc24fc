"""Where a batch enqueue of 1,000 jobs spends its time, beside PgQueuer's.

    python -m bench.enqueue [repetitions]     # DATABASE_URL, else the embedded server

- client: ledger's validation and parameters for 1,000 no-op jobs
  (`prepare` + `enqueue_params`), garbage collector on, as in an application;
- server: one statement of 1,000 jobs with the arrays built in SQL, so no
  client work is in it: `ledger.job_enqueue_many` against PgQueuer's own
  enqueue statement, autocommit (the commit included), interleaved;
- WAL written per job by each, over 20 such statements.

Each system gets a fresh database, as in `just bench`. The figures in
docs/design.md ("Batch enqueue") come from this.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import psycopg

from bench.harness import system
from bench.peers.ledger_peer import registry
from ledger.client import prepare
from ledger.db import database_url
from ledger.statements import enqueue_params

N = 1000


def noop_batch(n: int, queue: str = "default") -> str:
    """ledger.job_enqueue_many of `n` no-op jobs with its arrays built in SQL (no client work in it)."""
    return f"""SELECT count(*) FROM ledger.job_enqueue_many(
    array_fill('noop'::text, ARRAY[{n}]), array_fill('{{}}'::jsonb, ARRAY[{n}]),
    array_fill('{queue}'::text, ARRAY[{n}]), array_fill(5, ARRAY[{n}]),
    array_fill(25, ARRAY[{n}]), array_fill(NULL::timestamptz, ARRAY[{n}]))"""


LEDGER = noop_batch(N)


def _pgqueuer_statement() -> str:
    from pgqueuer.adapters.persistence.qb import QueryQueueBuilder

    sql = QueryQueueBuilder().build_enqueue_query()
    for param, value in {
        "$1::int[]": f"array_fill(0, ARRAY[{N}])",
        "$2::text[]": f"array_fill('noop'::text, ARRAY[{N}])",
        "$3::bytea[]": f"array_fill(NULL::bytea, ARRAY[{N}])",
        "$4::interval[]": f"array_fill('0'::interval, ARRAY[{N}])",
        "$5::text[]": f"array_fill(NULL::text, ARRAY[{N}])",
        "$6::jsonb[]": f"array_fill(NULL::jsonb, ARRAY[{N}])",
    }.items():
        if param not in sql:
            raise RuntimeError(f"PgQueuer's enqueue statement changed: no {param} in it")
        sql = sql.replace(param, value)
    return sql


def _ms(run: Callable[[], Any]) -> float:
    started = time.perf_counter()
    run()
    return (time.perf_counter() - started) * 1000


def _median(samples: list[float]) -> float:
    return statistics.median(samples[2:])  # the first two warm up caches and prepared plans


def main() -> None:
    reps = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    server = database_url()
    jobs = [{"kind": "noop"}] * N
    client_ms = _median([_ms(lambda: enqueue_params(*prepare(registry, jobs)[:1], None)) for _ in range(reps)])

    urls = {name: system(name).fresh(server) for name in ("ledger", "pgqueuer")}
    statements = {"ledger": LEDGER, "pgqueuer": _pgqueuer_statement()}
    conns = {name: psycopg.connect(url, autocommit=True) for name, url in urls.items()}
    server_ms: dict[str, list[float]] = {name: [] for name in conns}
    for _ in range(reps):
        for name, conn in conns.items():
            server_ms[name].append(_ms(lambda c=conn, n=name: c.execute(statements[n]).fetchall()))
    wal: dict[str, float] = {}
    for name, conn in conns.items():
        before = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]  # type: ignore[index]
        for _ in range(20):
            conn.execute(statements[name]).fetchall()
        written = conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", [before]).fetchone()[0]  # type: ignore[index]
        wal[name] = float(written) / (20 * N)
        conn.close()

    print(f"batch enqueue of {N:,} no-op jobs, medians of {reps} repetitions")
    print(f"  ledger client (validate + parameters): {client_ms:6.2f} ms")
    for name in conns:
        print(
            f"  {name:<8} server statement, autocommit: {_median(server_ms[name]):6.2f} ms"
            f"   WAL per job: {wal[name]:5.0f} bytes"
        )
    print("  (WAL from 20 statements in a row; the other system's writes of the same moment count too)")


if __name__ == "__main__":
    main()
