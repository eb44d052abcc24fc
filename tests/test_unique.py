"""Unique jobs: a second enqueue that matches returns the existing job, enforced by the database."""

from __future__ import annotations

from datetime import timedelta

import pytest
from pydantic import ValidationError

from ledger.db import connect
from ledger.errors import IllegalTransition, InvalidArguments
from ledger.models import JobState, Unique
from ledger.store import Store

from .threads import new_barrier, run_threads

ACTIVE = ("scheduled", "available", "running", "retryable")


def one(store: Store, key: str | None, *, period: timedelta | None = None, states: tuple[str, ...] = ACTIVE) -> int:
    [job_id] = store.enqueue_many([("k", {}, "q", 5, 1, None)], unique=[(key, period, states) if key else None])
    return job_id


def test_a_second_enqueue_with_the_key_returns_the_first_job_marked_a_duplicate(store: Store) -> None:
    first = store.enqueue_many([("k", {}, "q", 5, 1, None)], unique=[("k|key:a", None, ACTIVE)])
    again = store.enqueue_many([("k", {}, "q", 5, 1, None)] * 2, unique=[("k|key:a", None, ACTIVE), None])
    assert [(j, j.duplicate) for j in first] == [(first[0], False)]
    assert (again[0], again[0].duplicate) == (first[0], True)
    assert not again[1].duplicate and again[1] != first[0], "a job without a rule is never a duplicate"
    assert len(store.events_for_job(first[0])) == 1, "the duplicate wrote nothing"
    assert store.job(first[0]).unique_key == "k|key:a"  # type: ignore[union-attr]


def test_two_jobs_with_one_key_in_one_batch_make_one_job(store: Store) -> None:
    ids = store.enqueue_many([("k", {}, "q", 5, 1, None)] * 3, unique=[("k|key:b", None, ACTIVE)] * 3)
    assert len(set(ids)) == 1 and [j.duplicate for j in ids] == [False, True, True]


def test_the_key_is_free_again_once_the_job_leaves_the_chosen_states(store: Store) -> None:
    first = one(store, "k|key:c")
    [claimed] = store.claim("q", 1, "w")
    assert one(store, "k|key:c") == first, "running is among the states"
    store.succeed(claimed.id)
    second = one(store, "k|key:c")
    assert second != first and not store.enqueue_many([("k", {}, "q", 5, 1, None)])[0].duplicate


def test_a_period_makes_the_key_one_per_period(store: Store) -> None:
    a = one(store, "k|key:d", period=timedelta(hours=1))
    assert one(store, "k|key:d", period=timedelta(hours=1)) == a
    assert store.job(a).unique_key.startswith("k|key:d|")  # type: ignore[union-attr]
    # Including finished states keeps a job that ran this hour from running again this hour.
    store.claim("q", 1, "w")
    store.succeed(a)
    with_done = (*ACTIVE, "succeeded")
    b = one(store, "k|key:e", period=timedelta(hours=1), states=with_done)
    store.claim("q", 1, "w")
    store.succeed(b)
    assert one(store, "k|key:e", period=timedelta(hours=1), states=with_done) == b


def test_a_rule_must_keep_every_active_state_in_python_and_in_the_database(store: Store) -> None:
    # Found by the API fuzz test: two jobs of one key whose rule named only `cancelled` were both
    # outside the index until a bulk cancel brought them in together, and the cancel failed.
    with pytest.raises(ValidationError, match=r"must include every active state.*no retryable, running, scheduled"):
        Unique(key="k", states={JobState.AVAILABLE, JobState.CANCELLED})
    Unique(key="k", states={*JobState})  # the finished states may be added
    with pytest.raises(InvalidArguments, match="unique states must include every active state"):
        one(store, "k|key:f", states=("available", "cancelled"))
    assert store.jobs(limit=10) == [], "refused whole"


def test_racing_enqueues_on_many_connections_make_one_job(db_url: str, store: Store) -> None:
    barrier = new_barrier(6)
    got: list[int] = []

    def racer() -> None:
        with connect(db_url) as c:
            barrier.wait()
            [job_id] = Store(c).enqueue_many([("k", {}, "q", 5, 1, None)], unique=[("k|key:race", None, ACTIVE)])
            got.append(job_id)

    run_threads(*[racer] * 6, barrier=barrier)
    assert len(set(got)) == 1 and len(got) == 6
    assert store.conn.execute("SELECT count(*) AS n FROM ledger.jobs").fetchone() == {"n": 1}


def test_a_replay_that_would_take_a_held_key_is_refused_clearly(store: Store) -> None:
    first = one(store, "k|key:f")
    store.claim("q", 1, "w")
    store.fail(first, "boom")  # discarded: the key is free
    second = one(store, "k|key:f")
    with pytest.raises(IllegalTransition, match=f"job {first} cannot be replayed: job {second} holds its unique key"):
        store.replay(first)
    assert store.projections_diff() == [] and store.events_verify() == []


def test_the_client_gives_a_kinds_rule_and_an_enqueues_own_and_says_which_were_duplicates(db_url: str) -> None:
    from pydantic import BaseModel

    from ledger.client import Client
    from ledger.kinds import builtin_registry
    from ledger.models import Unique

    class Report(BaseModel):
        customer: str
        day: str

    registry = builtin_registry()
    registry.kind("report", args=Report, unique=Unique(args=["customer"]))(lambda ctx: None)
    with Client(db_url, registry=registry) as client:
        first = client.enqueue("report", {"customer": "c1", "day": "mon"})
        same_customer = client.enqueue("report", {"customer": "c1", "day": "tue"})
        other = client.enqueue("report", {"customer": "c2", "day": "mon"})
        assert (same_customer, same_customer.duplicate, other.duplicate) == (first, True, False)
        # An enqueue's own rule takes the kind's place: here, an explicit key.
        a = client.enqueue("report", {"customer": "c3", "day": "x"}, unique=Unique(key="nightly"))
        b = client.enqueue("report", {"customer": "c4", "day": "y"}, unique=Unique(key="nightly"))
        assert b == a and b.duplicate
        batch = client.enqueue_many([{"kind": "report", "args": {"customer": "c1", "day": "w"}},
                                     {"kind": "heartbeat", "unique": {"key": "hb", "period": 60}},
                                     {"kind": "heartbeat", "unique": {"key": "hb", "period": 60}}])  # fmt: skip
        assert [j.duplicate for j in batch] == [True, False, True] and batch[0] == first
