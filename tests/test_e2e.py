"""End to end: gunicorn and a worker as real processes; the dashboard in a real headless Chromium."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
    _need_chromium()
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


def _need_chromium() -> None:
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail("CI must install Debian's chromium (see .ci/run)")
        pytest.skip("Debian's chromium is not installed: apt-get install chromium")


def _launch(p: Any) -> Any:
    return p.chromium.launch(
        executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
    )


TOKEN = "e2e-token-3f9a"


def test_signing_in_and_out_in_a_real_browser(db_url: str, store: Store) -> None:
    _need_chromium()
    job = store.enqueue_many([("heartbeat", {}, "default", 5, 1, None)])[0]
    store.claim("default", 1, "browser-test")
    store.fail(job, "ConnectionError: upstream refused", metadata={"worker": "browser-test"})
    web = Gunicorn(db_url, {"LEDGER_API_TOKEN": TOKEN})
    try:
        _sign_in_and_out(web, job)
    finally:
        web.stop()


def _sign_in_and_out(web: Gunicorn, job: int) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = _launch(p)
        context = browser.new_context()
        page = context.new_page()
        # A page of the dashboard sends a stranger to the sign-in, and brings them back after it.
        page.goto(f"{web.base}/failed")
        expect(page).to_have_url(re.compile(r"/login\?next=%2Ffailed$"))
        page.get_by_label("API token").fill("not-the-token")
        page.get_by_role("button", name="Sign in").click()
        expect(page.locator(".flash.bad")).to_have_text("That token is not right.")
        page.get_by_label("API token").fill(TOKEN)
        page.get_by_role("button", name="Sign in").click()
        expect(page).to_have_url(f"{web.base}/failed")
        expect(page.locator(f"#job-{job}")).to_contain_text("ConnectionError: upstream refused")
        [cookie] = [c for c in context.cookies() if c["name"] == "ledger_session"]
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and TOKEN not in cookie["value"]

        page.get_by_role("button", name="Sign out").click()
        expect(page).to_have_url(f"{web.base}/login?notice=signed+out")
        expect(page.locator(".flash.ok")).to_have_text("signed out")
        assert not [c for c in context.cookies() if c["name"] == "ledger_session"]
        page.goto(f"{web.base}/failed")
        expect(page).to_have_url(re.compile(r"/login\?next="))

        # The cookie from before the sign-out, put back by hand, opens nothing: the session ended on the server.
        context.add_cookies([{"name": "ledger_session", "value": cookie["value"], "url": web.base}])
        page.goto(f"{web.base}/failed")
        expect(page).to_have_url(re.compile(r"/login\?next="))
        expect(page.get_by_role("button", name="Sign out")).to_have_count(0)
        browser.close()


def _replay_in_browser(web: Gunicorn, job: int) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = _launch(p)
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
