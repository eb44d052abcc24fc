"""Results, progress and waiting: what a handler returns is kept, its progress shows, a client waits for the end."""

from __future__ import annotations

import json
import threading
from typing import Any

import anyio
import psycopg
import pytest
from psycopg.rows import DictRow, dict_row
from psycopg_pool import ConnectionPool

from ledger.client import AsyncClient, Client
from ledger.errors import JobFailed, JobNotFound
from ledger.kinds import builtin_registry
from ledger.store import Store

from .jobapp import SIDE_TABLE
from .test_cli import ledger
from .test_web import client_for
from .workers import WorkerProcess, wait_until

QUIET = ["--heartbeat-every", "3600", "--rescue-every", "3600"]


def test_a_result_is_kept_in_the_succeeded_event_and_read_back(store: Store) -> None:
    [job] = store.enqueue_many([("k", {}, "q", 5, 1, None)])
    [claimed] = store.claim("q", 1, "w")
    store.succeed(job, expected_version=claimed.version, result='{"rows": 3}')
    assert store.events_for_job(job)[-1].data == {"result": {"rows": 3}}
    assert store.job_outcome(job) == {"state": "succeeded", "last_error": None, "result": {"rows": 3}}
    assert store.events_verify() == [] and store.projections_diff() == []


def test_progress_is_kept_only_while_its_attempt_runs(store: Store) -> None:
    [job] = store.enqueue_many([("k", {}, "q", 5, 1, None)])
    [claimed] = store.claim("q", 1, "w")
    assert store.progress_set(job, claimed.attempt, {"done": 3, "total": 10})
    assert store.progress(job)["value"] == {"done": 3, "total": 10}  # type: ignore[index]
    assert not store.progress_set(job, claimed.attempt + 1, {"done": 4}), "another attempt's report"
    store.succeed(job)
    assert not store.progress_set(job, claimed.attempt, {"done": 5}), "the attempt has ended"
    assert store.progress(job)["value"] == {"done": 3, "total": 10}  # type: ignore[index]  # the last report stays


@pytest.fixture
def worker(db_url: str, conn: psycopg.Connection[DictRow]) -> WorkerProcess:
    conn.execute(SIDE_TABLE)
    w = WorkerProcess(db_url, *QUIET, "--poll-interval", "0.1").started()
    yield w  # type: ignore[misc]
    w.kill()


def test_wait_returns_the_result_of_a_job_enqueued_and_run_by_other_processes(
    db_url: str, worker: WorkerProcess
) -> None:
    # Enqueued by another process (the CLI), run by the worker process; this process only waits.
    out = ledger("enqueue", "answer", "--args", '{"n": 21}', url=db_url, extra_env={"LEDGER_APP": "tests.jobapp"})
    assert out.returncode == 0, out.stderr
    job = int(out.stdout.split("id=")[1])
    with Client(db_url, registry=builtin_registry(), insert_only=True) as client:
        assert client.wait(job, timeout=30) == {"answer": 42}

    async def main() -> object:
        async with AsyncClient(db_url, registry=builtin_registry(), insert_only=True) as client:
            return await client.wait(job, timeout=30)

    assert anyio.run(main) == {"answer": 42}, "the async twin, on a job already ended"


def test_wait_is_woken_by_the_end_not_by_a_poll_and_raises_for_a_job_that_failed(
    db_url: str, worker: WorkerProcess
) -> None:
    with Client(db_url, registry=builtin_registry(), insert_only=True) as client:
        slow = client.enqueue("answer", {"n": 1, "seconds": 1.0})
        got: list[object] = []
        waiter = threading.Thread(target=lambda: got.append(client.wait(slow, timeout=30)))
        waiter.start()
        waiter.join(40)
        assert got == [{"answer": 2}]
        dead = client.enqueue("hopeless")
        with pytest.raises(JobFailed, match=f"job {dead} was discarded: the account was deleted"):
            client.wait(dead, timeout=30)
        with pytest.raises(JobNotFound):
            client.wait(10**12, timeout=1)
        later = client.enqueue("answer", {"n": 1, "seconds": 30})
        with pytest.raises(TimeoutError):
            client.wait(later, timeout=0.5)


def test_a_handler_reports_progress_that_ledger_show_the_api_and_the_job_page_show(
    db_url: str, store: Store, worker: WorkerProcess
) -> None:
    pool: ConnectionPool[Any] = ConnectionPool(
        db_url, min_size=1, open=True, kwargs={"autocommit": True, "row_factory": dict_row}
    )
    web = client_for(pool)
    [job] = store.enqueue_many([("steps", {}, "default", 5, 1, None)])
    wait_until(lambda: (p := store.progress(job)) is not None and p["value"]["done"] >= 2, 30, "progress")
    shown = ledger("show", str(job), url=db_url)
    assert "progress:" in shown.stdout and '"total": 5' in shown.stdout, shown.stdout
    read = web.simulate_get(f"/api/jobs/{job}").json
    assert read["progress"]["value"]["total"] == 5 and read["progress"]["attempt"] == 1, read["progress"]
    assert 'id="job-progress"' in web.simulate_get(f"/jobs/{job}").text
    wait_until(lambda: store.job(job).state == "succeeded", 30, "the job")  # type: ignore[union-attr]
    assert "result:" in ledger("show", str(job), url=db_url).stdout
    done = web.simulate_get(f"/api/jobs/{job}").json
    assert done["result"] is not None and done["result"] == json.loads(ledger("wait", str(job), url=db_url).stdout)
    page = web.simulate_get(f"/jobs/{job}").text
    pool.close()
    assert 'id="job-result"' in page


def test_a_result_past_the_limit_discards_the_attempt_saying_why(
    db_url: str, store: Store, worker: WorkerProcess
) -> None:
    [job] = store.enqueue_many([("answer", {"n": 1, "huge": True}, "default", 5, 3, None)])
    wait_until(lambda: store.job(job).state == "discarded", 30, "the job")  # type: ignore[union-attr]
    assert store.job(job).last_error.startswith("result: ") and "the limit is 65,536" in store.job(job).last_error  # type: ignore[union-attr]
    assert store.job(job).attempt == 1, "not retried: the same code returns the same result"  # type: ignore[union-attr]
