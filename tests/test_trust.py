"""Invariants 8 and 9: least-privilege roles, and a history whose every edit `ledger verify` finds.

A ledger is migrated by its own (non-superuser) owner; `ledger roles` gives an
application role and a read-only role their access. Connected as the
application role, every way to rewrite history is refused while the work
goes on; as a superuser behind the triggers' back, every edit is found.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from psycopg.rows import DictRow

from ledger.db import connect
from ledger.errors import PermissionDenied
from ledger.migrate import DROP_FUNCTIONS, functions_sql, migrate
from ledger.retention import prune
from ledger.store import Store

from .test_cli import ledger
from .test_retention import small_partitions
from .workers import WorkerProcess, wait_until

_n = itertools.count()


@dataclass
class Roles:
    owner: str
    app: str
    readonly: str
    url_owner: str
    url_app: str
    url_readonly: str
    url_admin: str


@pytest.fixture
def roles(server_url: str) -> Iterator[Roles]:
    """A fresh database owned by a fresh non-superuser role, migrated by it, with `ledger roles` applied."""
    tag = f"{os.getpid()}_{next(_n)}"
    owner, app, ro, db = f"lg_own_{tag}", f"lg_app_{tag}", f"lg_ro_{tag}", f"ledger_roles_{tag}"
    with connect(server_url) as admin:
        for role in (owner, app, ro):
            admin.execute(f'CREATE ROLE "{role}" LOGIN')
        admin.execute(f'CREATE DATABASE "{db}" OWNER "{owner}"')
    r = Roles(
        owner, app, ro,
        make_conninfo(server_url, user=owner, dbname=db),
        make_conninfo(server_url, user=app, dbname=db),
        make_conninfo(server_url, user=ro, dbname=db),
        make_conninfo(server_url, dbname=db),
    )  # fmt: skip
    try:
        with connect(r.url_owner) as conn:
            migrate(conn)
        out = ledger("roles", "--app", app, "--readonly", ro, url=r.url_owner)
        assert out.returncode == 0, out.stderr
        assert out.stdout == f"role {app}: app access\nrole {ro}: readonly access\n"
        yield r
    finally:
        with connect(server_url) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
            for role in (app, ro, owner):
                admin.execute(f'DROP ROLE IF EXISTS "{role}"')


def _events(url: str) -> list[DictRow]:
    with connect(url) as conn:
        return conn.execute("SELECT * FROM ledger.events ORDER BY position").fetchall()


TAMPERING = {
    "update an event": "UPDATE ledger.events SET data = '{}'",
    "delete an event": "DELETE FROM ledger.events",
    "truncate the events": "TRUNCATE ledger.events",
    "truncate a partition": "TRUNCATE ledger.events_1",
    "forge a replay": (
        "INSERT INTO ledger.events (job_id, version, type, data, hash) "
        "VALUES (1, 4, 'replayed', '{\"by\": \"alice\"}', '')"
    ),
    "disable the triggers": "ALTER TABLE ledger.events DISABLE TRIGGER ALL",
    "detach a partition": "ALTER TABLE ledger.events DETACH PARTITION ledger.events_1",
    "drop a partition": "DROP TABLE ledger.events_1",
    "turn triggers off for the session": "SET session_replication_role = replica",
    "replace a function": (
        "CREATE OR REPLACE FUNCTION ledger.job_replay(job_id bigint, actor text DEFAULT NULL, "
        "reason text DEFAULT NULL, expected_version int DEFAULT NULL, metadata jsonb DEFAULT '{}') "
        "RETURNS ledger.jobs LANGUAGE sql AS 'SELECT * FROM ledger.jobs LIMIT 1'"
    ),
    "add a function beside them": "CREATE FUNCTION ledger.evil() RETURNS int LANGUAGE sql AS 'SELECT 1'",
    "call the internal append": (
        "SELECT ledger._append(j, 1, 'replayed', '{\"by\": \"alice\"}', '{}') FROM ledger.jobs j"
    ),
    "rewrite the current state": "UPDATE ledger.jobs SET state = 'succeeded'",
    "read the tables themselves": "SELECT * FROM ledger.jobs",
    "become the owner": "SET ROLE {owner}",
}


@pytest.mark.parametrize("statement", TAMPERING.values(), ids=TAMPERING.keys())
def test_the_application_role_cannot_rewrite_history(roles: Roles, statement: str) -> None:
    with connect(roles.url_app) as app:
        store = Store(app)
        job = store.enqueue_many([("k", {}, "q", 5, 3, None)])[0]
        store.claim("q", 1, "w")
        store.fail(job, "boom")
        before = _events(roles.url_owner)
        with pytest.raises(psycopg.Error) as refused:
            app.execute(statement.replace("{owner}", f'"{roles.owner}"'))
        assert refused.value.sqlstate in ("42501", "42P01"), refused.value  # insufficient privilege
    assert _events(roles.url_owner) == before


def test_the_application_role_does_all_its_work_through_the_functions(roles: Roles) -> None:
    with connect(roles.url_owner) as owner:
        small_partitions(owner, 10)  # partitions of 10 ids from here: the test rolls over twice
    with connect(roles.url_app) as app:
        s = Store(app)
        ids = s.enqueue_many([("k", {}, "q", 5, 1, None)] * 25)  # crosses two partition boundaries
        claimed = s.claim("q", 25, "w", lease=timedelta(seconds=1))
        assert len(claimed) == 25
        assert s.succeed_many([(j.id, j.version) for j in claimed[:20]], worker="w") == dict.fromkeys(ids[:20], True)
        s.fail(ids[20], "boom")
        s.replay(ids[20], reason="fixed")
        replayed = s.events_for_job(ids[20])
        assert replayed[-1].type == "replayed" and replayed[-1].data["by"] == roles.app, "who asked: the session"
        s.cancel(ids[21], "no")
        rescued = s.rescue(as_of=claimed[0].run_at + timedelta(days=1))
        assert {j.id for j in rescued} == set(ids[22:])
        assert s.job_counts() and s.metrics_refresh() >= 0 and s.events_appended() > 0
        assert s.projections_diff() == [] and s.events_verify() == []
        report = prune(s, timedelta(0))
        assert report.jobs_removed >= 10 and report.count("busy") == 0, report
        assert s.projections_diff() == [] and s.events_verify() == []
        assert len(s.events_partitions()) >= 2


def test_a_worker_and_the_cli_run_as_the_application_role(roles: Roles) -> None:
    with connect(roles.url_app) as app:
        [job] = Store(app).enqueue_many([("noop", {}, "default", 5, 3, None)])
    w = WorkerProcess(roles.url_app, "--heartbeat-every", "3600", "--rescue-every", "3600", name="app-role-worker")
    try:
        w.started()
        with connect(roles.url_app) as app:
            wait_until(lambda: Store(app).job(job).state == "succeeded", what="the job")  # type: ignore[union-attr]
        assert w.stop() == 0
    finally:
        w.kill()
    shown = ledger("show", str(job), url=roles.url_app)
    assert shown.returncode == 0 and "state=succeeded" in shown.stdout, shown.stderr
    assert ledger("verify", url=roles.url_readonly).stdout == "every history matches its hash chain\n"


def test_the_read_only_role_reads_and_cannot_write(roles: Roles) -> None:
    with connect(roles.url_app) as app:
        [job] = Store(app).enqueue_many([("k", {}, "q", 5, 1, None)])
    with connect(roles.url_readonly) as ro:
        s = Store(ro)
        assert s.job(job) is not None and len(s.events_for_job(job)) == 1 and s.job_counts()
        with pytest.raises(PermissionDenied, match="permission denied for function job_cancel"):
            s.cancel(job, "no")
        with pytest.raises(PermissionDenied):
            s.enqueue_many([("k", {}, "q", 5, 1, None)])
    out = ledger("cancel", str(job), url=roles.url_readonly)
    [line] = out.stderr.strip().splitlines()
    assert out.returncode == 1 and line.startswith(f"error: the database refused role '{roles.readonly}': ")
    assert "permission denied for function job_cancel" in line and "`ledger roles`" in line


def test_roles_need_a_name_and_a_migrated_ledger_keeps_its_grants(roles: Roles) -> None:
    assert ledger("roles", url=roles.url_owner).returncode == 2
    # An upgrade drops and re-creates every function and view, as here; the grants must come back with them.
    with connect(roles.url_owner) as owner, owner.transaction():
        store = Store(owner)
        store.run_script(DROP_FUNCTIONS)
        store.run_script(functions_sql())
    with connect(roles.url_app) as app:
        [job] = Store(app).enqueue_many([("k", {}, "q", 5, 1, None)])
        assert Store(app).job(job) is not None, "the read views' grants are back"
    # ... and PUBLIC's default EXECUTE on the re-created functions is revoked again.
    with connect(roles.url_readonly) as ro, pytest.raises(PermissionDenied):
        Store(ro).cancel(job)


# ---------------------------------------------------------------- ledger verify

Edit = Callable[[psycopg.Connection[DictRow], int], object]

# What a superuser can still do behind the triggers' back (session_replication_role
# = replica turns them off), and what `ledger verify` must say about each.
EDITS: dict[str, tuple[str, str]] = {
    "an event's data changed": (
        'UPDATE ledger.events SET data = \'{"worker": "mallory", "attempt": 1}\' WHERE job_id = %(j)s AND version = 2',
        "event v2 does not match its hash chain",
    ),
    "an event's time changed": (
        "UPDATE ledger.events SET at = at - interval '1 hour' WHERE job_id = %(j)s AND version = 1",
        "event v1 does not match its hash chain",
    ),
    "an event's type changed": (
        "UPDATE ledger.events SET type = 'succeeded' WHERE job_id = %(j)s AND version = 3",
        "event v3 does not match its hash chain",
    ),
    "an event removed from the middle": (
        "DELETE FROM ledger.events WHERE job_id = %(j)s AND version = 2",
        "event(s) v2..v2 are missing",
    ),
    "the latest event removed (the head lost)": (
        "DELETE FROM ledger.events WHERE job_id = %(j)s AND version = 3",
        "the current state is at v3 but the history ends at v2",
    ),
    "an event appended with a correct hash": (
        "INSERT INTO ledger.events (job_id, version, type, at, data, metadata, hash) "
        "SELECT %(j)s, 4, 'replayed', now(), '{\"by\": \"alice\"}', '{}', "
        "ledger.event_hash(e.hash, %(j)s, 4, 'replayed', now(), '{\"by\": \"alice\"}', '{}') "
        "FROM ledger.events e WHERE e.job_id = %(j)s AND e.version = 3",
        "the current state is at v3 but the history ends at v4",
    ),
    "an event changed and its own hash recomputed": (
        'UPDATE ledger.events e SET data = \'{"worker": "mallory", "attempt": 1}\', '
        'hash = ledger.event_hash(p.hash, e.job_id, 2, e.type, e.at, \'{"worker": "mallory", "attempt": 1}\', '
        "e.metadata) FROM ledger.events p WHERE e.job_id = %(j)s AND e.version = 2 AND p.job_id = %(j)s "
        "AND p.version = 1",
        "event v3 does not match its hash chain",
    ),
    "two events swapped": (
        "UPDATE ledger.events SET version = 100 WHERE job_id = %(j)s AND version = 2; "
        "UPDATE ledger.events SET version = 2 WHERE job_id = %(j)s AND version = 3; "
        "UPDATE ledger.events SET version = 3 WHERE job_id = %(j)s AND version = 100",
        "does not match its hash chain",
    ),
    "the current-state row removed": (
        "DELETE FROM ledger.jobs WHERE id = %(j)s",
        "a history without a current-state row",
    ),
    "the whole history removed, the current state kept": (
        "DELETE FROM ledger.events WHERE job_id = %(j)s",
        "a current-state row without any history",
    ),
}


@pytest.mark.parametrize(("edit", "found"), EDITS.values(), ids=EDITS.keys())
def test_verify_finds_an_edit_made_behind_the_ledgers_back(db_url: str, store: Store, edit: str, found: str) -> None:
    [other, job] = store.enqueue_many([("k", {}, "q", 5, 3, None)] * 2)
    store.claim("q", 2, "w")
    store.fail(job, "boom")  # job: enqueued, started, failed
    store.succeed(other)
    assert ledger("verify", url=db_url).returncode == 0
    with connect(db_url) as su, su.transaction():
        su.execute("SET LOCAL session_replication_role = replica")
        for statement in edit.split("; "):
            su.execute(statement, {"j": job})
    out = ledger("verify", url=db_url)
    assert out.returncode == 1
    assert found in out.stdout, out.stdout
    reported = {line.split()[1].rstrip(":") for line in out.stdout.splitlines()}
    assert reported == {str(job)}, "the untouched job is not reported"
    assert out.stderr.strip().splitlines()[-1].startswith("error: ") and "of 1 job(s)" in out.stderr


def test_verify_is_clean_on_an_untouched_ledger_whatever_happened_to_it(store: Store) -> None:
    ids = store.enqueue_many([("k", {"n": i}, "q", 5, 2, None) for i in range(20)])
    jobs = store.claim("q", 20, "w")
    store.succeed_many([(j.id, j.version) for j in jobs[:5]], worker="w")
    for j in jobs[5:10]:
        store.fail(j.id, "boom", discard=True)
    for j in jobs[10:15]:
        store.snooze(j.id, j.run_at)
    store.rescue(as_of=jobs[0].run_at + timedelta(days=1))
    for i in ids[5:10]:
        store.replay(i, actor="op", reason="again")
    assert store.events_verify() == []
    assert store.projections_diff() == []


def test_the_operators_functions_run_as_the_app_role_and_only_read_as_the_read_only_one(roles: Roles) -> None:
    from ledger.models import JobFilter

    with connect(roles.url_app) as app:
        s = Store(app)
        ids = s.enqueue_many([("k", {"customer": "c1"}, "q", 5, 1, None)] * 3)
        s.claim("q", 3, "w")
        for job_id in ids:
            s.fail(job_id, "boom")
        row = s.schedule_declare("nightly", "0 3 * * *", "UTC", "k", {}, queue="q", priority=5, max_attempts=1,
                                 missed="skip", grace=timedelta(minutes=1))  # fmt: skip
        assert s.schedule_fire("nightly", "0 3 * * *", "UTC", expected=row.next_run_at,
                               following=row.next_run_at + timedelta(days=1), slot=None) == (True, None)  # fmt: skip
        assert s.schedule_set_paused("nightly", True, reason="audit").changed_by == roles.app
        assert s.jobs_bulk("replay", JobFilter(search="c1"), reason="fixed").done == ids
        assert s.throughput_refresh(settle=timedelta(0)) > 0 and s.jobs(search="c1")
        assert s.projections_diff() == [] and s.events_verify() == []
    with connect(roles.url_readonly) as ro:
        s = Store(ro)
        assert [r.name for r in s.schedules()[0]] == ["nightly"] and s.schedule_events("nightly")
        assert s.throughput_refresh() >= 0 and s.discarded_count(JobFilter(kind="k")) == 0
        with pytest.raises(PermissionDenied):
            s.schedule_set_paused("nightly", False)
        with pytest.raises(PermissionDenied):
            s.jobs_bulk("cancel", JobFilter(kind="k"), reason="no")
