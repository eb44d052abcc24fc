"""The centrepiece: random command sequences against the real schema, checked against a pure fold.

Each example runs inside one transaction on a fresh database and rolls back
at the end, so examples are independent and cheap; every command runs in a
savepoint so a refusal can be checked to have written nothing. Inside a
transaction now() stands still, so "due" and "later" times are chosen
relative to it (T - 1s and T + 1h).

Reaching deep states is the point. A machine whose commands draw from jobs
in any state spends most examples refusing commands on `available` jobs,
and hypothesis both switches whole rules off per example (swarm testing)
and tends to draw the rules listed first more often than the last (rules
with a target bundle sort last: a claim feeding a bundle of running jobs
ran ten times in one run of ~1,200 steps). So every example starts with a
few jobs already running, with attempt budgets of one or two and a short
history each (see `begin`); no rule has a target; the end of an attempt is
one rule that picks a running job from the model (as the replay picks a
discarded or cancelled one), and it sorts first, the claim second.
Commands on jobs in any state (most of them refused) still run, through one
rule. The test counts how many examples reached each deep state after the
opening, and fails if none reached a discarded job, or a replay of a job
that had run.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, replace
from datetime import datetime, timedelta
from typing import Any, ClassVar

import psycopg
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from psycopg.rows import DictRow
from psycopg.types.json import Jsonb

from ledger import retry_policy
from ledger.db import connect
from ledger.errors import IllegalTransition, VersionConflict
from ledger.models import Event
from ledger.statements import Success
from ledger.store import Store

from .model import CLAIMABLE, ModelJob, Refused, discarded_errors, fold

# ledger.fold raises on a refused event; this turns that into a NULL so that one
# query can ask it about every event type after every job (a temporary function
# of the test's own connection: the schema is left as it is).
TRY_FOLD = """
CREATE FUNCTION pg_temp.try_fold(j ledger.jobs, e ledger.events) RETURNS ledger.jobs LANGUAGE plpgsql AS $$
BEGIN
    RETURN ledger.fold(j, e);
EXCEPTION WHEN SQLSTATE 'LG001' THEN
    RETURN NULL;
END $$
"""
NEXT_EVENTS = """
SELECT j.id AS job_id, t.key AS etype, f.id IS NULL AS refused,
       f.id, f.kind, f.queue, f.priority, f.args, f.state, f.attempt, f.max_attempts, f.run_at, f.last_error,
       f.worker, f.created_at, f.attempted_at, f.finalized_at, f.updated_at, f.version, f.limit_key, f.unique_key
FROM ledger.jobs j
CROSS JOIN jsonb_each(%(data)s) t
CROSS JOIN LATERAL pg_temp.try_fold(
    j, ROW(NULL, j.id, j.version + 1, t.key::ledger.event_type, %(at)s, t.value, '{}', NULL)::ledger.events) f
WHERE j.id = ANY(%(ids)s)
"""

QUEUE = "q"
WORKER = "w1"
STALE = "stale"
VERSIONS = st.sampled_from(["none", "right", STALE])
ALL_STATES = {"scheduled", "available", "running", "retryable", "succeeded", "cancelled", "discarded"}
COMMANDS = ["succeed", "fail", "cancel", "snooze", "replay", "rescue", "append an existing version"]
# What an example can reach; the test reports how many examples reached each.
DEPTHS = [
    "claimed after the start",
    "discarded",
    "snoozed",
    "rescued",
    "replayed",
    "replayed after an attempt",
    "discarded again after a replay",
]


class LedgerMachine(RuleBasedStateMachine):
    url: ClassVar[str] = ""
    conn: ClassVar[psycopg.Connection[DictRow] | None] = None
    reached: ClassVar[Counter[str]] = Counter()

    def __init__(self) -> None:
        super().__init__()
        if LedgerMachine.conn is None or LedgerMachine.conn.closed:
            LedgerMachine.conn = connect(self.url, autocommit=False)
            LedgerMachine.conn.execute(TRY_FOLD)
            LedgerMachine.conn.commit()
        self.db = LedgerMachine.conn
        self.store = Store(self.db)
        self.folded: dict[int, ModelJob] = {}
        self.events: dict[int, list[Event]] = {}
        self.position = 0  # the last event read back: events are append-only, so refresh reads only newer ones
        self.changed_at: dict[int, int] = {}  # job -> position of its last event
        self.depths: set[str] = set()
        # What ledger.fold refuses or does depends on a job's state, attempt and budget:
        # it is asked about the next events of one job of each such class an example reaches.
        self.fold_checked: set[tuple[str, int, int]] = set()

    # How a job of the opening has lived so far, before the rules take over.
    OPENINGS: ClassVar[list[str]] = ["running", "failed once, running again", "replayed, running again", "gave up",
                                     "cancelled while running"]  # fmt: skip

    @initialize(jobs=st.lists(st.tuples(st.integers(1, 2), st.sampled_from(OPENINGS)), min_size=1, max_size=3))
    def begin(self, jobs: list[tuple[int, str]]) -> None:
        """A few due jobs with attempt budgets of one or two, claimed, each with a short history.

        Every example starts deep (a job running its last attempt, one running
        again after a replay, a dead letter), whichever rules swarm testing
        leaves on; each command of the opening is checked like any other.
        """
        row = self.db.execute("SELECT now() AS t").fetchone()
        assert row is not None
        self.now: datetime = row["t"]
        later = self.when(False).isoformat()
        # The data of a next event of each type: what ledger.fold reads of it.
        self.next_data: dict[str, dict[str, Any]] = {
            "started": {"worker": "w2"},
            "succeeded": {},
            "failed": {"error": "e", "run_at": later},
            "discarded": {"error": "e"},
            "cancelled": {"reason": "r"},
            "snoozed": {"run_at": later},
            "rescued": {"error": "e"},
            "replayed": {"by": "t", "reason": "r"},
        }
        ids = self.store.enqueue_many([("k", {}, QUEUE, 5, budget, None) for budget, _ in jobs])
        self.refresh()
        self.claim(len(ids))
        assert [self.state(i) for i in ids] == ["running"] * len(ids)
        for job, (_, opening) in zip(ids, jobs, strict=True):
            match opening:
                case "failed once, running again":
                    self.do_fail(job, due=True, discard=False, backoff=False)  # discarded if its budget was one
                case "replayed, running again":
                    self.do_fail(job, due=True, discard=True, backoff=False)
                    self.do_replay(job, "right")
                case "gave up":
                    self.do_fail(job, due=True, discard=True, backoff=False)
                case "cancelled while running":
                    self.do_cancel(job, "right")
        self.claim(len(ids))
        self.depths.clear()  # what the opening reached does not count: the rules' reach is measured

    def teardown(self) -> None:
        self.db.rollback()
        for depth in sorted(self.depths):
            LedgerMachine.reached[depth] += 1
            event(f"reached: {depth}")
        LedgerMachine.reached["examples"] += 1

    # ---------------------------------------------------------------- helpers

    def when(self, due: bool) -> datetime:
        return self.now - timedelta(seconds=1) if due else self.now + timedelta(hours=1)

    def attempt(self, legal: bool, command: Any) -> Any:
        """Run a command in a savepoint; it must succeed iff `legal`, and a refusal must write nothing."""
        try:
            with self.db.transaction():
                result = command()
        except (IllegalTransition, VersionConflict) as exc:
            assert not legal, f"refused a legal command: {exc}"
            assert self.refresh() == 0, "a refused command wrote events"
            return None
        assert legal, "accepted an illegal command"
        self.refresh()
        return result

    def version_arg(self, job_id: int, which: str) -> int | None:
        current = self.folded[job_id].version
        return {"none": None, "right": current, STALE: current - 1}[which]

    def state(self, job_id: int) -> str:
        return self.folded[job_id].state

    def ids_in(self, states: set[str]) -> list[int]:
        """The jobs in these states, the one most recently changed first."""
        return sorted((i for i, j in self.folded.items() if j.state in states), key=self.changed_at.__getitem__,
                      reverse=True)  # fmt: skip

    def pick(self, data: st.DataObject, states: set[str]) -> int:
        # Hypothesis favours (and shrinks towards) the first: the job the last steps touched.
        job: int = data.draw(st.sampled_from(self.ids_in(states)), label="job")
        return job

    # ---------------------------------------------------------------- commands
    # Each checks its command against the model, whatever state the job is in,
    # and returns the job's state afterwards.

    def do_succeed(self, job: int, version: str) -> str:
        legal = self.state(job) == "running" and version != STALE
        ev = self.version_arg(job, version)
        result = self.attempt(legal, lambda: self.store.succeed(job, expected_version=ev))
        if result is not None:
            assert result.state == "succeeded"
        return self.state(job)

    def do_fail(self, job: int, due: bool, discard: bool, backoff: bool) -> str:
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
        return self.state(job)

    def do_cancel(self, job: int, version: str) -> str:
        legal = self.state(job) in CLAIMABLE | {"running"} and version != STALE
        ev = self.version_arg(job, version)
        self.attempt(legal, lambda: self.store.cancel(job, "test", expected_version=ev))
        return self.state(job)

    def do_snooze(self, job: int, due: bool) -> str:
        legal = self.state(job) == "running"
        self.attempt(legal, lambda: self.store.snooze(job, self.when(due)))
        return self.state(job)

    def do_replay(self, job: int, version: str) -> str:
        legal = self.state(job) in {"discarded", "cancelled"} and version != STALE
        ev = self.version_arg(job, version)
        result = self.attempt(legal, lambda: self.store.replay(job, actor="test", reason="r", expected_version=ev))
        if result is not None:
            assert (result.state, result.attempt) == ("available", 0)
        return self.state(job)

    def do_rescue(self, job: int) -> str:
        before = self.folded[job]
        far_future = self.now + timedelta(days=1)  # every lease has expired by then
        rescued = self.store.rescue(as_of=far_future, job_ids=[job])
        if before.state != "running":
            assert rescued == []
        else:
            assert [j.id for j in rescued] == [job]
            spent = before.attempt >= before.max_attempts
            assert rescued[0].state == ("discarded" if spent else "retryable")
        assert self.refresh() == len(rescued)
        return self.state(job)

    def do_append_existing_version(self, job: int) -> None:
        """A second writer appending an existing version fails on the unique (job_id, version)."""
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
        assert self.refresh() == 0

    # ---------------------------------------------------------------- rules
    # Hypothesis lists the rules by (target bundles, number of arguments,
    # name) and tends to draw the first ones more often. Here that order is the
    # end of a running attempt, the claim, the enqueue, the replay (one
    # argument each), then the batch completer, and any command on any job
    # last: whenever something runs, it mostly runs to an end.

    # How an attempt ends, as the worker records it (or the rescue, for a worker that vanished).
    OUTCOMES: ClassVar[list[str]] = [
        "failed, retry due", "rescued", "succeeded", "cancelled", "snoozed, due", "gave up",
        "failed, retry later", "failed, default backoff", "snoozed, later", "succeeded at a stale version",
    ]  # fmt: skip

    @precondition(lambda self: self.ids_in({"running"}))
    @rule(data=st.data())
    def attempt_ends(self, data: st.DataObject) -> None:
        job = self.pick(data, {"running"})
        outcome = data.draw(st.sampled_from(self.OUTCOMES), label="outcome")
        match outcome:
            case "succeeded" | "succeeded at a stale version":
                self.do_succeed(job, STALE if "stale" in outcome else "right")
            case "failed, retry due" | "failed, retry later" | "failed, default backoff" | "gave up":
                self.do_fail(job, due="due" in outcome, discard=outcome == "gave up", backoff="backoff" in outcome)
            case "cancelled":
                self.do_cancel(job, "none")
            case "snoozed, due" | "snoozed, later":
                self.do_snooze(job, due="due" in outcome)
            case "rescued":
                self.do_rescue(job)

    @rule(n=st.integers(1, 4))
    def claim(self, n: int) -> None:
        due = [j for j in self.folded.values() if j.state in CLAIMABLE and j.run_at <= self.now]
        expected = [j.id for j in sorted(due, key=lambda j: (j.priority, j.run_at, j.id))[:n]]
        claimed = self.store.claim(QUEUE, n, WORKER)
        assert [j.id for j in claimed] == expected
        assert all(j.state == "running" for j in claimed)
        self.refresh()
        if claimed:
            self.depths.add("claimed after the start")

    @rule(jobs=st.lists(st.tuples(st.integers(0, 9), st.integers(1, 3), st.booleans()), min_size=1, max_size=3))
    def enqueue(self, jobs: list[tuple[int, int, bool]]) -> None:
        """(priority, max_attempts, due) of each job of one batch."""
        rows = [("k", {"p": p}, QUEUE, p, n, None if due else self.when(False)) for p, n, due in jobs]
        ids = self.store.enqueue_many(rows)
        self.refresh()
        assert [self.state(i) for i in ids] == ["available" if due else "scheduled" for _, _, due in jobs]

    @precondition(lambda self: self.ids_in({"discarded", "cancelled"}))
    @rule(data=st.data())
    def replay(self, data: st.DataObject) -> None:
        """An operator replays a job; a worker may claim at once (the replay's NOTIFY wakes it)."""
        self.do_replay(self.pick(data, {"discarded", "cancelled"}), data.draw(VERSIONS, label="version"))
        if data.draw(st.booleans(), label="then claim"):
            self.claim(1)

    @precondition(lambda self: self.folded)
    @rule(data=st.data(), stale=st.booleans(), n=st.integers(0, 3))
    def cycle(self, data: st.DataObject, stale: bool, n: int) -> None:
        """The worker's cycle (AsyncStore.cycle, here its sync twin): the batch completer records each
        job iff it is running at the version given, and the same transaction claims up to n more.

        Running jobs first, so a batch is mostly of them; `stale` lets one of
        the batch carry an old version.
        """
        candidates = self.ids_in({"running"}) + sorted(self.ids_in(ALL_STATES - {"running"}))
        batch = data.draw(st.lists(st.sampled_from(candidates), min_size=1, max_size=4, unique=True), label="batch")
        versions = {job: self.folded[job].version for job in batch}
        if stale:
            versions[batch[-1]] -= 1
        expected = {job: self.state(job) == "running" and not (stale and job == batch[-1]) for job in batch}
        due = [j for j in self.folded.values() if j.state in CLAIMABLE and j.run_at <= self.now]
        will_claim = [j.id for j in sorted(due, key=lambda j: (j.priority, j.run_at, j.id))[:n]]
        successes = [Success(job, version) for job, version in versions.items()]
        claimed, recorded = self.store.cycle(successes, {QUEUE: n} if n else {}, WORKER)
        assert recorded == expected
        assert [j.id for j in claimed.get(QUEUE, [])] == will_claim
        assert self.refresh() == sum(expected.values()) + len(will_claim)

    @precondition(lambda self: self.folded)
    @rule(data=st.data(), command=st.sampled_from(COMMANDS), version=VERSIONS, flag=st.booleans())
    def any_command_on_any_job(self, data: st.DataObject, command: str, version: str, flag: bool) -> None:
        """Any command on a job in any state: legal ones are recorded, the rest refused writing nothing."""
        job = self.pick(data, ALL_STATES)
        match command:
            case "succeed":
                self.do_succeed(job, version)
            case "fail":
                self.do_fail(job, due=True, discard=flag, backoff=not flag)
            case "cancel":
                self.do_cancel(job, version)
            case "snooze":
                self.do_snooze(job, due=flag)
            case "replay":
                self.do_replay(job, version)
            case "rescue":
                self.do_rescue(job)
            case "append an existing version":
                self.do_append_existing_version(job)

    # ---------------------------------------------------------------- checks

    def refresh(self) -> int:
        """Read the events appended since the last refresh, fold them into the model; how many were there?"""
        rows = self.db.execute(
            "SELECT * FROM ledger.events WHERE position > %s ORDER BY position", [self.position]
        ).fetchall()
        for r in rows:
            e = Event.model_validate(r)
            self.position = e.position
            history = self.events.setdefault(e.job_id, [])
            assert e.version == len(history) + 1, f"job {e.job_id}: versions 1..n"
            history.append(e)
            self.changed_at[e.job_id] = e.position
            prior = self.folded.get(e.job_id)
            self.folded[e.job_id] = fold(replace(prior) if prior else None, e)  # a copy: callers keep `before`
            self.note_depth(e)
        return len(rows)

    def note_depth(self, e: Event) -> None:
        kinds = [x.type.value for x in self.events[e.job_id]]
        state = self.folded[e.job_id].state
        if e.type.value in {"snoozed", "rescued", "replayed"}:
            self.depths.add(e.type.value)
        if e.type.value == "replayed" and "started" in kinds:
            self.depths.add("replayed after an attempt")
        if state == "discarded":
            self.depths.add("discarded")
            if "replayed" in kinds:
                self.depths.add("discarded again after a replay")

    @invariant()
    def projections_equal_the_model_the_rebuild_and_the_sql_fold(self) -> None:
        """Every check of the database against the model, after every step.

        - the current-state projection equals the model's fold of the events;
        - the discarded projection holds exactly the discarded jobs, with the
          errors since their last replay;
        - rebuilding the projections from the events gives the live rows;
        - ledger.fold, asked about every event type after the current row of
          a job of each (state, attempt, max_attempts) the example reaches,
          agrees with the model: refused, or the same row. The commands append
          only the events they choose (job_fail never appends `failed` for a
          last attempt), so this reaches the others.
        """
        classes = {(j.state, j.attempt, j.max_attempts): i for i, j in self.folded.items()}
        unchecked = [i for c, i in classes.items() if c not in self.fold_checked]
        assert self.store.projections_diff() == []
        assert self.store.events_verify() == [], "every history follows its hash chain"
        # The Job columns (the chain's head is checked just above).
        live = {r["id"]: r for r in self.db.execute("SELECT * FROM ledger.read_jobs").fetchall()}
        assert set(live) == set(self.folded)
        for job_id, model in self.folded.items():
            assert dict(live[job_id]) == asdict(model), f"job {job_id}"

        rows = {r["job_id"]: r for r in self.db.execute("SELECT * FROM ledger.discarded").fetchall()}
        assert set(rows) == {i for i, j in self.folded.items() if j.state == "discarded"}
        for job_id, row in rows.items():
            got = [{**e, "at": datetime.fromisoformat(e["at"])} for e in row["errors"]]
            assert got == discarded_errors(self.events[job_id])
            assert row["discarded_at"] == self.folded[job_id].finalized_at

        params = {"data": Jsonb(self.next_data), "at": self.now, "ids": unchecked}
        checked = self.db.execute(NEXT_EVENTS, params).fetchall() if unchecked else []
        assert len(checked) == len(unchecked) * len(self.next_data)
        for r in checked:
            job_id, etype, refused = r.pop("job_id"), r.pop("etype"), r.pop("refused")
            current = self.folded[job_id]
            e = Event(position=0, job_id=job_id, version=current.version + 1, type=etype, at=self.now,
                      data=self.next_data[etype], metadata={})  # fmt: skip
            try:
                expected: dict[str, Any] | None = asdict(fold(replace(current), e))
            except Refused:
                expected = None
            if refused:
                assert expected is None, f"ledger.fold refused {etype} after {current}"
            else:
                assert expected is not None, f"ledger.fold accepted {etype} after {current}: {r}"
                assert r == expected, f"{etype} after {current}"
        self.fold_checked.update(c for c, i in classes.items() if i in unchecked)


def test_random_command_sequences_keep_every_invariant(db_url: str) -> None:
    LedgerMachine.url = db_url
    LedgerMachine.reached = Counter()
    try:
        run_state_machine_as_test(
            LedgerMachine,
            settings=settings(
                max_examples=100,
                stateful_step_count=15,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            ),
        )
    finally:
        if LedgerMachine.conn is not None:
            LedgerMachine.conn.close()
            LedgerMachine.conn = None
    reached = LedgerMachine.reached
    print("examples that reached each depth:", {d: reached[d] for d in ["examples", *DEPTHS]})
    assert reached["discarded"] > 0, f"no example reached a discarded job: {dict(reached)}"
    assert reached["replayed after an attempt"] > 0, f"no example replayed a job that had run: {dict(reached)}"
