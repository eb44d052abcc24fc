"""Everything through a real PgBouncer in transaction mode: worker, clients, CLI and web app.

Transaction pooling hands each transaction whatever server connection is
free, so a server-side prepared statement made on one is missing on the next
(`prepared statement "_pg3_0" does not exist`), and a LISTEN holds no
session to listen in. The fixture's PgBouncer spreads one client's
transactions over several server connections (tests/pgbouncer.py), so these
tests meet that on every run.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from psycopg.rows import DictRow

from ledger.client import AsyncClient, Client
from ledger.db import PREPARE_THRESHOLD, connect, through_pooler
from ledger.store import Store

from .pgbouncer import PgBouncer
from .servers import Gunicorn, http_get
from .test_cli import ledger
from .workers import WorkerProcess, wait_until

QUIET = ["--heartbeat-every", "3600", "--rescue-every", "3600"]


@pytest.fixture
def bouncer(db_url: str, tmp_path: Path) -> Iterator[PgBouncer]:
    proxy = PgBouncer(db_url, tmp_path / "pgbouncer")
    yield proxy
    proxy.stop()


@pytest.fixture
def via(bouncer: PgBouncer, db_url: str) -> str:
    """The test's database, through PgBouncer."""
    return bouncer.url(db_url)


def states(store: Store, ids: list[int]) -> Counter[str]:
    return Counter(j.state.value for i in ids if (j := store.job(i)) is not None)


def succeeded(store: Store, job: int) -> bool:
    return states(store, [job]) == {"succeeded": 1}


def executions(conn: psycopg.Connection[DictRow]) -> Counter[int]:
    return Counter(r["job_id"] for r in conn.execute("SELECT job_id FROM executions").fetchall())


def test_connections_prepare_statements_directly_and_not_through_the_pooler(db_url: str, via: str) -> None:
    with connect(db_url) as direct, connect(via) as pooled:
        assert (through_pooler(direct), through_pooler(pooled)) == (False, True)
        assert (direct.prepare_threshold, pooled.prepare_threshold) == (PREPARE_THRESHOLD, None)
        # Many runs of one query through the pooler: none is prepared, so none goes missing.
        for _ in range(3 * PREPARE_THRESHOLD):
            Store(pooled).job_counts()
    with connect(via, autocommit=False) as pooled:  # the check leaves no transaction behind
        assert pooled.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_the_clients_enqueue_and_a_polling_worker_drains_through_pgbouncer(
    via: str, store: Store, side: psycopg.Connection[DictRow], workers: list[WorkerProcess]
) -> None:
    # Well past psycopg's prepare threshold (5) on each client's one connection.
    with Client(via) as client:
        ids = [client.enqueue("sleep") for _ in range(12)]
        ids += client.enqueue_many([{"kind": "sleep"}] * 300)

    async def enqueue_async() -> list[int]:
        async with AsyncClient(via) as aclient:
            got = [await aclient.enqueue("sleep") for _ in range(12)]
            return got + await aclient.enqueue_many([{"kind": "sleep"}] * 300)

    ids += asyncio.run(enqueue_async())
    assert len(set(ids)) == 624

    worker = WorkerProcess(via, "--poll-only", "--poll-interval", "0.1", *QUIET, name="proxied")
    workers.append(worker.started(listening=False))
    wait_until(lambda: states(store, ids) == {"succeeded": 624}, timeout=90, what="624 jobs to succeed via pgbouncer")
    assert executions(side) == dict.fromkeys(ids, 1)
    assert "error" not in worker.log.lower(), worker.log
    assert worker.stop() == 0
    assert store.projections_diff() == []


def test_retries_discard_and_a_replay_from_the_cli_work_through_pgbouncer(
    via: str, store: Store, side: psycopg.Connection[DictRow], workers: list[WorkerProcess]
) -> None:
    workers.append(WorkerProcess(via, "--poll-only", "--poll-interval", "0.1", *QUIET).started(listening=False))
    out = ledger("enqueue", "flaky", "--max-attempts", "3", "--app", "tests.jobapp", url=via)
    assert out.returncode == 0, out.stderr
    job = int(out.stdout.rsplit("=", 1)[1])
    wait_until(lambda: states(store, [job]) == {"discarded": 1}, timeout=30, what="the flaky job to be discarded")
    history = [e.type for e in store.events_for_job(job)]
    assert history == ["enqueued", *["started", "failed"] * 2, "started", "discarded"]

    listed = ledger("failed", url=via)
    assert listed.returncode == 0 and listed.stdout.startswith(f"id={job} kind=flaky attempt=3/3 "), listed
    side.execute("CREATE TABLE fixed ()")
    replayed = ledger("replay", str(job), "--reason", "upstream is back", url=via)
    assert replayed.returncode == 0, replayed.stderr
    wait_until(lambda: states(store, [job]) == {"succeeded": 1}, timeout=30, what="the replayed job to succeed")
    shown = ledger("show", str(job), url=via)
    assert shown.returncode == 0 and "succeeded" in shown.stdout.splitlines()[-1], shown
    assert workers[0].stop() == 0


def test_a_killed_workers_jobs_are_rescued_by_another_through_pgbouncer(
    via: str, store: Store, side: psycopg.Connection[DictRow], workers: list[WorkerProcess]
) -> None:
    # No --poll-only and no LEDGER_LISTEN_URL: the worker sees the pooler and polls on its own.
    doomed = WorkerProcess(via, "--lease", "2", *QUIET, name="doomed").started(listening=False)
    assert "through a connection pooler" in doomed.log and "listener listening" not in doomed.log
    workers.append(doomed)
    with Client(via) as client:
        ids = client.enqueue_many([{"kind": "sleep", "args": {"seconds": 3}}] * 4)
    wait_until(lambda: states(store, ids) == {"running": 4}, what="four running jobs")
    doomed.kill()

    rescuer = WorkerProcess(via, "--rescue-every", "1", "--poll-interval", "0.2", name="rescuer")
    workers.append(rescuer.started(listening=False))
    wait_until(lambda: states(store, ids) == {"succeeded": 4}, timeout=40, what="the rescued jobs to succeed")
    for job in ids:
        assert [e.type for e in store.events_for_job(job)] == ["enqueued", "started", "rescued", "started", "succeeded"]
    assert executions(side) == dict.fromkeys(ids, 1)
    assert rescuer.stop() == 0


def test_with_a_direct_listen_url_a_proxied_worker_wakes_on_notify(
    via: str, db_url: str, store: Store, workers: list[WorkerProcess]
) -> None:
    # The poll is an hour away: only a NOTIFY, heard on the direct connection, can wake it in time.
    worker = WorkerProcess(via, "--poll-interval", "3600", *QUIET, env={"LEDGER_LISTEN_URL": db_url}, name="heard")
    workers.append(worker.started())
    wait_until(lambda: states(store, [1, 2]) == {"succeeded": 2}, what="the periodic jobs of start-up")
    with Client(via) as client:
        for n in range(1, 9):  # one at a time, each waited for: each needs a wake-up of its own
            job = client.enqueue("noop")
            wait_until(partial(succeeded, store, job), timeout=15, what=f"job {job} ({n} of 8) to run")
    assert "listener connects to" in worker.log
    assert worker.stop() == 0


def test_the_web_app_serves_and_enqueues_through_pgbouncer(via: str, store: Store) -> None:
    web = Gunicorn(via)
    ids: list[int] = []
    try:
        for _ in range(12):
            status, body = http_get(f"{web.base}/debug/enqueue-test")
            assert status == 200 and body.startswith("enqueued heartbeat job id="), (status, body)
            ids.append(int(body.strip().rsplit("=", 1)[1]))
            for page in ("/api/counts", f"/api/jobs/{ids[-1]}", "/failed", f"/jobs/{ids[-1]}"):
                assert http_get(f"{web.base}{page}")[0] == 200, page
    finally:
        web.stop()
    assert states(store, ids) == {"available": 12}


def test_a_migration_through_pgbouncer_applies_the_schema(bouncer: PgBouncer, server_url: str) -> None:
    name = f"ledger_pgbouncer_{os.getpid()}"
    with connect(server_url) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        via = bouncer.url(make_conninfo(server_url, dbname=name))
        out = ledger("migrate", url=via)
        assert out.returncode == 0 and "schema applied" in out.stdout, out
        again = ledger("migrate", url=via)
        assert again.returncode == 0, again.stderr
    finally:
        with connect(server_url) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
