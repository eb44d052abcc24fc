"""`just chaos`: jobs flowing through workers that are SIGKILLed, a PostgreSQL that crashes, a stuck transaction.

    python -m tests.chaos                      # 20,000 jobs, 3 workers, a kill every 2 s, one crash
    python -m tests.chaos --jobs 2000 --idle 5 # the size tests/test_chaos.py runs in CI

The run owns its PostgreSQL (an embedded server in its own folder) because it
restarts it: `pg_ctl stop -m immediate`, which is a crash as far as the data
is concerned, then a start that recovers from the WAL. Each job (the `sleep`
kind of tests/jobapp.py, a few milliseconds) records every execution in a side
table, so what really ran is counted apart from what the ledger says.

Printed at the end, and asserted by the test:
- lost: jobs enqueued that the ledger no longer knows (must be 0);
- stuck: jobs not in a terminal state once the queue has settled (must be 0);
- duplicates: executions beyond one per job; each must belong to a job that
  was in flight at a fault, which its events show: rescued (its worker was
  killed, or missed its lease while the database was down), or an attempt
  failed by the crash (its side-table write may have committed just before
  the connection broke). Unexplained ones, and any job that ran more often
  than it was claimed, must be 0;
- succeeded without running: a success with no execution recorded (must be 0);
- `ledger rebuild --check`: the projections equal the fold of the events.
Then a second phase holds a transaction open (idle, with a snapshot and an
xid, so vacuum cannot clean behind it) while jobs flow, and prints the
throughput during and after it.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ledger.db import connect
from ledger.embedded import ensure_server, stop_server
from ledger.migrate import migrate
from ledger.settings import Settings
from ledger.store import Store

from .jobapp import SIDE_TABLE
from .workers import WorkerProcess, wait_until

TERMINAL = ("succeeded", "cancelled", "discarded")

# Per-job facts from the side table and the ledger, for the report. Rows of
# jobapp's on_error hook ('hook:...') share the side table; they are not runs.
_AUDIT = """
WITH runs AS (SELECT job_id, count(*) AS n FROM executions WHERE worker NOT LIKE 'hook:%%' GROUP BY job_id),
rescued AS (SELECT DISTINCT job_id FROM ledger.events WHERE type = 'rescued'),
-- In this run a job fails only when the crash cuts its side-table write: the
-- write may have committed before the connection broke, and the retry runs it again.
crashed AS (SELECT DISTINCT job_id FROM ledger.events WHERE type = 'failed'),
started AS (SELECT job_id, count(*) AS n FROM ledger.events WHERE type = 'started' GROUP BY job_id),
mine AS (SELECT unnest(%(ids)s::bigint[]) AS id)
SELECT
  (SELECT count(*) FROM mine LEFT JOIN ledger.jobs j ON j.id = mine.id WHERE j.id IS NULL) AS lost,
  (SELECT count(*) FROM mine JOIN ledger.jobs j USING (id) WHERE j.state NOT IN ('succeeded', 'cancelled', 'discarded'))
    AS stuck,
  (SELECT count(*) FROM mine JOIN ledger.jobs j USING (id) WHERE j.state = 'discarded') AS discarded,
  (SELECT coalesce(sum(n - 1), 0) FROM runs JOIN mine ON mine.id = runs.job_id WHERE n > 1) AS duplicates,
  (SELECT count(*) FROM runs JOIN mine ON mine.id = runs.job_id WHERE n > 1) AS duplicated_jobs,
  (SELECT count(*) FROM runs JOIN mine ON mine.id = runs.job_id
    WHERE n > 1 AND runs.job_id IN (SELECT job_id FROM rescued)) AS duplicated_rescued,
  (SELECT count(*) FROM runs JOIN mine ON mine.id = runs.job_id
    WHERE n > 1 AND runs.job_id NOT IN (SELECT job_id FROM rescued) AND runs.job_id IN (SELECT job_id FROM crashed))
    AS duplicated_crashed,
  -- A duplicate that neither a rescue nor a crash-failed attempt explains, or
  -- a job whose body ran more often than it was claimed (two runs of one claim).
  (SELECT count(*) FROM runs JOIN mine ON mine.id = runs.job_id LEFT JOIN started s ON s.job_id = runs.job_id
    WHERE (runs.n > 1 AND runs.job_id NOT IN (SELECT job_id FROM rescued UNION SELECT job_id FROM crashed))
       OR runs.n > coalesce(s.n, 0)) AS unexplained,
  (SELECT count(*) FROM mine JOIN ledger.jobs j USING (id) LEFT JOIN runs ON runs.job_id = j.id
    WHERE j.state = 'succeeded' AND runs.job_id IS NULL) AS succeeded_without_running,
  (SELECT count(*) FROM rescued JOIN mine ON mine.id = rescued.job_id) AS rescued
"""


@dataclass
class Chaos:
    """One chaos run's settings and what it saw."""

    data_dir: Path
    jobs: int = 20_000
    workers: int = 3
    concurrency: int = 4
    work_ms: float = 3.0
    kill_every: float = 2.0
    idle_seconds: float = 60.0
    lease: float = 3.0
    seed: int = 1
    log: Callable[[str], None] = print
    events: list[str] = field(default_factory=list)
    result: dict[str, Any] = field(default_factory=dict)
    url: str = ""
    _procs: list[WorkerProcess] = field(default_factory=list)
    _started: int = 0

    # ------------------------------------------------------------ plumbing

    def say(self, text: str) -> None:
        self.events.append(text)
        self.log(text)

    def worker(self) -> WorkerProcess:
        self._started += 1
        w = WorkerProcess(
            self.url, "--queues", f"default={self.concurrency}", "--lease", str(self.lease),
            "--rescue-every", "1", "--poll-interval", "0.5", "--heartbeat-every", "3600",
            "--retention", "off", name=f"chaos-{self._started}",
        )  # fmt: skip
        self._procs.append(w)
        return w

    def alive(self) -> list[WorkerProcess]:
        return [w for w in self._procs if w.proc.poll() is None]

    def counts(self, ids: list[int]) -> dict[str, int]:
        with connect(self.url) as conn:
            rows = conn.execute(
                "SELECT state::text, count(*) AS n FROM ledger.jobs WHERE id = ANY(%s) GROUP BY 1", [ids]
            ).fetchall()
        return {r["state"]: r["n"] for r in rows}

    def finished(self, ids: list[int]) -> int:
        """How many of `ids` are in a terminal state."""
        counts = self.counts(ids)
        return sum(counts.get(s, 0) for s in TERMINAL)

    def settled(self, ids: list[int]) -> bool:
        return self.finished(ids) == len(ids)

    def enqueue(self, n: int) -> list[int]:
        ids: list[int] = []
        with connect(self.url) as conn:
            store = Store(conn)
            for start in range(0, n, 5000):
                rows = [("sleep", {"seconds": self.work_ms / 1000}, "default", 5, 5, None)] * min(5000, n - start)
                ids += store.enqueue_many(rows)
        return ids

    # ------------------------------------------------------------ the run

    def setup(self) -> None:
        shutil.rmtree(self.data_dir, ignore_errors=True)
        self.url = ensure_server(self.data_dir)
        with connect(self.url) as conn:
            migrate(conn)
            conn.execute(SIDE_TABLE)

    def kills_and_crash(self, ids: list[int]) -> None:
        """Until the jobs settle: a SIGKILL and a fresh worker every kill_every seconds; one crash at half-way."""
        rng = random.Random(self.seed)
        crashed = False
        began = time.monotonic()
        next_kill = began + self.kill_every
        deadline = began + max(600.0, self.jobs / 20)
        while time.monotonic() < deadline:
            done = self.finished(ids)
            if done == len(ids):
                break
            now = time.monotonic()
            if not crashed and done >= len(ids) // 2:
                self.say(f"{now - began:6.1f}s  {done:,} done: PostgreSQL crash (pg_ctl stop -m immediate) and restart")
                stop_server(self.data_dir, mode="immediate")
                time.sleep(1.0)
                self.url = ensure_server(self.data_dir)
                crashed = True
                continue
            if now >= next_kill and done < len(ids):
                victim = rng.choice(self.alive())
                victim.kill()
                self.worker()
                self.say(f"{now - began:6.1f}s  {done:,} done: SIGKILL {victim.name}, started chaos-{self._started}")
                next_kill = now + self.kill_every
            time.sleep(0.2)
        self.result["seconds"] = time.monotonic() - began
        self.result["kills"] = sum(1 for e in self.events if "SIGKILL" in e)
        self.result["crashes"] = int(crashed)

    def audit(self, ids: list[int]) -> None:
        with connect(self.url) as conn:
            row = conn.execute(_AUDIT, {"ids": ids}).fetchone()
            assert row is not None
            self.result.update(row)
            self.result["projection_diffs"] = len(Store(conn).projections_diff())

    def idle_transaction(self) -> None:
        """Jobs flow while a transaction sits idle with a snapshot and an xid; throughput during and after."""
        # Enough for both windows at twice the pace seen under the kills (which slow it).
        rate = self.result["jobs"] / max(self.result["seconds"], 1e-9)
        backlog = int(rate * 2 * (2 * self.idle_seconds + 3)) + 1000
        ids = self.enqueue(backlog)

        def succeeded() -> int:
            return self.counts(ids).get("succeeded", 0)

        time.sleep(2)  # the workers reach their pace before the transaction opens
        with connect(self.url, autocommit=False) as holder:
            holder.execute("SELECT txid_current(), count(*) FROM ledger.jobs")  # an xid and a snapshot, then idle
            before = succeeded()
            time.sleep(self.idle_seconds)
            during = succeeded() - before
            holder.rollback()
        # Without kills the workers run much faster than the estimate above assumed,
        # and the backlog could run dry in the first window: top it up for the second.
        ids += self.enqueue(int(during / self.idle_seconds * 2 * (self.idle_seconds + 3)) + 1000)
        before = succeeded()
        time.sleep(self.idle_seconds)
        after = succeeded() - before
        exhausted = succeeded() == len(ids)
        self.result["idle_during"] = during / self.idle_seconds
        self.result["idle_after"] = after / self.idle_seconds
        self.result["idle_backlog_exhausted"] = exhausted
        # What is left of the backlog is not waited for: this phase measures pace, the first one loss.

    def run(self) -> dict[str, Any]:
        self.setup()
        try:
            ids = self.enqueue(self.jobs)
            self.result["jobs"] = len(ids)
            self.say(f"enqueued {len(ids):,} jobs of {self.work_ms:g} ms; {self.workers} workers x {self.concurrency}")
            for _ in range(self.workers):
                self.worker()
            self.kills_and_crash(ids)
            # The last kills' jobs come back after a lease and a rescue pass.
            wait_until(lambda: self.settled(ids), timeout=self.lease * 10 + 60, what="every job to settle")
            self.audit(ids)
            if self.idle_seconds > 0:
                self.idle_transaction()
            for w in self.alive():
                w.stop()
        finally:
            for w in self._procs:
                w.kill()
            stop_server(self.data_dir)
        return self.result

    def report(self) -> str:
        r = self.result
        lines = [
            f"chaos: {r['jobs']:,} jobs, {self.workers} workers, {r['kills']} SIGKILLs, {r['crashes']} PostgreSQL "
            f"crash, settled in {r['seconds']:.1f}s ({r['jobs'] / r['seconds']:,.0f} jobs/s through it all)",
            f"  lost                       {r['lost']}",
            f"  stuck (not terminal)       {r['stuck']}",
            f"  discarded                  {r['discarded']}",
            f"  rescued jobs               {r['rescued']}",
            f"  duplicate executions       {r['duplicates']} in {r['duplicated_jobs']} jobs: "
            f"{r['duplicated_rescued']} rescued after a kill or lapsed lease, {r['duplicated_crashed']} "
            f"failed by the crash, {r['unexplained']} unexplained",
            f"  succeeded without running  {r['succeeded_without_running']}",
            f"  rebuild --check            {'clean' if r['projection_diffs'] == 0 else r['projection_diffs']}",
        ]
        if "idle_during" in r:
            lines.append(
                f"idle transaction held {self.idle_seconds:g}s: {r['idle_during']:,.0f} jobs/s during, "
                f"{r['idle_after']:,.0f} jobs/s in the {self.idle_seconds:g}s after"
                + (" (backlog ran out: the 'after' figure is a floor)" if r["idle_backlog_exhausted"] else "")
            )
        return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=4, help="jobs at once per worker")
    parser.add_argument("--work-ms", type=float, default=3.0)
    parser.add_argument("--kill-every", type=float, default=2.0)
    parser.add_argument("--idle", type=float, default=60.0, help="seconds to hold the idle transaction; 0 skips")
    args = parser.parse_args()
    chaos = Chaos(
        Settings().data_dir / "chaos", jobs=args.jobs, workers=args.workers, concurrency=args.concurrency,
        work_ms=args.work_ms, kill_every=args.kill_every, idle_seconds=args.idle,
    )  # fmt: skip
    chaos.run()
    print(chaos.report())
    r = chaos.result
    bad = r["lost"] or r["stuck"] or r["unexplained"] or r["succeeded_without_running"] or r["projection_diffs"]
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    threading.excepthook = lambda args: None  # a killed worker's reader thread is not news
    main()
