"""Hostile values through every entry point: refused with a message naming the field, writing
nothing, or stored verbatim and read back equal. Plus operators racing a worker on one job."""

from __future__ import annotations

import json
from datetime import datetime
from decimal import Decimal
from functools import partial
from typing import Any

import falcon.testing
import pytest
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from ledger.client import Client
from ledger.db import connect
from ledger.errors import IllegalTransition, LedgerError
from ledger.kinds import builtin_registry
from ledger.settings import Settings
from ledger.store import Store
from ledger.web.app import create_app
from ledger.web.settings import WebSettings

from .jobapp import Free
from .test_cli import ledger
from .threads import new_barrier, run_threads


def registry() -> Any:
    r = builtin_registry()
    r.kind("free", args=Free)(lambda ctx: None)
    return r


def nested(depth: int) -> dict[str, Any]:
    doc: dict[str, Any] = {"leaf": True}
    for _ in range(depth - 1):
        doc = {"x": doc}
    return doc


STORED = "stored"
# (case, job, expected): expected is STORED or the field the refusal must name.
CASES: list[tuple[str, dict[str, Any], str]] = [
    ("sql-looking strings", {"kind": "free", "args": {"s": "'; DROP TABLE ledger.events; --", "t": "$1 %s {}"}}, STORED),
    ("unicode of every kind", {"kind": "free", "args": {"s": "zażółć 🚀 مرحبا e\u0301 \u200b", "ключ": "значение"}}, STORED),
    ("huge integers and floats", {"kind": "free", "args": {"big": 10**60, "tiny": 5e-324, "max": 1.7976931348623157e308}}, STORED),
    ("empty and odd keys", {"kind": "free", "args": {"": 1, " ": 2, "a.b": 3, "0": None}}, STORED),
    ("nesting at the limit", {"kind": "free", "args": nested(63)}, STORED),
    ("nesting past the limit", {"kind": "free", "args": nested(70)}, "args.x"),
    ("NUL in a value", {"kind": "free", "args": {"s": "a\x00b"}}, "args.s"),
    ("NUL in a key", {"kind": "free", "args": {"k\x00": 1}}, "args"),
    ("lone surrogate", {"kind": "free", "args": {"s": "\ud800"}}, "args.s"),
    ("NaN", {"kind": "free", "args": {"n": float("nan")}}, "args.n"),
    ("Infinity", {"kind": "free", "args": {"n": float("inf")}}, "args.n"),
    ("args over 1 MiB", {"kind": "free", "args": {"blob": "x" * (1024 * 1024 + 1)}}, "args"),
    ("negative priority", {"kind": "free", "priority": -1}, "priority"),
    ("absurd priority", {"kind": "free", "priority": 10**30}, "priority"),
    ("zero attempts", {"kind": "free", "max_attempts": 0}, "max_attempts"),
    ("absurd attempts", {"kind": "free", "max_attempts": 10**12}, "max_attempts"),
    ("far-future date", {"kind": "free", "run_at": "9999-12-31T23:59:59+00:00"}, STORED),
    ("ancient date", {"kind": "free", "run_at": "0001-01-01T00:00:00+00:00"}, STORED),
    ("date without a zone", {"kind": "free", "run_at": "2030-01-01T00:00:00"}, "run_at"),
    ("not a date", {"kind": "free", "run_at": "yesterday"}, "run_at"),
    ("unknown kind", {"kind": "nope"}, "kind"),
    ("SQL in the queue name", {"kind": "free", "queue": "q'; DROP TABLE x; --"}, "queue"),
    ("queue name too long", {"kind": "free", "queue": "q" * 51}, "queue"),
    ("args not an object", {"kind": "free", "args": [1, 2]}, "args"),
]  # fmt: skip
IDS = [c[0] for c in CASES]


def numerically(value: Any) -> Any:
    """JSON as jsonb compares it: numbers by value. jsonb keeps numbers as `numeric` and spells
    them its own way (1.7976931348623157e308 comes back as 17976931348623157 and 292 zeros)."""
    return json.loads(json.dumps(value), parse_float=Decimal, parse_int=Decimal)


def check_outcome(store: Store, job: dict[str, Any], expected: str, outcome: int | LedgerError | str) -> None:
    if expected == STORED:
        assert isinstance(outcome, int), f"refused a value it should store: {outcome}"
        stored = store.job(outcome)
        assert stored is not None
        assert numerically(stored.args) == numerically(job.get("args", {})), "read back equal"
        assert numerically(store.events_for_job(outcome)[0].data["args"]) == numerically(job.get("args", {}))
        if "run_at" in job:
            assert stored.run_at == datetime.fromisoformat(job["run_at"])
    else:
        assert not isinstance(outcome, int), "accepted a value it should refuse"
        fields = outcome.fields if isinstance(outcome, LedgerError) and hasattr(outcome, "fields") else None
        text = str(outcome)
        assert expected in (fields or []) or expected in text, f"the refusal names {expected!r}: {text}"
        assert store.job_counts() == [], "a refusal wrote nothing"


@pytest.mark.parametrize(("case", "job", "expected"), CASES, ids=IDS)
def test_hostile_values_through_the_client(
    db_url: str, store: Store, case: str, job: dict[str, Any], expected: str
) -> None:
    with Client(db_url, registry=registry()) as client:
        try:
            outcome: int | LedgerError = client.enqueue_many([job])[0]
        except LedgerError as exc:
            outcome = exc
    check_outcome(store, job, expected, outcome)


@pytest.mark.parametrize(("case", "job", "expected"), CASES, ids=IDS)
def test_hostile_values_through_the_api(
    db_url: str, store: Store, case: str, job: dict[str, Any], expected: str
) -> None:
    with ConnectionPool(db_url, min_size=1, max_size=2, kwargs={"autocommit": True, "row_factory": dict_row}) as pool:
        app = create_app(Settings(database_url="unused"), WebSettings(), pool=pool, registry=registry())
        body = json.dumps(job, allow_nan=True)
        r = falcon.testing.TestClient(app).simulate_post(
            "/api/jobs", body=body, headers={"content-type": "application/json"}
        )
    assert r.status_code < 500, r.text
    if expected == STORED:
        assert r.status_code == 201, r.text
        check_outcome(store, job, expected, r.json["id"])
    elif len(body) > 64 * 1024:
        assert r.status_code == 413  # the API's body limit answers before validation
        assert store.job_counts() == []
    else:
        assert r.status_code in (400, 422), r.text
        check_outcome(store, job, expected, json.dumps(r.json))


CLI_CASES = [c for c in CASES if c[0] in {
    "sql-looking strings", "unicode of every kind", "NUL in a value", "NaN", "negative priority", "far-future date",
    "unknown kind", "SQL in the queue name",
}]  # fmt: skip


@pytest.mark.parametrize(("case", "job", "expected"), CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_hostile_values_through_the_cli(
    db_url: str, store: Store, case: str, job: dict[str, Any], expected: str
) -> None:
    args = ["enqueue", job["kind"], "--args", json.dumps(job.get("args", {})), "--app", "tests.jobapp"]
    for option in ("priority", "queue", "run_at"):
        if option in job:
            args += [f"--{option.replace('_', '-')}", str(job[option])]
    out = ledger(*args, url=db_url, extra_env={"PYTHONPATH": "."})
    assert "Traceback" not in out.stderr
    if expected == STORED:
        assert out.returncode == 0, out.stderr
        check_outcome(store, job, expected, int(out.stdout.split("id=")[1]))
    else:
        assert out.returncode != 0
        check_outcome(store, job, expected, out.stderr)


def race_once(db_url: str, store: Store) -> tuple[str, str]:
    """A worker records a success while an operator cancels the same running job."""
    [job_id] = store.enqueue_many([("k", {}, "race", 5, 3, None)])
    [job] = store.claim("race", 1, "w")
    barrier = new_barrier(2)
    result: dict[str, str] = {}

    def worker() -> None:
        with connect(db_url) as c:
            barrier.wait()
            recorded = Store(c).succeed_many([(job.id, job.version)], worker="w")[job.id]
            result["worker"] = "won" if recorded else "refused"

    def operator() -> None:
        with connect(db_url) as c:
            barrier.wait()
            try:
                Store(c).cancel(job_id, "operator")
                result["operator"] = "won"
            except IllegalTransition as exc:
                assert f"job {job_id} is succeeded" in str(exc)
                result["operator"] = "refused"

    run_threads(worker, operator, barrier=barrier)
    final = store.job(job_id)
    assert final is not None
    assert final.state == ("succeeded" if result["worker"] == "won" else "cancelled")
    assert len(store.events_for_job(job_id)) == 3, "exactly one of the two was appended"
    return result["worker"], result["operator"]


def test_an_operator_cancel_racing_a_worker_finishing_one_wins_the_other_is_told(db_url: str, store: Store) -> None:
    outcomes = {race_once(db_url, store) for _ in range(25)}
    assert outcomes <= {("won", "refused"), ("refused", "won")}
    assert store.projections_diff() == []


def complete_twice(db_url: str, store: Store) -> list[int]:
    """Two completers record the same 50 successes at once, in opposite orders: how many recorded each job."""
    store.enqueue_many([("k", {}, "race", 5, 3, None)] * 50)
    done = [(job.id, job.version) for job in store.claim("race", 50, "w")]
    barrier = new_barrier(2)
    recorded: list[dict[int, bool]] = []

    def completer(order: list[tuple[int, int]]) -> None:
        with connect(db_url) as c:
            barrier.wait()
            recorded.append(Store(c).succeed_many(order, worker="w"))

    run_threads(partial(completer, done), partial(completer, done[::-1]), barrier=barrier)
    return [sum(r[job_id] for r in recorded) for job_id, _ in done]


def test_two_completers_recording_the_same_jobs_in_opposite_orders_never_deadlock(db_url: str, store: Store) -> None:
    # ledger.job_succeed_many locks rows in id order whatever order it is given them (its input is
    # sorted and drives the one plan it may use): the first to lock the lowest id records every
    # job, the other waits and then records none. Locked in the given order, the two would
    # deadlock and PostgreSQL would abort one (run_threads raises its DeadlockDetected).
    for _ in range(10):
        assert complete_twice(db_url, store) == [1] * 50
    assert store.projections_diff() == []


def test_two_operators_replaying_one_job_exactly_one_wins(db_url: str, store: Store) -> None:
    [job_id] = store.enqueue_many([("k", {}, "race", 5, 1, None)])
    store.claim("race", 1, "w")
    store.fail(job_id, "boom")
    barrier = new_barrier(2)
    results: list[str] = []

    def replay(who: str) -> None:
        with connect(db_url) as c:
            barrier.wait()
            try:
                Store(c).replay(job_id, actor=who)
                results.append("won")
            except IllegalTransition as exc:
                assert "only discarded or cancelled jobs can be replayed" in str(exc)
                results.append("refused")

    run_threads(partial(replay, "ana"), partial(replay, "bo"), barrier=barrier)
    assert sorted(results) == ["refused", "won"]
    assert [e.type for e in store.events_for_job(job_id)].count("replayed") == 1
