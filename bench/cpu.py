"""Where a drain's time goes: one worker process, its jobs/s and the CPU of the worker and of PostgreSQL.

    python -m bench.cpu ledger 20000          # any row of bench.harness.SYSTEMS (ledger_default, awa_tuned, ...);
                                              # the old names too: ledger (= ledger_tuned), pgqueuer_b50, ...
    python -m bench.cpu ledger 60000 spy.txt  # also a py-spy profile of the worker (raw, collapsed stacks)
    BENCH_IO_MS=30 LEDGER_WORKER_QUEUES=default=10 python -m bench.cpu ledger_default 5000
                                              # ledger's jobs wait 30 ms on I/O each (how the defaults were chosen)
    BENCH_LIMIT_KEYS=100 python -m bench.cpu ledger_tuned 20000
                                              # no-op jobs over 100 keys, at most 4 running per key (a limit's cost)

The drain of `just bench`, measured from the GO line to the last job counted
done, with every process's CPU time read before and after. A worker and a
server that are both well below a core each mean the two wait on each other
(too little in flight); one at a full core means that side is the limit.
The last line is what `just bench` adds to each drain (bench/cost.py): the
server's CPU, WAL and transactions per job.
Needs a PostgreSQL whose processes this user can read (DATABASE_URL, or the
embedded server) and psutil (the bench extra).
"""

from __future__ import annotations

import subprocess
import sys
import time

import psutil
import psycopg

from bench.cost import ServerMeter
from bench.harness import count_until_done, go, stop, system
from ledger.db import database_url


def cpu_times(harness: int) -> dict[tuple[str, int], float]:
    """CPU seconds of every PostgreSQL and benchmark-peer process, by (role, pid); not the
    `harness` backend, which counts the jobs done for the bench."""
    out: dict[tuple[str, int], float] = {}
    for p in psutil.process_iter(["name", "cmdline", "cpu_times"]):
        if p.pid == harness:
            continue
        try:
            cmd = " ".join(p.info["cmdline"] or [])
            role = "postgres" if p.info["name"] == "postgres" or "postgres:" in cmd else None
            role = role or ("worker" if "bench.peers" in cmd else None)
            if role:
                t = p.info["cpu_times"]
                out[(role, p.pid)] = t.user + t.system
        except (psutil.Error, TypeError):
            continue
    return out


def main() -> None:
    name = sys.argv[1] if len(sys.argv) > 1 else "ledger"
    jobs = int(sys.argv[2]) if len(sys.argv) > 2 else 20_000
    profile = sys.argv[3] if len(sys.argv) > 3 else None
    peer = system(name)
    server = database_url()
    url = peer.fresh(server)
    peer.call(url, "fill", str(jobs))
    procs = peer.workers(url, 1)
    spy = None
    if profile:
        record = ["py-spy", "record", "-p", str(procs[0].pid), "-o", profile, "--format", "raw", "-r", "250"]
        spy = subprocess.Popen([*record, "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            harness = conn.info.backend_pid
            meter = ServerMeter(server, f"bench_{peer.name}", [p.pid for p in procs], harness)
            time.sleep(0.5)
            before = cpu_times(harness)
            meter.start()
            started = time.perf_counter()
            go(procs)
            _, polls = count_until_done(peer, conn, jobs, meter, started + 300)
            elapsed = time.perf_counter() - started
            after = cpu_times(harness)
            meter.stop()
    finally:
        if spy:
            spy.send_signal(2)
            spy.wait()
        stop(procs)
    used: dict[str, float] = {}
    for key, seconds in after.items():
        used[key[0]] = used.get(key[0], 0.0) + seconds - before.get(key, 0.0)
    split = ", ".join(f"{role} {s:.2f} cpu-s ({s / elapsed:.0%} of a core)" for role, s in sorted(used.items()))
    print(f"{peer.name}: {jobs / elapsed:,.0f} jobs/s ({jobs:,} in {elapsed:.2f}s); {split}")
    cost = meter.finish(own_statements=polls)
    pg = f"{cost['pg_cpu_s'] / jobs * 1e6:,.0f} us" if cost["pg_cpu_s"] is not None else "-"
    print(
        f"per job: PostgreSQL CPU {pg} (its database and shared processes), WAL {cost['wal_bytes'] / jobs:,.0f} B,"
        f" {cost['xact_commit'] / jobs:.3f} commits"
    )


if __name__ == "__main__":
    main()
