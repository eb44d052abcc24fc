"""How long a lost claim stays `running` under a steady backlog.

    python -m bench.lost_claim [TRIALS] [LIMIT_SECONDS]

A worker (`ledger worker`, lease 3 s, so a heartbeat a second; concurrency 20)
runs 1-20 ms jobs while a feeder keeps at least 1,000 waiting. Each trial
commits a claim from outside in the worker's name, as if the claim's answer
had been lost with its connection, and times how long until that job's
`rescued` event appears (at most LIMIT_SECONDS, default 60). The job kind is
in bench/lost_claim_app.py.
"""

from __future__ import annotations

import os
import random
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row

from bench.harness import as_url
from ledger.db import database_url
from ledger.migrate import migrate
from ledger.store import Store

HERE = Path(__file__).resolve().parent


def blips(n: int) -> list[tuple[str, dict[str, float], str, int, int, None]]:
    return [("blip", {"ms": random.uniform(1, 20)}, "default", 5, 5, None) for _ in range(n)]


def feed(url: str, stop: threading.Event) -> None:
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        while not stop.is_set():
            row = conn.execute("SELECT count(*) AS n FROM ledger.jobs WHERE state = 'available'").fetchone()
            if row is not None and row["n"] < 1000:
                Store(conn).enqueue_many(blips(1000))
            time.sleep(0.2)


def main() -> None:
    trials = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    limit = float(sys.argv[2]) if len(sys.argv) > 2 else 60.0
    server = database_url()
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute("DROP DATABASE IF EXISTS bench_lost WITH (FORCE)")
        admin.execute("CREATE DATABASE bench_lost")
    url = as_url(make_conninfo(server, dbname="bench_lost"))
    conn = psycopg.connect(url, autocommit=True, row_factory=dict_row)
    migrate(conn)
    store = Store(conn)
    store.enqueue_many(blips(2000))
    env = {**os.environ, "DATABASE_URL": url, "PYTHONPATH": str(HERE)}
    command = [str(Path(sys.executable).with_name("ledger")), "worker", "--app", "lost_claim_app",
               "--lease", "3", "--queues", "default=20"]  # fmt: skip
    worker = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
    stop = threading.Event()
    threading.Thread(target=feed, args=(url, stop), daemon=True).start()
    time.sleep(4)
    row = conn.execute("SELECT id FROM ledger.workers ORDER BY id DESC LIMIT 1").fetchone()
    assert row is not None, "the worker has not beaten yet"
    delays = []
    for trial in range(trials):
        [job] = store.claim("default", 1, row["id"])  # the claim whose answer "was lost"
        started = time.monotonic()
        back = 0
        while not back and time.monotonic() - started < limit:
            time.sleep(0.05)
            found = conn.execute("SELECT count(*) AS n FROM ledger.events WHERE job_id = %s AND type = 'rescued'",
                                 [job.id]).fetchone()  # fmt: skip
            back = found["n"] if found else 0
        delays.append(time.monotonic() - started)
        print(f"trial {trial}: {'back' if back else 'STILL RUNNING'} after {delays[-1]:.1f} s", flush=True)
    stop.set()
    worker.terminate()
    worker.wait(30)
    print(f"median {statistics.median(delays):.1f} s, max {max(delays):.1f} s over {trials} trials (limit {limit:g} s)")


if __name__ == "__main__":
    main()
