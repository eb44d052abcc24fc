"""Process plumbing of the benchmark: fresh databases, peer subprocesses, the drain clock and its cost."""

from __future__ import annotations

import functools
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

from bench import envs
from bench.cost import ServerMeter

ROOT = Path(__file__).resolve().parent.parent

__all__ = ["FLOOR", "SYSTEMS", "System", "as_url", "free_udp_port", "system"]


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


@functools.cache
def _oban_python() -> str:
    python, why = envs.oban_python(install=False)
    if python is None:
        raise RuntimeError(f"oban: {why}")
    return python


@dataclass(frozen=True)
class System:
    name: str  # FAMILY_default or FAMILY_tuned
    module: str
    worker_args: tuple[str, ...]
    settings: str
    done_sql: str  # jobs finished so far, by SQL; with `remaining`, the jobs not finished yet
    label: str
    remaining: bool = False
    env_extra: tuple[tuple[str, str], ...] = ()  # settings every verb of the peer needs (awa's stripes)
    runtime: str = "main"  # "main": this interpreter; "oban": the Python >= 3.12 of bench/envs.py
    enqueue: bool = True  # False: the same client as its family's default row, whose enqueue rows stand for it

    @property
    def family(self) -> str:
        return self.name.rpartition("_")[0] or self.name

    def python(self) -> str:
        return sys.executable if self.runtime == "main" else _oban_python()

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
        env = {**os.environ, "BENCH_DATABASE_URL": url, "PYTHONPATH": str(ROOT), **dict(self.env_extra)}
        if udp_port:
            env["BENCH_UDP_PORT"] = str(udp_port)
        return env

    def call(self, url: str, *args: str, udp_port: int | None = None, timeout: float = 900) -> dict[str, Any]:
        out = subprocess.run(
            [self.python(), "-m", self.module, *args], env=self.env(url, udp_port), cwd=ROOT,
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
                [self.python(), "-m", self.module, "worker", *self.worker_args],
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


def count_until_done(
    system: System, conn: psycopg.Connection[Any], jobs: int, meter: ServerMeter, deadline: float
) -> tuple[int, int]:
    """Count finished jobs until all are, or the deadline: (done, counts made).

    The count is the bench's work, not the system's: its backend's CPU is left out of the
    server's (ServerMeter's harness_pid), and it waits five times as long as it took (a count
    over a table of done jobs grows with the drain: at every 10 ms it took up to half a core of
    this 2-core machine from the system being measured).
    """
    polls, next_sample = 0, time.perf_counter() + 0.5
    while True:
        asked = time.perf_counter()
        done = system.done(conn, jobs)
        polls += 1
        if done >= jobs or asked > deadline:
            return done, polls
        time.sleep(max(0.01, 5 * (time.perf_counter() - asked)))
        if time.perf_counter() > next_sample:  # catches processes that end before the drain does
            meter.sample()
            next_sample += 0.5


def drain(system: System, server: str, jobs: int, processes: int) -> dict[str, Any]:
    """Queue `jobs` no-op jobs, start the workers together, time until SQL counts them all done.

    Beside the rate, what the drain cost the server (bench/cost.py): PostgreSQL's CPU
    seconds, the WAL bytes and the transactions, and the workers' own CPU seconds.
    """
    url = system.fresh(server)
    system.call(url, "fill", str(jobs))
    return drain_filled(system, server, url, jobs, processes)


def drain_filled(
    system: System, server: str, url: str, jobs: int, processes: int, count_url: str | None = None
) -> dict[str, Any]:
    """drain() of a database already holding the `jobs` jobs; the workers connect to `url`, the
    count to `count_url` (default `url`: a role that cannot read the tables counts as another)."""
    procs = system.workers(url, processes)
    with psycopg.connect(count_url or url, autocommit=True) as conn:
        meter = ServerMeter(server, f"bench_{system.name}", [p.pid for p in procs], conn.info.backend_pid)
        meter.start()
        started = time.perf_counter()
        go(procs)
        done, polls = count_until_done(system, conn, jobs, meter, started + 300)
        elapsed = time.perf_counter() - started
        meter.stop()
    stop(procs)
    if done < jobs:
        raise RuntimeError(f"{system.name}: only {done} of {jobs} jobs done after 300 s")
    return {"jobs": jobs, "seconds": elapsed, "rate": jobs / elapsed, "cores": os.cpu_count(),
            **meter.finish(own_statements=polls)}  # fmt: skip


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


_LEDGER_DONE = "SELECT count(*) FROM ledger.jobs WHERE kind IN ('noop', 'io', 'keyed') AND state = 'succeeded'"
_PROCRASTINATE_DONE = "SELECT count(*) FROM procrastinate_jobs WHERE task_name = 'noop' AND status = 'succeeded'"
_PGQUEUER_LEFT = "SELECT count(*) FROM pgqueuer"  # it deletes a job's row when it completes: done = queued - left
_OBAN_DONE = "SELECT count(*) FROM oban_jobs WHERE worker = '__main__.Noop' AND state = 'completed'"
# awa's queue storage keeps a successful completion as one entry of a compact batch row (or, off
# its short path, a done_entries row), and its ring rotation later folds retired slots into
# queue_terminal_rollups; its view awa.terminal_jobs unnests the retained rows, which takes
# seconds, too slow to poll. Stripes name the physical queues default#0, default#1, ... The
# no-op drain has no tombstones (rolled-back completions), so the sum of the three is exact.
_AWA_DONE = """SELECT (SELECT coalesce(sum(completed_count), 0) FROM awa.receipt_completion_batches
                WHERE queue = 'default' OR queue LIKE 'default#%')
     + (SELECT count(*) FROM awa.done_entries WHERE (queue = 'default' OR queue LIKE 'default#%')
                AND state = 'completed')
     + (SELECT coalesce(sum(pruned_completed_count), 0) FROM awa.queue_terminal_rollups
                WHERE queue = 'default' OR queue LIKE 'default#%')"""

# Two rows per system: "default" as its documentation starts a worker, "tuned" with the best
# settings its documentation gives for throughput (bench/README.md says where each comes from).
# Four processes of a row must fit in max_connections (100 by default) for drain_4p.
SYSTEMS = [
    System("ledger_default", "bench.peers.ledger_peer", (),
           "`just worker`: WorkerConfig defaults (queues default=100, 2 cycles in flight)", _LEDGER_DONE,
           "ledger default"),
    System("ledger_tuned", "bench.peers.ledger_peer", ("400", "3"),
           "concurrency 400, 3 cycles in flight", _LEDGER_DONE, "ledger tuned", enqueue=False),
    System("procrastinate_default", "bench.peers.procrastinate_peer", ("10",),
           "concurrency 10, pool 4 (psycopg_pool's default), listen_notify", _PROCRASTINATE_DONE,
           "Procrastinate 3.10 default"),
    System("procrastinate_tuned", "bench.peers.procrastinate_peer", ("20", "21"),
           "concurrency 20, pool 21 (concurrency + 1, its docs), listen_notify", _PROCRASTINATE_DONE,
           "Procrastinate 3.10 tuned", enqueue=False),
    System("pgqueuer_default", "bench.peers.pgqueuer_peer", ("1", "10"),
           "`pgq run`: 1 PgQueuer, batch_size 10, asyncpg, uvloop", _PGQUEUER_LEFT, "PgQueuer 1.6 default",
           remaining=True),
    System("pgqueuer_tuned", "bench.peers.pgqueuer_peer", ("5", "50"),
           "5 PgQueuers x batch_size 50, asyncpg, uvloop", _PGQUEUER_LEFT, "PgQueuer 1.6 tuned",
           remaining=True, enqueue=False),
    System("oban_default", "bench.peers.oban_peer", ("10", "10", "0.005", "log"),
           "`oban start`: queue default=10, pool 1-10, job logs at INFO, uvloop", _OBAN_DONE, "oban-py 0.7 default",
           runtime="oban"),
    System("oban_tuned", "bench.peers.oban_peer", ("100", "10", "0.005", "quiet"),
           "queue default=100, pool 1-10, no job logs, uvloop", _OBAN_DONE, "oban-py 0.7 tuned",
           runtime="oban", enqueue=False),
    System("awa_default", "bench.peers.awa_peer", (),
           "AsyncClient(url).start(): 10 workers per queue, pool 10, poll 200 ms", _AWA_DONE, "awa 0.6.9 default"),
    System("awa_tuned", "bench.peers.awa_peer", ("1024", "20", "50"),
           "1024 workers (4 completion shards), pool 20, poll 50 ms, 1 claimer, 1 stripe", _AWA_DONE,
           "awa 0.6.9 tuned", enqueue=False),
]  # fmt: skip

# Names the bench used before the default/tuned rows; `python -m bench.cpu ledger` still works.
_ALIASES = {"ledger": "ledger_tuned", "procrastinate": "procrastinate_default", "pgqueuer": "pgqueuer_default",
            "pgqueuer_b50": "pgqueuer_tuned", "oban": "oban_default", "awa": "awa_default"}  # fmt: skip


def system(name: str) -> System:
    wanted = _ALIASES.get(name, name)
    for s in SYSTEMS:
        if s.name == wanted:
            return s
    raise KeyError(f"no system {name!r}; one of {', '.join(s.name for s in SYSTEMS)}")


# Latency only: the same probe against a bare LISTEN + SKIP LOCKED claim (bench/peers/floor_peer.py).
FLOOR = System(
    "floor", "bench.peers.floor_peer", (), "no library: LISTEN + one autocommit SKIP LOCKED claim",
    "SELECT count(*) FROM floor_jobs WHERE state = 1", "PostgreSQL floor",
)  # fmt: skip
