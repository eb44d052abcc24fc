"""The server's cost of a drain: PostgreSQL CPU time, WAL bytes and transactions, per job.

A drain's rate says how fast a system went; these say what each job cost the
server that every design shares, so how far each is from this machine's limit:

- CPU seconds of the PostgreSQL processes that served the run (`pg_cpu_s`):
  the backends and autovacuum workers of the system's own database (found by
  the process title, `postgres: ... user dbname host state`; alone in
  `pg_db_cpu_s`) and the server's shared processes (checkpointer, WAL writer,
  background writer, postmaster), which on a machine shared with other work
  also do the others' share. Backends of other databases are left out (all
  together: `pg_cpu_all_s`). Sampled while the drain runs, so a process that
  ends before the drain does still counts up to its last sample.
- CPU seconds of the system's worker processes (and their children).
- WAL bytes: `pg_current_wal_lsn()` before and after. This one is cluster-wide:
  on a busy shared server it includes the others' writes.
- Transactions: `xact_commit` (and `xact_rollback`) of the system's database in
  `pg_stat_database`, read once its backends have exited (a backend's counts
  reach the statistics when it goes idle for a while or exits), less the
  harness's own polling statements.

Needs psutil (the bench extra) and a PostgreSQL whose processes this user can
read; without them the CPU figures are None and the rest still comes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import psycopg

__all__ = ["ServerMeter"]

# Process titles of PostgreSQL's shared (per-server, not per-database) processes.
_SHARED = ("checkpointer", "background writer", "walwriter", "autovacuum launcher", "logical replication launcher",
           "archiver", "stats collector", "startup", "wal writer")  # fmt: skip


def _postgres_cpu(database: str) -> tuple[dict[int, float], dict[int, float], dict[int, float]]:
    """CPU seconds by pid: (the processes serving `database`, the shared ones, every other backend)."""
    import psutil

    ours: dict[int, float] = {}
    shared: dict[int, float] = {}
    others: dict[int, float] = {}
    for p in psutil.process_iter(["name", "cmdline", "cpu_times"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
            if p.info["name"] != "postgres" and "postgres:" not in cmd:
                continue
            t = p.info["cpu_times"]
            seconds = t.user + t.system
        except (psutil.Error, TypeError):
            continue
        title = cmd.partition("postgres:")[2]
        words = title.split()
        if database in words:
            ours[p.pid] = seconds  # its backends and autovacuum workers
        elif not title or any(s in title for s in _SHARED):
            shared[p.pid] = seconds  # the postmaster (no title) and the server-wide processes
        else:
            others[p.pid] = seconds
    return ours, shared, others


def _tree_cpu(pids: list[int]) -> float:
    import psutil

    total = 0.0
    for pid in pids:
        try:
            root = psutil.Process(pid)
            for p in [root, *root.children(recursive=True)]:
                t = p.cpu_times()
                total += t.user + t.system
        except psutil.Error:
            continue
    return total


@dataclass
class _Span:
    """CPU seconds per pid, from the first sample to the latest."""

    first: dict[int, float] = field(default_factory=dict)
    last: dict[int, float] = field(default_factory=dict)

    def add(self, sample: dict[int, float], *, baseline: bool) -> None:
        for pid, seconds in sample.items():
            if baseline:
                self.first[pid] = seconds
            elif pid not in self.first:
                self.first[pid] = 0.0  # started during the run: all its time is the run's
            self.last[pid] = seconds

    def seconds(self) -> float:
        return sum(max(0.0, self.last[pid] - self.first.get(pid, 0.0)) for pid in self.last)


class ServerMeter:
    """Start before GO, `sample()` now and then while the drain runs, `stop()` at its end, `finish()` after."""

    def __init__(self, server: str, database: str, worker_pids: list[int], harness_pid: int | None = None) -> None:
        self.server = server
        self.database = database
        self.worker_pids = worker_pids
        self.harness_pid = harness_pid  # the backend that counts jobs done: the bench's, not the system's
        self.ours = _Span()
        self.shared = _Span()
        self.others = _Span()
        self.cpu = True
        self.result: dict[str, Any] = {}

    def _sample(self, *, baseline: bool = False) -> None:
        if not self.cpu:
            return
        try:
            ours, shared, others = _postgres_cpu(self.database)
        except ImportError:
            self.cpu = False
            return
        ours.pop(self.harness_pid or 0, None)
        self.ours.add(ours, baseline=baseline)
        self.shared.add(shared, baseline=baseline)
        self.others.add(others, baseline=baseline)

    def _xacts(self, admin: psycopg.Connection[Any]) -> tuple[int, int]:
        admin.execute("SELECT pg_stat_clear_snapshot()")
        row = admin.execute(
            "SELECT xact_commit, xact_rollback FROM pg_stat_database WHERE datname = %s", [self.database]
        ).fetchone()
        return (int(row[0]), int(row[1])) if row else (0, 0)

    def start(self) -> None:
        self.admin = psycopg.connect(self.server, autocommit=True)
        self.xacts_before = self._xacts(self.admin)
        self.lsn_before = self.admin.execute("SELECT pg_current_wal_lsn()").fetchone()[0]  # type: ignore[index]
        self.workers_before = self._workers()
        self._sample(baseline=True)

    def sample(self) -> None:
        self._sample()

    def _workers(self) -> float | None:
        try:
            return _tree_cpu(self.worker_pids)
        except ImportError:
            return None

    def stop(self) -> None:
        """The end of the drain: CPU and WAL are read here."""
        self._sample()
        workers = self._workers()
        wal = self.admin.execute(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s), pg_current_wal_lsn()::text", [self.lsn_before]
        ).fetchone()
        ours, shared, others = self.ours.seconds(), self.shared.seconds(), self.others.seconds()
        self.result = {
            "pg_cpu_s": ours + shared if self.cpu else None,
            "pg_db_cpu_s": ours if self.cpu else None,
            "pg_cpu_all_s": ours + shared + others if self.cpu else None,
            "worker_cpu_s": None if workers is None or self.workers_before is None else workers - self.workers_before,
            "wal_bytes": float(wal[0]) if wal else None,
            # The drain's WAL, from and to: where bench/wal.py reads it record by record.
            "wal_span": [str(self.lsn_before), wal[1]] if wal else None,
        }

    def finish(self, own_statements: int) -> dict[str, Any]:
        """After the workers stopped: the transactions, once the database's backends have gone."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            row = self.admin.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", [self.database]
            ).fetchone()
            if not row or row[0] == 0:
                break
            time.sleep(0.05)
        commits, rollbacks = self._xacts(self.admin)
        self.admin.close()
        self.result["xact_commit"] = commits - self.xacts_before[0] - own_statements
        self.result["xact_rollback"] = rollbacks - self.xacts_before[1]
        return self.result
