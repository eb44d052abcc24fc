"""`just chaos`: workers SIGKILLed, a PostgreSQL that crashes, a stuck transaction, a fleet split by the network.

    python -m tests.chaos                      # 20,000 jobs, 3 workers, a kill every 2 s, one crash; 3 cuts
    python -m tests.chaos --jobs 2000 --idle 5 --cuts 1  # the size tests/test_chaos.py runs in CI

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

The last phase splits the fleet (tests/netns.py; root only, skipped with the
reason elsewhere): fresh workers, each on a host of its own (a network
namespace reaching the server through a veth pair), run jobs of the
`errand` kind (side effect first, then a few milliseconds more) while one
host at a time is cut off for longer than the lease plus the connections'
TCP timeouts, then healed. Printed and asserted: how long until the cut
worker's jobs were rescued (none left running in its name), how many
outcomes its bodies reached during the cut were refused once it was back,
lost and stuck 0, no job succeeded twice, duplicates all explained by a
rescue, and that every cut worker noticed the cut and ran new jobs after
the heal (each also serves a queue of its own, which the check fills).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ledger.db import connect
from ledger.embedded import ensure_server, stop_server
from ledger.migrate import migrate
from ledger.settings import Settings
from ledger.store import Store

from .jobapp import SIDE_TABLE
from .netns import Forwarder, Host, unavailable
from .workers import WorkerProcess, wait_until

TERMINAL = ("succeeded", "cancelled", "discarded")
PARTITION_QUEUE = "partition"

# Per-job facts from the side table and the ledger, for the report. Rows of
# jobapp's on_error hook ('hook:...') share the side table; they are not runs.
_AUDIT = """
WITH runs AS (SELECT job_id, count(*) AS n FROM executions WHERE worker NOT LIKE 'hook:%%' GROUP BY job_id),
rescued AS (SELECT DISTINCT job_id FROM ledger.events WHERE type = 'rescued'),
-- In this run a job fails only when the crash cuts its side-table write: the
-- write may have committed before the connection broke, and the retry runs it again.
crashed AS (SELECT DISTINCT job_id FROM ledger.events WHERE type = 'failed'),
started AS (SELECT job_id, count(*) AS n FROM ledger.events WHERE type = 'started' GROUP BY job_id),
succeeded AS (SELECT job_id, count(*) AS n FROM ledger.events WHERE type = 'succeeded' GROUP BY job_id),
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
  (SELECT count(*) FROM rescued JOIN mine ON mine.id = rescued.job_id) AS rescued,
  (SELECT count(*) FROM succeeded JOIN mine ON mine.id = succeeded.job_id WHERE n > 1) AS succeeded_twice
"""


def _first_failure(lines: list[str], since: datetime) -> float | None:
    """Seconds from `since` to the first database failure a worker logged (its heartbeat, a cycle), if any."""
    for line in lines:
        if line.startswith("{") and ("heartbeat failed" in line or "cycle failed" in line):
            return (datetime.fromisoformat(json.loads(line)["ts"]) - since).total_seconds()
    return None


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
    cuts: int = 3
    """Partitions, one host at a time; 0 skips the phase."""
    cut_seconds: float = 15.0
    """How long a cut lasts: past the lease and the connections' TCP timeouts (ledger/db.py), so the
    cut worker's jobs are rescued and its connections must be made anew after the heal."""
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

    def worker(self, url: str | None = None, queues: str = "", prefix: list[str] | None = None) -> WorkerProcess:
        self._started += 1
        w = WorkerProcess(
            url or self.url, "--queues", queues or f"default={self.concurrency}", "--lease", str(self.lease),
            "--rescue-every", "1", "--poll-interval", "0.5", "--heartbeat-every", "3600",
            "--retention", "off", name=f"chaos-{self._started}", prefix=prefix or [],
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

    def enqueue(self, n: int, kind: str = "sleep", queue: str = "default") -> list[int]:
        ids: list[int] = []
        with connect(self.url) as conn:
            store = Store(conn)
            for start in range(0, n, 5000):
                rows = [(kind, {"seconds": self.work_ms / 1000}, queue, 5, 5, None)] * min(5000, n - start)
                ids += store.enqueue_many(rows)
        return ids

    def running_for(self, worker: str) -> set[int]:
        with connect(self.url) as conn:
            return Store(conn).jobs_running_for_worker(worker)

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

    def audit(self, ids: list[int], into: dict[str, Any] | None = None) -> None:
        into = self.result if into is None else into
        with connect(self.url) as conn:
            row = conn.execute(_AUDIT, {"ids": ids}).fetchone()
            assert row is not None
            into.update(row)
            into["projection_diffs"] = len(Store(conn).projections_diff())

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

    def kills_phase(self) -> None:
        """SIGKILLs and a crash while `jobs` drain, an audit, then the idle transaction."""
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

    def partition(self) -> None:
        """Fresh workers on hosts of their own; one host at a time cut off mid-job, then healed."""
        r: dict[str, Any] = {"cuts": []}
        self.result["partition"] = r
        reason = unavailable()
        if reason:
            r["skipped"] = reason
            self.say(f"partition phase skipped: {reason}")
            return
        forwarder = Forwarder(self.url)
        hosts: list[Host] = []
        fleet: list[WorkerProcess] = []
        ids: list[int] = []
        began = time.monotonic()
        try:
            for i in range(self.workers):
                hosts.append(Host())
                url = forwarder.listen(hosts[-1].gateway)
                # A queue of this phase's own, first (the rescue job goes to a worker's first queue):
                # what the idle phase left in `default` is not this phase's to drain.
                queues = f"{PARTITION_QUEUE}={self.concurrency},island-{i}=1"
                fleet.append(self.worker(url, queues=queues, prefix=hosts[-1].command))
            for w in fleet:
                w.started()
            self.say(f"partition: {self.workers} workers on hosts of their own ({', '.join(h.name for h in hosts)})")
            for _ in range(self.cuts):
                r["cuts"].append(self._cut(hosts, fleet, ids, began))
            wait_until(lambda: self.settled(ids), timeout=self.lease * 10 + 120, what="every job to settle")
            r["seconds"] = time.monotonic() - began
            r["jobs"] = len(ids)
            self.audit(ids, into=r)
            # Each worker that was cut runs new jobs: only it serves its island queue.
            cut_off = sorted({c["host"] for c in r["cuts"]})
            islands = {i: self.enqueue(3, kind="errand", queue=f"island-{i}") for i in cut_off}
            wait_until(
                lambda: all(self.settled(jobs) for jobs in islands.values()), timeout=120,
                what="the healed workers to run new jobs",
            )  # fmt: skip
            ran_by = "SELECT DISTINCT worker FROM executions WHERE job_id = ANY(%s) AND worker NOT LIKE 'hook:%%'"
            with connect(self.url) as conn:
                r["carried_on"] = sum(
                    [row["worker"] for row in conn.execute(ran_by, [jobs]).fetchall()] == [fleet[i].name]
                    for i, jobs in islands.items()
                )
            r["refused"] = sum(len(w.not_recorded()) for w in fleet)
            # Jobs rescued from a cut worker whose body it had started (its side effect is on record):
            # each such body reached an outcome the worker could not record. A job whose claim committed
            # but whose answer the cut swallowed never ran there, and has no outcome to refuse.
            ran_through = """SELECT count(DISTINCT e.job_id) FROM ledger.events e
                             JOIN executions x ON x.job_id = e.job_id AND x.worker = e.data ->> 'worker'
                             WHERE e.type = 'rescued' AND e.job_id = ANY(%s) AND e.data ->> 'worker' = ANY(%s)"""
            cut_names = [fleet[c["host"]].name for c in r["cuts"]]
            with connect(self.url) as conn:
                r["ran_through"] = conn.execute(ran_through, [ids, cut_names]).fetchone()["count"]
            r["exit_codes"] = [w.stop() for w in fleet]
        finally:
            for host in hosts:
                host.heal()
            for w in fleet:
                w.kill()
            for host in hosts:
                host.remove()
            forwarder.close()

    def _cut(self, hosts: list[Host], fleet: list[WorkerProcess], ids: list[int], began: float) -> dict[str, Any]:
        """Cut the host whose worker runs the most jobs, for cut_seconds; keep work flowing meanwhile."""
        cut: dict[str, Any] = {}
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            now = time.monotonic()
            if len(ids) - self.finished(ids) < 1000:  # keep the workers busy: a cut must land mid-job
                ids += self.enqueue(2000, kind="errand", queue=PARTITION_QUEUE)
            if not cut:
                held = {i: self.running_for(w.name) for i, w in enumerate(fleet)}
                victim = max(held, key=lambda i: len(held[i]))
                if held[victim]:
                    hosts[victim].cut()
                    cut = {"host": victim, "at": now, "wall": datetime.now(UTC), "held": len(held[victim]),
                           "mark": len(fleet[victim].lines)}  # fmt: skip
                    self.say(f"{now - began:6.1f}s  cut {hosts[victim].name}: {fleet[victim].name} was running "
                             f"{len(held[victim])} job(s)")  # fmt: skip
            else:
                w = fleet[cut["host"]]
                if "rescued_after" not in cut and not self.running_for(w.name):
                    cut["rescued_after"] = now - cut["at"]
                if now - cut["at"] >= self.cut_seconds and "rescued_after" in cut:
                    cut["noticed_after"] = _first_failure(w.lines[cut["mark"] :], cut["wall"])
                    cut["noticed"] = cut["noticed_after"] is not None
                    hosts[cut["host"]].heal()
                    noticed = f"{cut['noticed_after']:.1f}s" if cut["noticed"] else "never"
                    self.say(f"{now - began:6.1f}s  healed {hosts[cut['host']].name}: it noticed the cut after "
                             f"{noticed}; its jobs were rescued after {cut['rescued_after']:.1f}s")  # fmt: skip
                    time.sleep(2.0)  # before the next cut, the healed worker is back at work
                    return cut
            time.sleep(0.1)
        raise AssertionError(f"a cut did not complete: {cut}")

    def run(self) -> dict[str, Any]:
        self.setup()
        try:
            if self.jobs > 0:
                self.kills_phase()
            if self.cuts > 0:
                self.partition()
        finally:
            for w in self._procs:
                w.kill()
            stop_server(self.data_dir)
        return self.result

    def report(self) -> str:
        r = self.result
        lines: list[str] = []
        if "jobs" in r:  # the kills phase ran
            lines += [
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
        p = r.get("partition")
        if p and "skipped" in p:
            lines.append(f"partition: skipped ({p['skipped']})")
        elif p:
            rescued = ", ".join(f"{c['rescued_after']:.1f}s" for c in p["cuts"])
            noticed = ", ".join(f"{c['noticed_after']:.1f}s" if c["noticed"] else "never" for c in p["cuts"])
            lines += [
                f"partition: {p['jobs']:,} jobs, {self.workers} workers on hosts of their own, {len(p['cuts'])} cuts "
                f"of {self.cut_seconds:g}s (lease {self.lease:g}s), settled in {p['seconds']:.1f}s",
                f"  cut worker noticed after   {noticed} (its first failed heartbeat or cycle)",
                f"  rescued after the cut      {rescued} (until no job was running in the cut worker's name)",
                f"  late outcomes refused      {p['refused']} (reached by bodies that ran on through a cut; "
                f"{p['ran_through']} rescued job(s) had begun there)",
                f"  lost                       {p['lost']}",
                f"  stuck (not terminal)       {p['stuck']}",
                f"  succeeded twice            {p['succeeded_twice']}",
                f"  duplicate executions       {p['duplicates']} in {p['duplicated_jobs']} jobs: "
                f"{p['duplicated_rescued']} rescued, {p['unexplained']} unexplained",
                f"  succeeded without running  {p['succeeded_without_running']}",
                f"  after the heal             {p['carried_on']}/{len({c['host'] for c in p['cuts']})} cut workers "
                f"ran new jobs; exit codes {p['exit_codes']}",
                f"  rebuild --check            {'clean' if p['projection_diffs'] == 0 else p['projection_diffs']}",
            ]
        return "\n".join(lines)

    def failures(self) -> list[str]:
        """What went wrong in this run, for main's exit code and the test."""
        r, bad = self.result, []
        for key in ("lost", "stuck", "unexplained", "succeeded_without_running", "projection_diffs"):
            if r.get(key):
                bad.append(f"{key}: {r[key]}")
        p = r.get("partition")
        if p and "skipped" not in p:
            for key in ("lost", "stuck", "unexplained", "succeeded_without_running", "succeeded_twice",
                        "projection_diffs"):  # fmt: skip
                if p.get(key):
                    bad.append(f"partition {key}: {p[key]}")
            if not all(c["noticed"] for c in p["cuts"]):
                bad.append("partition: a cut worker did not notice its cut")
            if p["carried_on"] != len({c["host"] for c in p["cuts"]}):
                bad.append("partition: a cut worker did not run new jobs after the heal")
            if any(p["exit_codes"]):
                bad.append(f"partition: exit codes {p['exit_codes']}")
        return bad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=4, help="jobs at once per worker")
    parser.add_argument("--work-ms", type=float, default=3.0)
    parser.add_argument("--kill-every", type=float, default=2.0)
    parser.add_argument("--idle", type=float, default=60.0, help="seconds to hold the idle transaction; 0 skips")
    parser.add_argument("--cuts", type=int, default=3, help="network partitions, one host at a time; 0 skips")
    parser.add_argument("--cut-seconds", type=float, default=15.0, help="how long each partition lasts")
    args = parser.parse_args()
    chaos = Chaos(
        Settings().data_dir / "chaos", jobs=args.jobs, workers=args.workers, concurrency=args.concurrency,
        work_ms=args.work_ms, kill_every=args.kill_every, idle_seconds=args.idle, cuts=args.cuts,
        cut_seconds=args.cut_seconds,
    )  # fmt: skip
    chaos.run()
    print(chaos.report())
    bad = chaos.failures()
    for line in bad:
        print(f"FAILED: {line}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    threading.excepthook = lambda args: None  # a killed worker's reader thread is not news
    main()
