"""The `ledger` pytest plugin (ledger/worker/pytest_plugin.py, ledger/worker/testing.py), used as an
application would use it: its fixtures, inline mode, drain() and the enqueue assertions."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import psycopg
import pytest

from ledger.client import Client
from ledger.kinds import JobContext, NoArgs, Registry, builtin_registry
from ledger.worker.testing import LedgerTesting
from tests.workers import ROOT

ran: list[str] = []


@pytest.fixture
def ledger_registry() -> Registry:
    ran.clear()
    registry = builtin_registry()

    @registry.kind("leaf")
    def leaf(ctx: JobContext[NoArgs]) -> None:
        ran.append(f"leaf {ctx.id}")

    @registry.kind("fan_out")
    def fan_out(ctx: JobContext[NoArgs]) -> None:
        ran.append(f"fan_out {ctx.id}")
        with Client(ctx.database_url, registry=registry) as client:
            client.enqueue_many([{"kind": "leaf"}, {"kind": "leaf"}])

    @registry.kind("async_leaf")
    async def async_leaf(ctx: JobContext[NoArgs]) -> None:
        ran.append(f"async_leaf {ctx.id}")

    return registry


def test_drain_runs_what_is_due_and_what_those_jobs_enqueue(ledger_jobs: LedgerTesting) -> None:
    ledger_jobs.client.enqueue("fan_out")
    ledger_jobs.assert_enqueued("fan_out", count=1)
    outcomes = ledger_jobs.drain()
    assert [o.job.kind for o in outcomes] == ["fan_out", "leaf", "leaf"]
    assert outcomes.of("leaf").counts == {"succeeded": 2}
    ledger_jobs.refute_enqueued()


def test_a_job_for_later_stays_scheduled_through_a_drain(ledger_jobs: LedgerTesting) -> None:
    later = datetime.now(UTC) + timedelta(hours=1)
    job_id = ledger_jobs.client.enqueue("leaf", run_at=later)
    assert ledger_jobs.drain() == []
    assert ledger_jobs.assert_enqueued("leaf").id == job_id and ledger_jobs.job(job_id).state == "scheduled"


def test_inline_mode_runs_nested_enqueues_at_once(ledger_inline: LedgerTesting) -> None:
    parent = ledger_inline.client.enqueue("fan_out")
    assert ran[0] == f"fan_out {parent}" and len(ran) == 3
    assert ledger_inline.outcomes.counts == {"succeeded": 3}
    ledger_inline.refute_enqueued()


def test_an_async_enqueue_runs_inline_in_the_callers_transaction_and_rolls_back_with_it(
    ledger_inline: LedgerTesting,
) -> None:
    async def main() -> tuple[int, int]:
        async with ledger_inline.async_client() as client:
            kept = await client.enqueue("async_leaf")
            async with await psycopg.AsyncConnection.connect(ledger_inline.url) as caller, caller.transaction():
                lost = await client.enqueue("async_leaf", conn=caller)
                raise psycopg.Rollback()
        return kept, lost

    kept, lost = anyio.run(main)
    assert ran == [f"async_leaf {kept}", f"async_leaf {lost}"], "both ran at their enqueue"
    assert ledger_inline.job(kept).state == "succeeded"
    assert ledger_inline.store.job(lost) is None, "the rollback took the job and its history"


def test_adrain_drains_from_async_code(ledger_jobs: LedgerTesting) -> None:
    ledger_jobs.client.enqueue_many([{"kind": "async_leaf"}, {"kind": "leaf"}])
    outcomes = anyio.run(ledger_jobs.adrain)
    assert outcomes.counts == {"succeeded": 2} and len(ran) == 2


def test_the_assertions_say_what_is_waiting_instead(ledger_jobs: LedgerTesting) -> None:
    ledger_jobs.client.enqueue("leaf", queue="other")
    with pytest.raises(
        AssertionError, match=r"(?s)matching \{'kind': 'leaf', 'queue': 'mail'\}.*kind=leaf queue=other"
    ):
        ledger_jobs.assert_enqueued("leaf", queue="mail")
    with pytest.raises(AssertionError, match=r"expected 2 job\(s\) matching"):
        ledger_jobs.assert_enqueued("leaf", count=2)
    with pytest.raises(AssertionError, match=r"expected no job matching \{'kind': 'leaf'\}"):
        ledger_jobs.refute_enqueued("leaf")


def test_each_test_gets_a_database_of_its_own(ledger_db: str, db_url: str) -> None:
    # Beside the project's own fixtures (tests/conftest.py), not instead of them.
    assert ledger_db != db_url
    assert "ledger_plugin_" in ledger_db and "ledger_plugin_" not in db_url


APP_TEST = """
import pytest
from psycopg import connect

@pytest.fixture(scope="session")
def ledger_template_setup():
    def setup(url):
        with connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE orders (id int)")
    return setup

def test_uses_the_plugin(ledger_inline):
    job_id = ledger_inline.client.enqueue("heartbeat")
    assert ledger_inline.job(job_id).state == "succeeded"
    with connect(ledger_inline.url) as conn:
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (0,)
"""


def test_an_application_gets_the_plugin_by_installing_the_package_and_can_turn_it_off(tmp_path: Path) -> None:
    (tmp_path / "test_app.py").write_text(textwrap.dedent(APP_TEST))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def pytest_run(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args, str(tmp_path)]
        return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)

    on = pytest_run()
    assert on.returncode == 0, on.stdout + on.stderr
    assert "1 passed" in on.stdout
    off = pytest_run("-p", "no:ledger")
    assert off.returncode == 1 and "fixture 'ledger_inline' not found" in off.stdout
