"""`ledger worker --metrics-port`: the worker's own Prometheus endpoint (worker/metrics.py)."""

from __future__ import annotations

import re
import socket
import threading
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from ledger.client import Client
from ledger.kinds import JobContext, NoArgs, builtin_registry
from ledger.store import Store
from ledger.worker.config import WorkerConfig
from tests.workers import WorkerProcess, run_worker_in_process, wait_until


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the endpoint: (name, sorted labels) -> value, as Prometheus would read them."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_the_worker_reports_its_running_jobs_claims_and_outcomes(db_url: str, store: Store) -> None:
    app = builtin_registry()
    release = threading.Event()

    @app.kind("ok", queue="q")
    async def ok(ctx: JobContext[NoArgs]) -> None:
        return None

    @app.kind("bad", queue="q", max_attempts=1)
    async def bad(ctx: JobContext[NoArgs]) -> None:
        raise RuntimeError("no")

    @app.kind("slow", queue="q")
    def slow(ctx: JobContext[NoArgs]) -> None:
        release.wait(20)

    with Client(db_url, registry=app) as client:
        ids = client.enqueue_many([{"kind": "ok"}] * 3 + [{"kind": "bad"}])
        slow_id = client.enqueue("slow")

    def observe(worker: Any) -> tuple[dict[Any, float], dict[Any, float]]:
        def settled() -> bool:
            states = [store.job(i).state for i in [*ids, slow_id]]  # type: ignore[union-attr]
            return states.count("succeeded") == 3 and "discarded" in states and states[-1] == "running"

        wait_until(settled, what="the jobs to finish and the slow one to run")
        during = scrape(worker.metrics_port)
        release.set()
        wait_until(lambda: store.job(slow_id).state == "succeeded", what="the slow job")  # type: ignore[union-attr]
        return during, scrape(worker.metrics_port)

    config = WorkerConfig(queues="default=1,q=4", metrics_port=0, poll_interval=0.05)
    during, after = run_worker_in_process(db_url, app, config, observe)
    q = (("queue", "q"),)
    assert during["ledger_worker_jobs_running", q] == 1 and after["ledger_worker_jobs_running", q] == 0
    assert during["ledger_worker_slots", q] == 4
    assert after["ledger_worker_jobs_claimed_total", q] == 5
    attempts = {
        (dict(labels)["kind"], dict(labels)["outcome"]): n
        for (name, labels), n in after.items()
        if name == "ledger_worker_attempts_total" and dict(labels)["kind"] in ("ok", "bad", "slow")  # not the built-ins
    }
    assert attempts == {("ok", "succeeded"): 3, ("bad", "failed"): 1, ("slow", "succeeded"): 1}
    claims = after["ledger_worker_claim_seconds_count", ()]
    assert claims >= 1 and after["ledger_worker_claim_seconds_bucket", (("le", "+Inf"),)] == claims


def test_the_metrics_port_is_an_option_of_ledger_worker(db_url: str) -> None:
    worker = WorkerProcess(db_url, "--metrics-port", "0", "--poll-interval", "0.2").started()
    try:
        worker.wait_for("worker metrics on http://127.0.0.1:")
        port = int(re.search(r"worker metrics on http://127\.0\.0\.1:(\d+)/metrics", worker.log).group(1))  # type: ignore[union-attr]
        assert ("ledger_worker_slots", (("queue", "default"),)) in scrape(port)
    finally:
        assert worker.stop() == 0


def test_a_metrics_port_in_use_is_refused_with_what_to_do(db_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        worker = WorkerProcess(db_url, "--metrics-port", str(port))
        assert worker.wait(30) == 1
    assert f"error: cannot serve the worker's metrics on 127.0.0.1:{port}" in worker.log
    assert "choose another --metrics-port" in worker.log
