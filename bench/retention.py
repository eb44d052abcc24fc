"""`just retention`: what a prune does to a ledger holding a million finished jobs.

    python -m bench.retention                 # 1,000,000 jobs, partitions of 100,000 ids
    python -m bench.retention --jobs 100000   # smaller, about half a minute

Two runs on fresh databases of the same server (DATABASE_URL, else the
embedded one): one where every old job succeeded (the prune can drop whole
partitions) and one where 1 job in 5,000 was discarded (those keep their
history, so every partition is rewritten around them). Each prints the size
of the ledger before and after, how long the prune took, how long a single
enqueue waited at worst while it ran, and claim / enqueue / `ledger failed`
figures on the empty ledger, with the history, and after the prune.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from datetime import timedelta
from typing import Any

import psycopg

from bench import history
from bench.harness import system
from ledger.db import connect, database_url
from ledger.retention import prune
from ledger.store import Store

_SIZES = """
SELECT (SELECT count(*) FROM ledger.events) AS events,
       (SELECT count(*) FROM ledger.jobs) AS jobs,
       (SELECT count(*) FROM ledger.events_partitions) AS partitions,
       (SELECT coalesce(sum(pg_total_relation_size(inhrelid)), 0) FROM pg_inherits
        WHERE inhparent = 'ledger.events'::regclass) AS events_bytes,
       pg_total_relation_size('ledger.jobs') AS jobs_bytes
"""


def sizes(url: str) -> dict[str, Any]:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE ledger.jobs")  # what autovacuum does soon after: the space is reusable
        row = conn.execute(_SIZES).fetchone()
        assert row is not None
        return dict(zip(["events", "jobs", "partitions", "events_bytes", "jobs_bytes"], row, strict=True))


def pauses_during(url: str, work: threading.Event) -> tuple[list[float], threading.Thread]:
    """Enqueue one job at a time until `work` is set; returns the latencies (s) as they come."""
    samples: list[float] = []

    def loop() -> None:
        with connect(url) as conn:
            store = Store(conn)
            while not work.is_set():
                t = time.perf_counter()
                store.enqueue_many([("noop", {}, "during", 5, 1, None)])
                samples.append(time.perf_counter() - t)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return samples, thread


def scenario(server: str, jobs: int, partition_size: int, dead_every: int) -> list[str]:
    ledger_sys = system("ledger")
    url = ledger_sys.fresh(server)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE ledger.events_partitioning SET size = %s", [partition_size])
        conn.execute("SELECT setval('ledger.job_id_seq', covered_until - 1) FROM ledger.events_partitioning")
    present = {"empty": history.measure_present(url, "probe-empty")}
    built = history.build_history(url, jobs * 3, age=timedelta(days=8), dead_every=dead_every)
    present["history"] = history.measure_present(url, "probe-history")
    before = sizes(url)

    done = threading.Event()
    samples, thread = pauses_during(url, done)
    time.sleep(0.5)  # the enqueue loop is warm before the prune starts
    with connect(url) as conn:
        report = prune(Store(conn), timedelta(days=7))
    done.set()
    thread.join()
    after = sizes(url)
    present["pruned"] = history.measure_present(url, "probe-pruned")

    mib = 1024 * 1024
    dead = f"1 in {dead_every:,} discarded" if dead_every else "all succeeded"
    lines = [
        f"{jobs:,} jobs finished 8 days ago ({dead}), partitions of {partition_size:,} job ids; "
        f"built in {built:.0f}s; `ledger prune --older-than 7d`",
        f"{'':<16}{'events':>12}{'jobs':>12}{'partitions':>12}{'events MiB':>12}{'jobs MiB':>10}",
    ]
    for label, s in (("before prune", before), ("after prune", after)):
        lines.append(
            f"{label:<16}{s['events']:>12,}{s['jobs']:>12,}{s['partitions']:>12}"
            f"{s['events_bytes'] / mib:>12,.1f}{s['jobs_bytes'] / mib:>10,.1f}"
        )
    lines.append(f"prune: {report}")
    if samples:
        lines.append(
            f"single enqueues meanwhile: {len(samples):,}, median {statistics.median(samples) * 1000:.2f} ms, "
            f"longest {max(samples) * 1000:.1f} ms"
        )
    lines.append(f"{'':<16}{'events':>12}{'claim ms':>12}{'enqueue/s':>12}{'failed ms':>12}")
    for label, p in (("empty ledger", present["empty"]), ("with history", present["history"]),
                     ("after prune", present["pruned"])):  # fmt: skip
        lines.append(
            f"{label:<16}{p['events']:>12,}{p['claim_ms']:>12.3f}{p['enqueue_per_s']:>12,.0f}{p['failed_ms']:>12.3f}"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--partition-size", type=int, default=100_000)
    parser.add_argument("--dead-every", type=int, default=5_000)
    args = parser.parse_args()
    server = database_url()
    with psycopg.connect(server, autocommit=True) as conn:
        pg = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
    print(f"retention benchmark — PostgreSQL {pg.split()[0]}")
    for dead_every in (0, args.dead_every):
        print()
        print("\n".join(scenario(server, args.jobs, args.partition_size, dead_every)), flush=True)


if __name__ == "__main__":
    main()
