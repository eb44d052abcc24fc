"""schema.sql against the Python side: enums agree, migrate is idempotent, NOTIFY once per statement."""

from __future__ import annotations

import psycopg
import pytest
from psycopg.rows import DictRow

from ledger.db import connect
from ledger.migrate import migrate, schema_version
from ledger.states import EventType, JobState
from ledger.store import Store

from .conftest import unique_name


def _enum(conn: psycopg.Connection[DictRow], name: str) -> list[str]:
    rows = conn.execute(
        "SELECT e.enumlabel FROM pg_enum e JOIN pg_type t ON t.oid = e.enumtypid "
        "JOIN pg_namespace n ON n.oid = t.typnamespace WHERE n.nspname = 'ledger' AND t.typname = %s "
        "ORDER BY e.enumsortorder",
        [name],
    ).fetchall()
    return [r["enumlabel"] for r in rows]


def test_python_enums_list_the_same_states_and_events_as_the_database(conn: psycopg.Connection[DictRow]) -> None:
    assert _enum(conn, "job_state") == [s.value for s in JobState]
    assert _enum(conn, "event_type") == [e.value for e in EventType]


def test_every_state_and_event_type_is_documented() -> None:
    import inspect

    source = inspect.getsource(JobState) + inspect.getsource(EventType)
    for member in [*JobState, *EventType]:
        assert f'{member.name} = "{member.value}"\n    """' in source, f"{member!r} needs a docstring"


def test_migrate_twice_is_a_no_op(conn: psycopg.Connection[DictRow]) -> None:
    result = migrate(conn)
    assert not result.applied
    assert str(result) == f"schema is at version {schema_version()}; nothing to do"
    assert conn.execute("SELECT count(*) AS n FROM ledger.schema_version").fetchone() == {"n": 1}


def test_migrate_applies_the_schema_to_an_empty_database_once(server_url: str) -> None:
    from psycopg.conninfo import make_conninfo

    name = unique_name("ledger_migrate_probe")
    with connect(server_url) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        with connect(make_conninfo(server_url, dbname=name)) as conn:
            first, second = migrate(conn), migrate(conn)
            assert (first.applied, second.applied) == (True, False)
    finally:
        with connect(server_url) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_a_batch_enqueue_notifies_each_queue_once_per_statement(db_url: str, store: Store) -> None:
    with connect(db_url) as listener:
        listener.execute('LISTEN "ledger.a"')
        listener.execute('LISTEN "ledger.b"')
        store.enqueue_many([("k", {}, "a", 5, 1, None)] * 50 + [("k", {}, "b", 5, 1, None)] * 50)
        later = store.conn.execute("SELECT now() + interval '1 hour' AS t").fetchone()
        assert later is not None
        store.enqueue_many([("k", {}, "a", 5, 1, later["t"])])  # scheduled: nothing to wake for
        channels = [n.channel for n in listener.notifies(timeout=0.5)]
    assert sorted(channels) == ["ledger.a", "ledger.b"]


def test_the_fast_job_row_factory_builds_what_validation_would(store: Store) -> None:
    from ledger.models import Job, job_rows

    [job_id] = store.enqueue_many([("k", {"a": [1, "x"]}, "q", 3, 2, None)])
    store.claim("q", 1, "w")
    with store.conn.cursor(row_factory=job_rows) as cur:
        [fast] = cur.execute("SELECT * FROM ledger.jobs WHERE id = %s", [job_id], binary=True).fetchall()
    assert fast == store.job(job_id) == Job.model_validate(fast.model_dump())


def test_the_claim_and_the_completer_never_compile_jit_however_large_the_backlog(
    conn: psycopg.Connection[DictRow], store: Store
) -> None:
    # Their generic plans are costed for a tenth of the table: with millions of jobs waiting the cost
    # passed jit_above_cost and every claim compiled for ~440 ms (docs/design.md). jit_above_cost = 0
    # stands in for that backlog: every plan of this session would be compiled, unless the function says no.
    if not conn.execute("SELECT pg_jit_available() AS jit").fetchone()["jit"]:  # type: ignore[index]
        pytest.skip("this PostgreSQL has no JIT")
    conn.autocommit = True
    store.enqueue_many([("k", {}, "q", 5, 3, None)] * 2)
    plans: list[str] = []
    conn.add_notice_handler(lambda d: plans.append(d.message_primary or ""))
    conn.execute("LOAD 'auto_explain'")
    for setting in ("log_min_duration = 0", "log_nested_statements = on", "log_level = notice"):
        conn.execute(f"SET auto_explain.{setting}")
    conn.execute("SET jit_above_cost = 0")
    claimed = store.claim("q", 2, "w1")
    store.succeed_many([(job.id, job.version) for job in claimed], "w1")
    hot = [p for p in plans if "ledger.jobs" in p and "JIT:" in p]
    assert len(claimed) == 2 and len(plans) > 4 and hot == []
    conn.execute("SELECT count(*) FROM ledger.jobs")  # the same session's own query is compiled: the check can see JIT
    assert "JIT:" in plans[-1]


def test_the_completer_probes_each_job_by_id_whatever_the_statistics_say(
    conn: psycopg.Connection[DictRow], store: Store
) -> None:
    # Statistics taken while nothing ran made the planner pick jobs_running_idx (its predicate
    # matched), so every completion scanned all running jobs of all workers; on a table that was
    # tiny when the session planned, a sequential scan. The one plan must be probes of jobs_pkey.
    # Read from this session's scan counts, not yet flushed within a transaction (no auto_explain
    # on every server): what the completion added to them.
    conn.autocommit = True
    ids = store.enqueue_many([("k", {}, "q", 5, 3, None)] * 50)
    conn.execute("ANALYZE ledger.jobs")
    claimed = store.claim("q", 50, "w1")
    scans = """SELECT pg_stat_get_xact_numscans('ledger.jobs'::regclass) AS seq,
                      pg_stat_get_xact_numscans('ledger.jobs_running_idx'::regclass) AS running,
                      pg_stat_get_xact_numscans('ledger.jobs_pkey'::regclass) AS pkey"""
    with conn.transaction():
        before = conn.execute(scans).fetchone()
        recorded = store.succeed_many([(job.id, job.version) for job in reversed(claimed)], "w1")
        after = conn.execute(scans).fetchone()
    assert before is not None and after is not None and recorded == dict.fromkeys(ids, True)
    added = {name: after[name] - before[name] for name in after}
    assert added["seq"] == added["running"] == 0 and added["pkey"] >= 1, added


def test_every_function_planned_generic_turns_jit_off(conn: psycopg.Connection[DictRow]) -> None:
    # The rule behind the test above, read from the catalogue, so it holds on a server without JIT too
    # (the embedded one): a plan forced generic is costed for the whole backlog, so JIT must be off with it.
    rows = conn.execute(
        "SELECT p.proname, 'jit=off' = ANY (p.proconfig) AS jit_off FROM pg_proc p"
        " WHERE p.pronamespace = 'ledger'::regnamespace AND 'plan_cache_mode=force_generic_plan' = ANY (p.proconfig)"
    ).fetchall()
    assert {r["proname"] for r in rows} >= {"job_claim", "job_succeed_many"}
    assert [r["proname"] for r in rows if not r["jit_off"]] == []
