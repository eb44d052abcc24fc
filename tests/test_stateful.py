"""The centrepiece: random command sequences against the real schema, checked against a pure fold.

Each example runs inside one transaction on a fresh database and rolls back
at the end, so examples are independent and cheap; every command runs in a
savepoint so a refusal can be checked to have written nothing. Inside a
transaction now() stands still, so "due" and "later" times are chosen
relative to it (T - 1s and T + 1h).
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime, timedelta
from typing import Any, ClassVar

import psycopg
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    rule,
    run_state_machine_as_test,
)
from psycopg.rows import DictRow

from ledger import retry_policy
from ledger.db import connect
from ledger.errors import IllegalTransition, VersionConflict
from ledger.models import Event
from ledger.store import Store

from .model import CLAIMABLE, ModelJob, discarded_errors, fold_all

QUEUE = "q"
WORKER = "w1"
STALE = "stale"


class LedgerMachine(RuleBasedStateMachine):
    url: ClassVar[str] = ""
    conn: ClassVar[psycopg.Connection[DictRow] | None] = None

    jobs = Bundle("jobs")

    def __init__(self) -> None:
        super().__init__()
        if LedgerMachine.conn is None or LedgerMachine.conn.closed:
            LedgerMachine.conn = connect(self.url, autocommit=False)
        self.db = LedgerMachine.conn
        self.store = Store(self.db)
        self.folded: dict[int, ModelJob] = {}
        self.events: dict[int, list[Event]] = {}

    @initialize()
    def begin(self) -> None:
        row = self.db.execute("SELECT now() AS t").fetchone()
        assert row is not None
        self.now: datetime = row["t"]

    def teardown(self) -> None:
        self.db.rollback()

    # ---------------------------------------------------------------- helpers

    def when(self, due: bool) -> datetime:
        return self.now - timedelta(seconds=1) if due else self.now + timedelta(hours=1)

    def n_events(self) -> int:
        row = self.db.execute("SELECT count(*) AS n FROM ledger.events").fetchone()
        assert row is not None
        n: int = row["n"]
        return n

    def attempt(self, legal: bool, command: Any) -> Any:
        """Run a command in a savepoint; it must succeed iff `legal`, and a refusal must write nothing."""
        before = self.n_events()
        try:
            with self.db.transaction():
                result = command()
        except (IllegalTransition, VersionConflict) as exc:
            assert not legal, f"refused a legal command: {exc}"
            assert self.n_events() == before, "a refused command wrote events"
            return None
        assert legal, "accepted an illegal command"
        return result

    def version_arg(self, job_id: int, which: str) -> int | None:
        current = self.folded[job_id].version
        return {"none": None, "right": current, STALE: current - 1}[which]

    # ---------------------------------------------------------------- rules

    @rule(
        target=jobs,
        priorities=st.lists(st.integers(0, 9), min_size=1, max_size=3),
        max_attempts=st.integers(1, 3),
        due=st.booleans(),
    )
    def enqueue(self, priorities: list[int], max_attempts: int, due: bool) -> Any:
        run_at = None if due else self.when(False)
        rows = [("k", {"p": p}, QUEUE, p, max_attempts, run_at) for p in priorities]
        ids = self.store.enqueue_many(rows)
        self.refresh()
        for i in ids:
            assert self.folded[i].state == ("available" if due else "scheduled")
        return multiple(*ids)

    @rule(n=st.integers(1, 4))
    def claim(self, n: int) -> None:
        due = [j for j in self.folded.values() if j.state in CLAIMABLE and j.run_at <= self.now]
        expected = [j.id for j in sorted(due, key=lambda j: (j.priority, j.run_at, j.id))[:n]]
        claimed = self.store.claim(QUEUE, n, WORKER)
        assert [j.id for j in claimed] == expected
        assert all(j.state == "running" for j in claimed)
        self.refresh()

    @rule(job=jobs, version=st.sampled_from(["none", "right", STALE]))
    def succeed(self, job: int, version: str) -> None:
        legal = self.folded[job].state == "running" and version != STALE
        ev = self.version_arg(job, version)
        result = self.attempt(legal, lambda: self.store.succeed(job, expected_version=ev))
        if result is not None:
            assert result.state == "succeeded"
        self.refresh()

    @rule(batch=st.lists(st.tuples(jobs, st.sampled_from(["right", STALE])), min_size=1, max_size=4))
    def succeed_many(self, batch: list[tuple[int, str]]) -> None:
        """The worker's batch completer: each job recorded iff running at the version given."""
        wanted = dict(batch)  # a job named twice: the last version choice counts
        versions = {job: self.version_arg(job, which) for job, which in wanted.items()}
        expected = {job: self.folded[job].state == "running" and wanted[job] == "right" for job in wanted}
        before = self.n_events()
        recorded = self.store.succeed_many([(job, v) for job, v in versions.items() if v is not None])
        assert recorded == expected
        assert self.n_events() == before + sum(expected.values())
        self.refresh()

    @rule(job=jobs, due=st.booleans(), discard=st.booleans(), backoff=st.booleans())
    def fail(self, job: int, due: bool, discard: bool, backoff: bool) -> None:
        before = self.folded[job]
        legal = before.state == "running"
        # The worker's retry time: the retry policy's backoff, or a time of the test's choosing.
        retry_at = retry_policy.retry_at(before.attempt, self.now, 0.5) if backoff else self.when(due)
        result = self.attempt(legal, lambda: self.store.fail(job, "boom", retry_at=retry_at, discard=discard))
        if result is not None:
            spent = discard or before.attempt >= before.max_attempts
            assert result.state == ("discarded" if spent else "retryable")
            if not spent and backoff:
                assert result.run_at > self.now, "the default backoff delays a retry"
        self.refresh()

    @rule(job=jobs, version=st.sampled_from(["none", "right", STALE]))
    def cancel(self, job: int, version: str) -> None:
        legal = self.folded[job].state in CLAIMABLE | {"running"} and version != STALE
        ev = self.version_arg(job, version)
        self.attempt(legal, lambda: self.store.cancel(job, "test", expected_version=ev))
        self.refresh()

    @rule(job=jobs, due=st.booleans())
    def snooze(self, job: int, due: bool) -> None:
        legal = self.folded[job].state == "running"
        self.attempt(legal, lambda: self.store.snooze(job, self.when(due)))
        self.refresh()

    @rule(job=jobs, version=st.sampled_from(["none", "right", STALE]))
    def replay(self, job: int, version: str) -> None:
        legal = self.folded[job].state in {"discarded", "cancelled"} and version != STALE
        ev = self.version_arg(job, version)
        result = self.attempt(legal, lambda: self.store.replay(job, actor="test", reason="r", expected_version=ev))
        if result is not None:
            assert (result.state, result.attempt) == ("available", 0)
        self.refresh()

    @rule(job=jobs)
    def rescue(self, job: int) -> None:
        before = self.folded[job]
        far_future = self.now + timedelta(days=1)  # every lease has expired by then
        rescued = self.store.rescue(as_of=far_future, job_ids=[job])
        if before.state != "running":
            assert rescued == []
        else:
            assert [j.id for j in rescued] == [job]
            spent = before.attempt >= before.max_attempts
            assert rescued[0].state == ("discarded" if spent else "retryable")
        self.refresh()

    @rule(job=jobs)
    def illegal_version_append_is_refused(self, job: int) -> None:
        """A second writer appending an existing version fails on the unique (job_id, version)."""
        before = self.n_events()
        try:
            with self.db.transaction():
                self.db.execute(
                    "INSERT INTO ledger.events (job_id, version, type, hash) VALUES (%s, %s, 'succeeded', '')",
                    [job, self.folded[job].version],
                )
        except psycopg.errors.UniqueViolation:
            pass
        else:
            raise AssertionError("a duplicate version was appended")
        assert self.n_events() == before

    # ---------------------------------------------------------------- checks

    def refresh(self) -> None:
        """Read every event back, fold it in Python, and keep the result as the model."""
        rows = self.db.execute("SELECT * FROM ledger.events ORDER BY job_id, version").fetchall()
        events: dict[int, list[Event]] = {}
        for r in rows:
            events.setdefault(r["job_id"], []).append(Event.model_validate(r))
        for job_id, evs in events.items():
            assert [e.version for e in evs] == list(range(1, len(evs) + 1)), f"job {job_id}: versions 1..n"
        self.events = events
        self.folded = {job_id: job for job_id, evs in events.items() if (job := fold_all(evs)) is not None}

    @invariant()
    def projection_equals_fold_of_events(self) -> None:
        if not hasattr(self, "now"):
            return
        # The Job columns (the chain's head is the next invariant's).
        live = {r["id"]: r for r in self.db.execute("SELECT * FROM ledger.read_jobs").fetchall()}
        assert set(live) == set(self.folded)
        for job_id, model in self.folded.items():
            assert dict(live[job_id]) == asdict(model), f"job {job_id}"

    @invariant()
    def discarded_projection_holds_exactly_the_discarded_jobs(self) -> None:
        if not hasattr(self, "now"):
            return
        rows = {r["job_id"]: r for r in self.db.execute("SELECT * FROM ledger.discarded").fetchall()}
        assert set(rows) == {i for i, j in self.folded.items() if j.state == "discarded"}
        for job_id, row in rows.items():
            got = [{**e, "at": datetime.fromisoformat(e["at"])} for e in row["errors"]]
            assert got == discarded_errors(self.events[job_id])
            assert row["discarded_at"] == self.folded[job_id].finalized_at

    @invariant()
    def every_history_verifies_against_its_hash_chain(self) -> None:
        if not hasattr(self, "now"):
            return
        assert self.store.events_verify() == []

    @invariant()
    def full_rebuild_equals_live_projections(self) -> None:
        if not hasattr(self, "now"):
            return
        assert self.store.projections_diff() == []


def test_random_command_sequences_keep_every_invariant(db_url: str) -> None:
    LedgerMachine.url = db_url
    try:
        run_state_machine_as_test(
            LedgerMachine,
            settings=settings(
                max_examples=300,
                stateful_step_count=15,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            ),
        )
    finally:
        if LedgerMachine.conn is not None:
            LedgerMachine.conn.close()
            LedgerMachine.conn = None
