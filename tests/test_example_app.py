"""The example shop (examples/orders), tested the way an application tests its jobs: through the `ledger`
pytest plugin (ledger/worker/pytest_plugin.py), in inline mode and in manual mode with drain()."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from examples.orders import jobs
from examples.orders.app import create_app
from ledger.kinds import Registry
from ledger.worker.testing import LedgerTesting
from tests.workers import WorkerProcess, wait_until


@pytest.fixture
def ledger_registry() -> Registry:
    return jobs.registry  # the shop keeps its kinds in a registry of its own


@pytest.fixture(autouse=True)
def mailer() -> Iterator[jobs.Mailer]:
    jobs.mailer.sent.clear()
    yield jobs.mailer


@pytest.fixture
def shop(ledger_db: str) -> Iterator[TestClient]:
    with TestClient(create_app(ledger_db)) as client:
        yield client


def test_an_order_mails_its_receipt_before_the_request_returns_in_inline_mode(
    ledger_inline: LedgerTesting, shop: TestClient, mailer: jobs.Mailer
) -> None:
    r = shop.post("/orders", json={"email": "ada@example.org", "item": "book"})
    assert r.status_code == 201
    order = r.json()
    assert mailer.sent == [("ada@example.org", f"Your order {order['id']}")]
    # Run by the real executor and recorded in the ledger, in the request's transaction.
    job = ledger_inline.job(order["receipt_job"])
    assert (job.state, job.worker) == ("succeeded", "ledger.testing")
    assert [e.type for e in ledger_inline.history(job.id)] == ["enqueued", "started", "succeeded"]
    assert ledger_inline.outcomes.counts == {"succeeded": 1}


def test_a_failing_receipt_fails_the_request_and_takes_the_order_with_it_in_inline_mode(
    ledger_inline: LedgerTesting, shop: TestClient, mailer: jobs.Mailer
) -> None:
    with pytest.raises(ValueError, match="not an address"):
        shop.post("/orders", json={"email": "nobody", "item": "book"})
    assert mailer.sent == []
    [failed] = ledger_inline.outcomes
    assert failed.kind == "failed" and failed.error == "ValueError: cannot mail 'nobody': not an address"
    # The exception rolled the request's transaction back: no order, no job, no history.
    assert ledger_inline.store.jobs() == []


def test_an_order_enqueues_its_receipt_and_a_drain_mails_it(
    ledger_jobs: LedgerTesting, shop: TestClient, mailer: jobs.Mailer
) -> None:
    order = shop.post("/orders", json={"email": "ada@example.org", "item": "book"}).json()
    job = ledger_jobs.assert_enqueued("send_receipt", args={"order_id": order["id"]}, queue="mail", count=1)
    assert job.id == order["receipt_job"] and mailer.sent == []
    outcomes = ledger_jobs.drain()
    assert outcomes.counts == {"succeeded": 1}
    assert mailer.sent == [("ada@example.org", f"Your order {order['id']}")]
    ledger_jobs.refute_enqueued("send_receipt")


def test_an_order_refused_rolls_back_its_receipt_job(ledger_jobs: LedgerTesting, shop: TestClient) -> None:
    r = shop.post("/orders", json={"email": "ada@example.org", "item": "sold out"})
    assert r.status_code == 409
    ledger_jobs.refute_enqueued("send_receipt")
    assert ledger_jobs.drain() == []


def test_a_drain_records_a_failed_attempt_as_retryable(
    ledger_jobs: LedgerTesting, shop: TestClient, mailer: jobs.Mailer
) -> None:
    order = shop.post("/orders", json={"email": "nobody", "item": "book"}).json()
    [failed] = ledger_jobs.drain()
    assert failed.kind == "failed" and isinstance(failed.exception, ValueError)
    job = ledger_jobs.job(order["receipt_job"])
    assert (job.state, job.attempt, job.last_error) == ("retryable", 1, failed.error)
    # Retryable at its backoff time, so not due again within this drain or the next.
    assert ledger_jobs.drain() == []
    with pytest.raises(AssertionError, match=r"expected a job matching \{'kind': 'send_receipt'\}"):
        ledger_jobs.assert_enqueued("send_receipt")


def test_the_shops_worker_mails_the_receipts_of_committed_orders(ledger_jobs: LedgerTesting, shop: TestClient) -> None:
    order = shop.post("/orders", json={"email": "ada@example.org", "item": "book"}).json()
    worker = WorkerProcess(ledger_jobs.url, "--queues", "default=2,mail=2", app="examples.orders.worker").started()
    try:
        wait_until(lambda: ledger_jobs.job(order["receipt_job"]).state == "succeeded", what="the receipt job")
    finally:
        assert worker.stop() == 0
