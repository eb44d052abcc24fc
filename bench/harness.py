"""Process plumbing of the benchmark: fresh databases, peer subprocesses, the drain clock."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

ROOT = Path(__file__).resolve().parent.parent

__all__ = ["FLOOR", "SYSTEMS", "System", "as_url", "free_udp_port"]


def as_url(conninfo: str) -> str:
    """A postgresql:// URL for a conninfo (asyncpg takes only URLs; unix sockets go in ?host=)."""
    p = conninfo_to_dict(conninfo)
    host = str(p.get("host") or "")
    user = p.get("user") or ""
    db = p.get("dbname") or ""
    if host.startswith("/"):
        return f"postgresql://{user}@/{db}?host={host}" + (f"&port={p['port']}" if p.get("port") else "")
    port = f":{p['port']}" if p.get("port") else ""
    return f"postgresql://{user}@{host or 'localhost'}{port}/{db}"


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True)
class System:
    name: str
    module: str
    worker_args: tuple[str, ...]
    settings: str
    done_sql: str  # jobs finished so far, by SQL; with `remaining`, the jobs not finished yet
    label: str
    remaining: bool = False

    def database(self, server: str) -> str:
        return make_conninfo(server, dbname=f"bench_{self.name}")

    def fresh(self, server: str) -> str:
        """Drop and create this system's database, install its schema; return its URL."""
        name = f"bench_{self.name}"
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            admin.execute(f'CREATE DATABASE "{name}"')
        url = as_url(self.database(server))
        self.call(url, "setup")
        return url

    def env(self, url: str, udp_port: int | None = None) -> dict[str, str]:
        env = {**os.environ, "BENCH_DATABASE_URL": url, "PYTHONPATH": str(ROOT)}
        if udp_port:
            env["BENCH_UDP_PORT"] = str(udp_port)
        return env

    def call(self, url: str, *args: str, udp_port: int | None = None, timeout: float = 900) -> dict[str, Any]:
        out = subprocess.run(
            [sys.executable, "-m", self.module, *args], env=self.env(url, udp_port), cwd=ROOT,
            capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
        if out.returncode != 0:
            raise RuntimeError(f"{self.name} {' '.join(args)} failed:\n{out.stderr[-3000:]}")
        lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
        return json.loads(lines[-1]) if lines else {}

    def workers(self, url: str, n: int, udp_port: int | None = None) -> list[subprocess.Popen[str]]:
        # BENCH_WORKER_LOG=path keeps the workers' stderr (logs) for a look afterwards.
        log_path = os.environ.get("BENCH_WORKER_LOG", os.devnull)
        log = open(log_path, "a")  # noqa: SIM115 - handed to the subprocesses
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", self.module, "worker", *self.worker_args],
                env=self.env(url, udp_port),
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )
            for _ in range(n)
        ]
        for p in procs:
            assert p.stdout is not None
            line = p.stdout.readline()
            if line.strip() != "READY":
                stop(procs)
                raise RuntimeError(f"{self.name} worker did not start: {line!r}")
        return procs

    def done(self, conn: psycopg.Connection[Any], jobs: int) -> int:
        row = conn.execute(self.done_sql).fetchone()
        value = int(row[0]) if row else 0
        return jobs - value if self.remaining else value


def go(procs: list[subprocess.Popen[str]]) -> None:
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()


def stop(procs: list[subprocess.Popen[str]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


def drain(system: System, server: str, jobs: int, processes: int) -> dict[str, Any]:
    """Queue `jobs` no-op jobs, start the workers together, time until SQL counts them all done."""
    url = system.fresh(server)
    system.call(url, "fill", str(jobs))
    procs = system.workers(url, processes)
    with psycopg.connect(url, autocommit=True) as conn:
        started = time.perf_counter()
        go(procs)
        deadline = started + 300
        while (done := system.done(conn, jobs)) < jobs and time.perf_counter() < deadline:
            time.sleep(0.01)
        elapsed = time.perf_counter() - started
    stop(procs)
    if done < jobs:
        raise RuntimeError(f"{system.name}: only {done} of {jobs} jobs done after 300 s")
    return {"jobs": jobs, "seconds": elapsed, "rate": jobs / elapsed}


def latency(system: System, server: str, n: int, gap_ms: float) -> dict[str, Any]:
    url = system.fresh(server)
    port = free_udp_port()
    procs = system.workers(url, 1, udp_port=port)
    go(procs)
    time.sleep(1.5)  # let it settle into idle
    try:
        return system.call(url, "latency", str(n), str(gap_ms), udp_port=port)
    finally:
        stop(procs)


SYSTEMS = [
    System(
        "ledger", "bench.peers.ledger_peer", ("400", "3"), "1 worker process, concurrency 400, 3 cycles in flight",
        "SELECT count(*) FROM ledger.jobs WHERE kind = 'noop' AND state = 'succeeded'", "ledger",
    ),
    System(
        "procrastinate", "bench.peers.procrastinate_peer", ("10",), "concurrency 10, listen_notify (default)",
        "SELECT count(*) FROM procrastinate_jobs WHERE task_name = 'noop' AND status = 'succeeded'",
        "Procrastinate 3.10",
    ),
    System(
        "pgqueuer", "bench.peers.pgqueuer_peer", ("5", "10"), "asyncpg, 5 QueueManagers x batch 10 (its benchmark)",
        # PgQueuer deletes a job's row when it completes: done = queued - rows left.
        "SELECT count(*) FROM pgqueuer", "PgQueuer 1.6", remaining=True,
    ),
    # The same with bigger batches: it scales with batch size (measured 5x50: ~9k jobs/s), and
    # comparing a tuned ledger with an untuned peer would be worthless.
    System(
        "pgqueuer_b50", "bench.peers.pgqueuer_peer", ("5", "50"), "asyncpg, 5 QueueManagers x batch 50 (tuned)",
        "SELECT count(*) FROM pgqueuer", "PgQueuer 1.6 b50", remaining=True,
    ),
]  # fmt: skip

# Latency only: the same probe against a bare LISTEN + SKIP LOCKED claim (bench/peers/floor_peer.py).
FLOOR = System(
    "floor", "bench.peers.floor_peer", (), "no library: LISTEN + one autocommit SKIP LOCKED claim",
    "SELECT count(*) FROM floor_jobs WHERE state = 1", "PostgreSQL floor",
)  # fmt: skip
