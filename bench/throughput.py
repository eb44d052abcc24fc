"""The dashboard's throughput chart on a 5-million-event ledger: what the rollup costs and what reading it costs.

    python -m bench.throughput                  # 5,000,000 events (about five minutes here)
    python -m bench.throughput --events 300000  # smaller

On a fresh database of the server (DATABASE_URL, else the embedded one): the
history of bench/history.py (finished jobs, every 50th discarded), then

- the first fold of the whole ledger into the per-minute rollup
  (ledger.throughput_refresh from cursor 0: what a brand-new schema would do
  once; an upgraded one starts at the history's end);
- an incremental fold of the events of 10,000 new jobs run through the store
  (what a worker's scheduler folds every 15 s, or a page load);
- the chart's read for the last 3 and 24 hours against a rollup filled to its
  retention (8 days x 1,440 minutes x 10 kinds), medians of 30;
- for comparison, the same counts straight from the events (no rollup): a
  GROUP BY over the events of the last 3 hours joined to their jobs.
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import timedelta
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from bench import history
from ledger.db import connect, database_url
from ledger.migrate import migrate
from ledger.store import Store

DATABASE = "bench_throughput"

_DIRECT = """
SELECT date_bin('1 minute', e.at, timestamptz 'epoch') AS minute, j.kind,
       count(*) FILTER (WHERE e.type = 'succeeded') AS succeeded,
       count(*) FILTER (WHERE e.type IN ('failed', 'rescued')) AS failed,
       count(*) FILTER (WHERE e.type = 'discarded') AS discarded
FROM ledger.events e JOIN ledger.jobs j ON j.id = e.job_id
WHERE e.at >= now() - interval '3 hours' AND e.type IN ('succeeded', 'failed', 'rescued', 'discarded')
GROUP BY 1, 2
"""

_FILL = """
INSERT INTO ledger.throughput (minute, kind, succeeded, failed, discarded)
SELECT date_bin('1 minute', now(), timestamptz 'epoch') - m * interval '1 minute', 'kind' || k, 100, 3, 1
FROM generate_series(1, 8 * 1440) m, generate_series(1, 10) k
ON CONFLICT DO NOTHING
"""


def _median_ms(fn: Any, n: int = 30) -> float:
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples) * 1000


def _fresh(server: str) -> str:
    """A database of its own (not bench_ledger, which `just bench` and bench.retention use), with the schema."""
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{DATABASE}"')
    url = make_conninfo(server, dbname=DATABASE)
    with connect(url) as conn:
        migrate(conn)
    return url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=5_000_000)
    args = parser.parse_args()
    url = _fresh(database_url())
    print(f"building a ledger of {args.events:,} events ...", flush=True)
    built = history.build_history(url, args.events, dead_every=50)
    with connect(url) as conn:
        store = Store(conn)
        events = conn.execute("SELECT count(*) AS n FROM ledger.events").fetchone()["n"]  # type: ignore[index]
        print(f"  {events:,} events in {built:.0f} s", flush=True)

        t = time.perf_counter()
        folded = 0
        while n := store.throughput_refresh(settle=timedelta(0), max_events=10_000_000):
            folded += n
        first = time.perf_counter() - t
        print(f"first fold of the whole ledger: {folded:,} positions in {first:.1f} s "
              f"= {folded / first:,.0f} events/s (once; an upgraded ledger starts at its end)", flush=True)  # fmt: skip

        ids = store.enqueue_many([("noop", {}, "probe", 5, 1, None)] * 10_000)
        for _ in range(10):
            jobs = store.claim("probe", 1_000, "w")
            store.succeed_many([(j.id, j.version) for j in jobs], worker="w")
        assert len(ids) == 10_000
        t = time.perf_counter()
        n = store.throughput_refresh(settle=timedelta(0))
        incremental = time.perf_counter() - t
        print(f"incremental fold: {n:,} new events in {incremental * 1000:.0f} ms", flush=True)

        conn.execute(_FILL)
        rows = conn.execute("SELECT count(*) AS n FROM ledger.throughput").fetchone()["n"]  # type: ignore[index]
        conn.execute("ANALYZE ledger.throughput")
        for hours in (3, 24):
            since = store.db_now_minus(timedelta(hours=hours))
            got = len(store.throughput(since))
            ms = _median_ms(lambda since=since: store.throughput(since))
            print(f"chart read, last {hours} h: {got:,} rows of {rows:,} in {ms:.2f} ms (median of 30)", flush=True)
        ms = _median_ms(lambda: store.throughput_refresh(), 10)
        print(f"a refresh with nothing new: {ms:.2f} ms (median of 10)", flush=True)

    with psycopg.connect(url, autocommit=True) as raw:
        t = time.perf_counter()
        raw.execute(_DIRECT).fetchall()
        direct = time.perf_counter() - t
    print(f"without the rollup: the last 3 h straight from {events:,} events took {direct * 1000:.0f} ms", flush=True)


if __name__ == "__main__":
    main()
