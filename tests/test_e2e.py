"""End to end: gunicorn and a worker as real processes; the dashboard in a real headless Chromium."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from ledger.store import Store

from .servers import Gunicorn, http_get
from .workers import WorkerProcess, wait_until

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture
def web(db_url: str) -> Iterator[Gunicorn]:
    server = Gunicorn(db_url)
    yield server
    server.stop()


@pytest.fixture
def worker(db_url: str) -> Iterator[WorkerProcess]:
    w = WorkerProcess(db_url, "--poll-interval", "3600", "--heartbeat-every", "3600", "--rescue-every", "3600")
    yield w.started()
    w.kill()


def test_curl_enqueue_test_on_gunicorn_is_picked_up_by_a_worker_at_once(
    web: Gunicorn, worker: WorkerProcess, store: Store
) -> None:
    status, body = http_get(f"{web.base}/debug/enqueue-test")
    assert status == 200, body
    match = re.fullmatch(r"enqueued heartbeat job id=(\d+)\n", body)
    assert match, body
    job = int(match.group(1))
    # The worker polls once an hour: only the NOTIFY can have woken it.
    wait_until(lambda: (j := store.job(job)) is not None and j.state == "succeeded", 15, "the heartbeat job to run")
    worker.wait_for(f'"msg": "worker heartbeat", "job_id": {job}')


def test_the_dashboard_in_a_real_browser_replays_a_failed_job(web: Gunicorn, db_url: str, store: Store) -> None:
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail("CI must install Debian's chromium (see .ci/run)")
        pytest.skip("Debian's chromium is not installed: apt-get install chromium")
    job = store.enqueue_many([("heartbeat", {}, "default", 5, 1, None)])[0]
    store.claim("default", 1, "browser-test")
    store.fail(job, "ConnectionError: upstream refused", metadata={"worker": "browser-test", "duration_ms": 41.0})
    # The worker starts after the job is discarded, so only the replay can put it back in its way.
    worker = WorkerProcess(db_url, "--poll-interval", "3600", "--heartbeat-every", "3600", "--rescue-every", "3600")
    try:
        worker.started()
        _replay_in_browser(web, job)
    finally:
        worker.kill()


def _replay_in_browser(web: Gunicorn, job: int) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
        )
        page = browser.new_page()
        page.goto(f"{web.base}/failed")
        row = page.locator(f"#job-{job}")
        expect(row).to_contain_text("ConnectionError: upstream refused")
        row.get_by_role("button", name=f"replay job {job}").click()
        expect(page.locator(".flash.ok")).to_have_text(f"job {job} replayed")
        expect(page.locator(f"#job-{job}")).to_have_count(0)

        page.goto(f"{web.base}/jobs/{job}")
        # Back at work: the worker (woken by the replay's NOTIFY) runs it to success.
        for _ in range(50):
            if page.locator("#job-state").inner_text() == "succeeded":
                break
            page.wait_for_timeout(200)
            page.reload()
        expect(page.locator("#job-state")).to_have_text("succeeded")
        expect(page.locator(".timeline")).to_contain_text("replayed")
        expect(page.locator(".timeline")).to_contain_text("ConnectionError: upstream refused")
        browser.close()
