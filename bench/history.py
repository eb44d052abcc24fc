"""ledger alone: does history slow the present, does a backlog, and how fast does rebuild fold?"""

from __future__ import annotations

import contextlib
import statistics
import time
from datetime import timedelta
from typing import Any

import psycopg

from bench.enqueue import noop_batch
from ledger.db import connect
from ledger.store import Store

__all__ = ["build_backlog", "build_history", "measure_present", "measure_rebuild", "measure_stats"]

# Bulk-load finished jobs straight into both tables: the rows the functions would
# have written (enqueued, started, then succeeded, or discarded for every
# `dead`-th job), each event chained by ledger.event_hash, so `ledger rebuild
# --check` and `ledger verify` hold.
_BULK = """
WITH base AS (
    SELECT g, g %% %(dead)s = 0 AS dead,
           jsonb_build_object('kind', 'noop', 'queue', 'default', 'priority', 5, 'args', '{}'::jsonb,
                              'max_attempts', 1, 'run_at', %(t)s::timestamptz) AS d1,
           '{"worker": "w", "attempt": 1}'::jsonb AS d2,
           CASE WHEN g %% %(dead)s = 0 THEN '{"attempt": 1, "error": "boom"}' ELSE '{}' END::jsonb AS d3
    FROM generate_series(%(lo)s, %(hi)s) g
), one AS (
    SELECT b.*, ledger.event_hash(NULL, g, 1, 'enqueued', %(t)s, d1, '{}') AS h1 FROM base b
), two AS (
    SELECT o.*, ledger.event_hash(h1, g, 2, 'started', %(t)s, d2, '{}') AS h2 FROM one o
), three AS (
    SELECT w.*, CASE WHEN dead THEN 'discarded' ELSE 'succeeded' END::ledger.event_type AS last,
           ledger.event_hash(h2, g, 3, CASE WHEN dead THEN 'discarded' ELSE 'succeeded' END::ledger.event_type,
                             %(t)s, d3, '{}') AS h3
    FROM two w
), new_jobs AS (
    INSERT INTO ledger.jobs
    SELECT g, 'noop', 'default', 5, '{}',
           CASE WHEN dead THEN 'discarded' ELSE 'succeeded' END::ledger.job_state, 1, 1, %(t)s,
           CASE WHEN dead THEN 'boom' END, 'w', %(t)s, %(t)s, %(t)s, %(t)s, 3, h3
    FROM three
)
INSERT INTO ledger.events (job_id, version, type, at, data, hash)
SELECT g, e.v, e.type, %(t)s, e.d, e.h
FROM three CROSS JOIN LATERAL (VALUES (1, 'enqueued'::ledger.event_type, d1, h1), (2, 'started', d2, h2),
                                      (3, last, d3, h3)) AS e(v, type, d, h)
"""
_BULK_DEAD = """
INSERT INTO ledger.discarded
SELECT d.* FROM ledger.jobs j, LATERAL ledger.discarded_row(j) d
WHERE j.id BETWEEN %(lo)s AND %(hi)s AND j.state = 'discarded'
"""


def build_history(url: str, events: int, *, age: timedelta = timedelta(days=1), dead_every: int = 0) -> float:
    """Add `events` events of jobs that finished `age` ago (in chunks); returns seconds taken.

    With `dead_every` = n, every n-th job was discarded instead of succeeding.
    """
    started = time.perf_counter()
    jobs = events // 3
    dead = dead_every or jobs + 2**40  # no id is a multiple of a number that large
    with psycopg.connect(url, autocommit=True) as conn:
        t = conn.execute("SELECT now() - %s::interval", [age]).fetchone()[0]  # type: ignore[index]
        base = conn.execute("SELECT nextval('ledger.job_id_seq')").fetchone()[0]  # type: ignore[index]
        conn.execute("SELECT ledger.events_partitions_ensure(%s)", [base + jobs])
        chunk = 250_000
        for lo in range(base, base + jobs, chunk):
            hi = min(lo + chunk - 1, base + jobs - 1)
            params = {"lo": lo, "hi": hi, "t": t, "dead": dead}
            with conn.transaction():
                conn.execute(_BULK, params)
                conn.execute(_BULK_DEAD, params)
        conn.execute("SELECT setval('ledger.job_id_seq', %s)", [base + jobs])
        conn.execute("VACUUM ANALYZE ledger.jobs")
        conn.execute("VACUUM ANALYZE ledger.events")
        # Write the bulk load out now: measured right after it, the present paid for
        # the checkpoint flushing gigabytes of it (single enqueues 26% slower at 5M
        # events in one run), which is the load's cost, not the history's.
        with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
            conn.execute("CHECKPOINT")
    return time.perf_counter() - started


def build_backlog(url: str, jobs: int, queue: str = "backlog") -> float:
    """Enqueue `jobs` no-op jobs to `queue` through ledger.job_enqueue_many, and analyze, as
    autovacuum would: the planner then knows the backlog (docs/design.md, the claim's JIT)."""
    started = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        for lo in range(0, jobs, 100_000):
            conn.execute(noop_batch(min(100_000, jobs - lo), queue))
        conn.execute("VACUUM ANALYZE ledger.jobs")
        conn.execute("VACUUM ANALYZE ledger.events")
        with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
            conn.execute("CHECKPOINT")
    return time.perf_counter() - started


def measure_stats(url: str) -> dict[str, Any]:
    """What `ledger stats` reads (counts per state, the queues' waits, the kinds no worker serves):
    the median of 3, in ms. These count the backlog, so they grow with it."""
    with connect(url) as conn:
        store = Store(conn)
        took = []
        for _ in range(3):
            t = time.perf_counter()
            store.job_counts()
            store.queue_waits()
            store.kinds_unserved()
            took.append(time.perf_counter() - t)
    return {"stats_ms": _median_ms(took)}


def _median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def measure_present(url: str, probe: str) -> dict[str, Any]:
    """Claim latency, single-enqueue rate and `ledger failed` time on this ledger as it is now.

    Each call claims from its own queue `probe`, so one measurement's dead
    index entries do not slow the next; the same 200 dead letters are listed
    every time, so only the history around them grows.
    """
    with connect(url) as conn:
        store = Store(conn)
        if not store.discarded(limit=1):
            store.enqueue_many([("noop", {}, "dead", 5, 1, None)] * 200)
            for job in store.claim("dead", 200, "w"):
                store.fail(job.id, "boom")
        store.enqueue_many([("noop", {}, probe, 5, 1, None)] * 500)
        conn.execute("VACUUM ANALYZE ledger.jobs")
        claims = []
        for _ in range(500):
            t = time.perf_counter()
            [job] = store.claim(probe, 1, "w")
            claims.append(time.perf_counter() - t)
            store.succeed(job.id)
        t = time.perf_counter()
        for _ in range(500):
            store.enqueue_many([("noop", {}, "other", 5, 1, None)])
        enqueue_rate = 500 / (time.perf_counter() - t)
        failed = []
        for _ in range(30):
            t = time.perf_counter()
            store.discarded(limit=50)
            failed.append(time.perf_counter() - t)
        events = conn.execute("SELECT count(*) AS n FROM ledger.events").fetchone()
    return {
        "events": events["n"] if events else 0,
        "claim_ms": _median_ms(claims),
        "enqueue_per_s": enqueue_rate,
        "failed_ms": _median_ms(failed),
    }


def measure_rebuild(url: str) -> dict[str, Any]:
    with connect(url) as conn:
        n = conn.execute("SELECT count(*) AS n FROM ledger.events").fetchone()["n"]  # type: ignore[index]
        t = time.perf_counter()
        Store(conn).projections_rebuild()
        seconds = time.perf_counter() - t
    return {"events": n, "seconds": seconds, "rate": n / seconds}
