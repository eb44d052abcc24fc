"""The operators' pages in a real headless Chromium against gunicorn: search and replay all matching,
queues and schedules paused and resumed, the activity chart."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from ledger.store import Store

from .servers import Gunicorn
from .test_e2e import _launch, _need_chromium


@pytest.fixture
def site(db_url: str) -> Iterator[Gunicorn]:
    _need_chromium()
    server = Gunicorn(db_url)
    yield server
    server.stop()


@pytest.fixture
def page(site: Gunicorn) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = _launch(p)
        yield browser.new_page()
        browser.close()


def discard(store: Store, args: list[dict[str, Any]], error: str, queue: str = "default") -> list[int]:
    ids = store.enqueue_many([("heartbeat", a, queue, 5, 1, None) for a in args])
    store.claim(queue, len(ids), "browser-test")
    for job_id in ids:
        store.fail(job_id, error)
    return ids


def test_searching_for_a_customer_and_replaying_all_that_match(site: Gunicorn, page: Any, store: Store) -> None:
    from playwright.sync_api import expect

    acme = discard(store, [{"customer": "acme-42", "n": i} for i in range(3)], "TimeoutError: invoice service")
    [other] = discard(store, [{"customer": "globex"}], "TimeoutError: invoice service")
    page.goto(f"{site.base}/failed")
    page.get_by_label("search args and errors").fill("acme-42")
    page.get_by_role("button", name="Filter").click()
    for job in acme:
        expect(page.locator(f"#job-{job}")).to_contain_text("acme-42")
    expect(page.locator(f"#job-{other}")).to_have_count(0)
    bulk = page.locator("#replay-all")
    expect(bulk).to_contain_text("3 dead letter(s) match this filter.")
    bulk.get_by_label("reason for replaying all matching").fill("invoice service is back")
    bulk.get_by_role("button", name="Preview").click()
    expect(page.locator(".flash.ok")).to_have_text("would replay 3 job(s); nothing changed (preview)")
    page.locator("#replay-all").get_by_label("reason for replaying all matching").fill("invoice service is back")
    page.locator("#replay-all").get_by_role("button", name="Replay all 3 matching").click()
    expect(page.locator(".flash.ok")).to_contain_text("replayed 3 job(s) in batch ")
    expect(page).to_have_url(re.compile(r"/failed\?search=acme-42&notice="))
    expect(page.locator(".empty")).to_have_text("No discarded jobs found.")

    page.goto(f"{site.base}/jobs?search=ACME-42")
    for job in acme:
        expect(page.locator(f"#job-{job} .state")).to_have_text("available")
    expect(page.locator(f"#job-{other}")).to_have_count(0)
    assert store.job(other).state == "discarded"  # type: ignore[union-attr]


def test_pausing_and_resuming_a_queue(site: Gunicorn, page: Any, store: Store) -> None:
    from playwright.sync_api import expect

    store.enqueue_many([("heartbeat", {}, "mail", 5, 1, None)] * 2)
    page.goto(f"{site.base}/queues")
    row = page.locator("#queue-mail")
    expect(row).to_contain_text("running")
    row.get_by_label("reason for queue mail").fill("smtp relay down")
    row.get_by_role("button", name="pause queue mail").click()
    expect(page.locator(".flash.ok")).to_have_text("queue mail paused")
    expect(page.locator("#queue-mail")).to_contain_text("paused by dashboard")
    expect(page.locator("#queue-mail")).to_contain_text("smtp relay down")
    page.locator("#queue-mail").get_by_role("button", name="resume queue mail").click()
    expect(page.locator(".flash.ok")).to_have_text("queue mail resumed")
    assert [(q.queue, q.paused) for q in store.queue_states()] == [("mail", False)]


def test_setting_and_clearing_a_limit(site: Gunicorn, page: Any, store: Store) -> None:
    from playwright.sync_api import expect

    page.goto(f"{site.base}/queues")
    form = page.locator("#limit-form")
    form.get_by_label("limit scope").fill("kind:export")
    form.get_by_label("at most this many running at once").fill("2")
    form.get_by_label("per value of this args field").fill("customer_id")
    form.get_by_role("button", name="Set limit").click()
    expect(page.locator(".flash.ok")).to_have_text("limit kind:export set; it applies to jobs enqueued from now on")
    row = page.locator("#limits tr", has_text="kind:export")
    expect(row).to_contain_text("customer_id")
    assert [(r.scope, r.concurrency, r.key_path) for r in store.limits()] == [("kind:export", 2, ["customer_id"])]
    form.get_by_label("limit scope").fill("kind:export")
    form.get_by_label("at most this many starts per period").fill("sixty")
    form.get_by_role("button", name="Set limit").click()
    expect(page.locator(".flash.bad")).to_contain_text("write starts per period")
    row.get_by_role("button", name="clear limit kind:export").click()
    expect(page.locator(".flash.ok")).to_have_text("limit kind:export cleared")
    assert store.limits() == []


def test_pausing_and_resuming_a_schedule(site: Gunicorn, page: Any, store: Store) -> None:
    from playwright.sync_api import expect

    store.schedule_declare("nightly-report", "0 3 * * *", "Europe/Paris", "heartbeat", {}, queue="default",
                           priority=5, max_attempts=1, missed="once", grace=timedelta(minutes=1))  # fmt: skip
    page.goto(f"{site.base}/schedules")
    row = page.locator("#schedule-nightly-report")
    expect(row.locator(".next")).to_contain_text(re.compile(r"03:00:00 CES?T"))
    row.get_by_label("reason for schedule nightly-report").fill("books audit")
    row.get_by_role("button", name="pause schedule nightly-report").click()
    expect(page.locator(".flash.ok")).to_have_text("schedule nightly-report paused")
    expect(page.locator("#schedule-nightly-report .next")).to_have_text("paused")
    expect(page.locator("#schedule-history")).to_contain_text("nightly-report paused by dashboard: “books audit”")
    page.locator("#schedule-nightly-report").get_by_role("button", name="resume schedule nightly-report").click()
    expect(page.locator(".flash.ok")).to_have_text("schedule nightly-report resumed")
    expect(page.locator("#schedule-nightly-report .next")).to_contain_text("03:00:00")


def test_the_activity_chart_draws_outcomes_per_kind(site: Gunicorn, page: Any, store: Store) -> None:
    from playwright.sync_api import expect

    discard(store, [{}, {}], "boom")
    done = store.enqueue_many([("heartbeat", {}, "default", 5, 1, None)] * 3)
    store.claim("default", 3, "browser-test")
    store.succeed_many([(j, 2) for j in done], worker="browser-test")
    store.throughput_refresh(settle=timedelta(0))
    page.goto(f"{site.base}/activity?hours=1")
    chart = page.locator('figure[data-kind="heartbeat"]')
    expect(chart.locator("svg")).to_have_attribute("aria-label", "heartbeat: 3 succeeded, 0 failed, 2 discarded")
    expect(chart.locator("rect.bar.discarded")).not_to_have_count(0)
    assert chart.locator("svg").bounding_box()["height"] > 50, "drawn, not collapsed by the page's CSS"
    page.goto(f"{site.base}/")
    expect(page.locator('figure[data-kind="all kinds"] rect.bar.succeeded')).not_to_have_count(0)
