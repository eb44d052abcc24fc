"""Scenario 4 and 5 for ledger alone: does history slow the present, and how fast does rebuild fold?"""

from __future__ import annotations

import statistics
import time
from typing import Any

import psycopg

from ledger.db import connect
from ledger.store import Store

__all__ = ["build_history", "measure_present", "measure_rebuild"]

# Bulk-load finished jobs straight into both tables: the rows the functions would
# have written (enqueued, started, succeeded), so `ledger rebuild --check` holds.
_BULK_JOBS = """
INSERT INTO ledger.jobs
SELECT g, 'noop', 'default', 5, '{}', 'succeeded', 1, 1, %(t)s, NULL, 'w', %(t)s, %(t)s, %(t)s, %(t)s, 3
FROM generate_series(%(lo)s, %(hi)s) g
"""
_BULK_EVENTS = """
INSERT INTO ledger.events (job_id, version, type, at, data)
SELECT g, v, (ARRAY['enqueued', 'started', 'succeeded'])[v]::ledger.event_type, %(t)s,
       CASE v WHEN 1 THEN jsonb_build_object('kind', 'noop', 'queue', 'default', 'priority', 5, 'args', '{}'::jsonb,
                                             'max_attempts', 1, 'run_at', %(t)s::timestamptz)
              WHEN 2 THEN '{"worker": "w", "attempt": 1}'::jsonb
              ELSE '{}'::jsonb END
FROM generate_series(%(lo)s, %(hi)s) g CROSS JOIN generate_series(1, 3) v
"""


def build_history(url: str, events: int) -> float:
    """Add `events` events of finished jobs (in chunks); returns seconds taken."""
    started = time.perf_counter()
    jobs = events // 3
    with psycopg.connect(url, autocommit=True) as conn:
        t = conn.execute("SELECT now() - interval '1 day'").fetchone()[0]  # type: ignore[index]
        base = conn.execute("SELECT nextval('ledger.job_id_seq')").fetchone()[0]  # type: ignore[index]
        chunk = 250_000
        for lo in range(base, base + jobs, chunk):
            hi = min(lo + chunk - 1, base + jobs - 1)
            with conn.transaction():
                conn.execute(_BULK_JOBS, {"lo": lo, "hi": hi, "t": t})
                conn.execute(_BULK_EVENTS, {"lo": lo, "hi": hi, "t": t})
        conn.execute("SELECT setval('ledger.job_id_seq', %s)", [base + jobs])
        conn.execute("VACUUM ANALYZE ledger.jobs")
        conn.execute("VACUUM ANALYZE ledger.events")
    return time.perf_counter() - started


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
