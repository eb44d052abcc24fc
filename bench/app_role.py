"""Batch enqueue and a one-process drain as the owner and as the application role, interleaved.

    python -m bench.app_role [ROUNDS]   # needs a server where this user may create roles and databases

The application role (`ledger roles --app bench_app`) holds no table
privileges: it calls the same SECURITY DEFINER functions the owner does. This
measures what that costs: 20,000 jobs enqueued in batches of 1,000, then
drained by one `ledger_tuned` worker process, as each role.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys

import psycopg
from psycopg.conninfo import make_conninfo

from bench.harness import as_url, drain_filled, system
from ledger.db import database_url

JOBS = 20_000


def main() -> None:
    server = database_url()
    peer = system("ledger_tuned")
    with psycopg.connect(server, autocommit=True) as admin:
        if not admin.execute("SELECT 1 FROM pg_roles WHERE rolname = 'bench_app'").fetchone():
            admin.execute("CREATE ROLE bench_app LOGIN")
    results: dict[str, list[float]] = {}
    for _ in range(int(sys.argv[1]) if len(sys.argv) > 1 else 3):
        for role in ("owner", "app"):
            owner_url = peer.fresh(server)
            url = owner_url
            if role == "app":
                subprocess.run([sys.executable, "-m", "ledger", "roles", "--app", "bench_app"], check=True,
                               env={**os.environ, "DATABASE_URL": owner_url}, capture_output=True)  # fmt: skip
                url = as_url(make_conninfo(owner_url, user="bench_app"))
            enqueued = peer.call(url, "enqueue_batch", str(JOBS), "1000")["rate"]
            drained = drain_filled(peer, server, url, JOBS, 1, count_url=owner_url)
            results.setdefault(f"batch enqueue, {role}", []).append(enqueued)
            results.setdefault(f"drain, {role}", []).append(drained["rate"])
            if drained["pg_cpu_s"] is not None:
                results.setdefault(f"drain PostgreSQL CPU us/job, {role}", []).append(drained["pg_cpu_s"] / JOBS * 1e6)
    for name, values in results.items():
        print(f"{name}: median {statistics.median(values):,.0f}  runs {[round(v) for v in values]}")


if __name__ == "__main__":
    main()
