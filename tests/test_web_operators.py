"""The operators' API and pages through falcon's TestClient against a real database: bulk acts, queues,
limits, schedules, throughput, search, and unique enqueues' 200."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import falcon.testing
import psycopg
import pytest
from psycopg.rows import DictRow, dict_row
from psycopg_pool import ConnectionPool

from ledger.store import Store

from .test_web import FORM, client_for, discarded_job


@pytest.fixture
def pool(db_url: str) -> Iterator[ConnectionPool[Any]]:
    with ConnectionPool(db_url, min_size=1, max_size=4, kwargs={"autocommit": True, "row_factory": dict_row}) as p:
        yield p


@pytest.fixture
def client(pool: ConnectionPool[Any]) -> falcon.testing.TestClient:
    return client_for(pool)


def discard(store: Store, n: int, kind: str = "heartbeat", error: str = "boom", **args: Any) -> list[int]:
    ids = store.enqueue_many([(kind, {**args, "n": i} if args else {}, "default", 5, 1, None) for i in range(n)])
    store.claim("default", n, "w")
    for job_id in ids:
        store.fail(job_id, error)
    return ids


def notice(response: Any) -> dict[str, list[str]]:
    return parse_qs(urlsplit(response.headers["location"]).query)


# ---------------------------------------------------------------- unique jobs


def test_a_unique_enqueue_answers_201_then_200_with_the_same_id(client: falcon.testing.TestClient) -> None:
    body = {"kind": "heartbeat", "unique": {"key": "nightly-report"}}
    first = client.simulate_post("/api/jobs", json=body)
    again = client.simulate_post("/api/jobs", json=body)
    assert (first.status_code, first.json["duplicate"]) == (201, False)
    assert (again.status_code, again.json) == (200, {"id": first.json["id"], "duplicate": True})
    assert again.headers["location"] == f"/api/jobs/{first.json['id']}"


def test_a_unique_rule_takes_booleans_as_booleans(client: falcon.testing.TestClient) -> None:
    # The document says boolean; 1 for True was accepted and made a job (found by the API fuzz test).
    for rule in ({"by_queue": 1}, {"args": 0}, {"by_queue": "true"}):
        r = client.simulate_post("/api/jobs", json={"kind": "heartbeat", "unique": rule})
        assert r.status_code == 422, rule
        assert any(f.startswith("unique") for f in r.json["fields"]), r.json
    assert client.simulate_get("/api/jobs").json["jobs"] == []


# ---------------------------------------------------------------- bulk replay and cancel


def test_the_api_replays_all_matching_dead_letters_as_one_act(
    client: falcon.testing.TestClient, store: Store, conn: psycopg.Connection[DictRow]
) -> None:
    ids = discard(store, 5, error="ConnectionError: refused")
    other = discard(store, 2, error="KeyError: 'vat'")
    dry = client.simulate_post("/api/jobs/replay", json={"error_like": "connectionerror", "reason": "r",
                                                         "dry_run": True})  # fmt: skip
    assert (dry.status_code, dry.json["count"], dry.json["dry_run"]) == (200, 5, True)
    r = client.simulate_post("/api/jobs/replay", json={"error_like": "ConnectionError", "reason": "upstream back",
                                                       "by": "ana"})  # fmt: skip
    assert r.status_code == 200 and r.json["done"] == ids and r.json["refused"] == [] and r.json["count"] == 5
    [event] = [e for e in store.events_for_job(ids[0]) if e.type == "replayed"]
    assert event.data == {"by": "ana", "reason": "upstream back", "batch": r.json["batch"]}
    assert event.metadata == {"via": "api", "batch": r.json["batch"]}
    assert {store.job(i).state for i in other} == {"discarded"}  # type: ignore[union-attr]
    cancelled = client.simulate_post("/api/jobs/cancel", json={"kind": "heartbeat", "reason": "stop"})
    assert cancelled.status_code == 200 and cancelled.json["done"] == ids


def test_a_bulk_act_without_a_filter_or_a_reason_is_422_naming_the_field(client: falcon.testing.TestClient) -> None:
    for body, field in [({"reason": "r"}, "kind"), ({"kind": "k"}, "reason"), ({"kind": "k", "reason": "  "}, "reason"),
                        ({"kind": "k", "reason": "r", "since": "yesterday"}, "since"),
                        ({"kind": "k", "reason": "r", "surprise": 1}, "surprise")]:  # fmt: skip
        r = client.simulate_post("/api/jobs/replay", json=body)
        assert r.status_code == 422 and r.json["fields"] == [field], (body, r.json)


# ---------------------------------------------------------------- queues and limits (issue 16)


def test_queues_are_listed_paused_and_resumed_through_the_api(client: falcon.testing.TestClient, store: Store) -> None:
    store.enqueue_many([("heartbeat", {}, "mail", 5, 1, None)] * 2)
    paused = client.simulate_post("/api/queues/mail/pause", json={"reason": "smtp down", "by": "ana"})
    assert paused.status_code == 200 and paused.json["queue"]["paused"] is True
    [mail] = client.simulate_get("/api/queues").json["queues"]
    assert (mail["queue"], mail["counts"], mail["paused"], mail["changed_by"], mail["reason"]) == (
        "mail", {"available": 2}, True, "ana", "smtp down")  # fmt: skip
    assert client.simulate_post("/api/queues/mail/resume", json={}).json["queue"]["paused"] is False
    again = client.simulate_post("/api/queues/mail/resume")
    assert again.status_code == 409 and "not paused" in again.json["description"]
    bad = client.simulate_post("/api/queues/no%20spaces/pause")
    assert (bad.status_code, bad.json["fields"]) == (422, ["queue"])


def test_limits_are_set_listed_and_cleared_through_the_api(client: falcon.testing.TestClient, store: Store) -> None:
    put = client.simulate_put("/api/limits/kind:export", json={"concurrency": 2, "rate": 60, "per": 60,
                                                               "key": "customer.id"})  # fmt: skip
    assert put.status_code == 200
    assert {k: v for k, v in put.json["limit"].items() if k != "updated_at"} == {
        "scope": "kind:export", "concurrency": 2, "rate": 60, "per": 60.0, "key": "customer.id"}  # fmt: skip
    assert [row.scope for row in store.limits()] == ["kind:export"]
    assert [lim["scope"] for lim in client.simulate_get("/api/limits").json["limits"]] == ["kind:export"]
    assert client.simulate_get("/api/queues").json["queues"] == []
    client.simulate_put("/api/limits/queue:mail", json={"concurrency": 1})
    [mail] = client.simulate_get("/api/queues").json["queues"]
    assert mail["limit"]["concurrency"] == 1
    assert client.simulate_delete("/api/limits/kind:export").status_code == 204
    gone = client.simulate_delete("/api/limits/kind:export")
    assert gone.status_code == 404 and gone.json["description"] == "no limit is declared on kind:export"
    for scope, body, field in [("bogus", {"concurrency": 1}, "scope"), ("kind:x", {}, "concurrency"),
                               ("kind:x", {"rate": 5}, "per"), ("kind:x", {"concurrency": 0}, "concurrency"),
                               ("kind:x", {"concurrency": "2"}, "concurrency")]:  # fmt: skip
        r = client.simulate_put(f"/api/limits/{scope}", json=body)
        assert r.status_code == 422 and r.json["fields"] == [field], (scope, body, r.json)


# ---------------------------------------------------------------- schedules


def declare(store: Store, name: str = "nightly") -> None:
    store.schedule_declare(name, "0 3 * * *", "Europe/Paris", "heartbeat", {}, queue="default", priority=5,
                           max_attempts=1, missed="skip", grace=timedelta(minutes=1))  # fmt: skip


def test_schedules_are_listed_with_their_next_run_and_paused_through_the_api(
    client: falcon.testing.TestClient, store: Store
) -> None:
    declare(store)
    [view] = client.simulate_get("/api/schedules").json["schedules"]
    assert view["schedule"]["name"] == "nightly" and view["next_run_is"] == "next" and view["next_run"]
    paused = client.simulate_post("/api/schedules/nightly/pause", json={"reason": "audit", "by": "ana"})
    assert paused.status_code == 200 and paused.json["schedule"]["changed_by"] == "ana"
    assert client.simulate_get("/api/schedules").json["schedules"][0]["next_run_is"] == "paused"
    assert client.simulate_post("/api/schedules/nightly/resume").status_code == 200
    assert client.simulate_post("/api/schedules/nightly/resume").status_code == 409
    missing = client.simulate_post("/api/schedules/nope/pause")
    assert missing.status_code == 404 and "schedule 'nope' not found" in missing.json["description"]


# ---------------------------------------------------------------- throughput


def test_throughput_counts_outcomes_per_minute_and_kind(client: falcon.testing.TestClient, store: Store) -> None:
    discard(store, 2)
    [ok] = store.enqueue_many([("heartbeat", {}, "default", 5, 1, None)])
    store.claim("default", 1, "w")
    store.succeed(ok)
    store.conn.execute("SELECT ledger.throughput_refresh('0 seconds')")
    r = client.simulate_get("/api/throughput", params={"hours": "1"})
    assert r.status_code == 200
    assert [(m["kind"], m["succeeded"], m["failed"], m["discarded"]) for m in r.json["minutes"]] in (
        [("heartbeat", 1, 0, 2)],
        [("heartbeat", 0, 0, 2), ("heartbeat", 1, 0, 0)],  # the minute turned between the two
    )
    assert client.simulate_get("/api/throughput", params={"hours": "500"}).json["fields"] == ["hours"]


def test_the_rollup_folds_each_event_once_across_calls(store: Store, conn: psycopg.Connection[DictRow]) -> None:
    discard(store, 3)
    assert conn.execute("SELECT ledger.throughput_refresh('0 seconds', 4) AS n").fetchone() == {"n": 4}
    conn.execute("SELECT ledger.throughput_refresh('0 seconds')")
    discard(store, 1)
    conn.execute("SELECT ledger.throughput_refresh('0 seconds')")
    assert conn.execute("SELECT sum(discarded) AS n FROM ledger.throughput").fetchone() == {"n": 4}


# ---------------------------------------------------------------- the dashboard


def _csrf(client: falcon.testing.TestClient, path: str) -> str:
    value: str = client.simulate_get(path).cookies["ledger_csrf"].value
    return value


def post_form(client: falcon.testing.TestClient, path: str, csrf: str, **fields: str) -> Any:
    return client.simulate_post(path, body=urlencode({"csrf": csrf, **fields}), headers=FORM,
                                cookies={"ledger_csrf": csrf})  # fmt: skip


def test_the_jobs_and_failed_pages_search_args_and_errors(client: falcon.testing.TestClient, store: Store) -> None:
    acme = store.enqueue_many([("heartbeat", {"customer": "acme-42"}, "web", 5, 1, None)])[0]
    store.enqueue_many([("heartbeat", {"customer": "globex"}, "web", 5, 1, None)])
    page = client.simulate_get("/jobs", params={"search": "ACME-42"}).text
    assert f'id="job-{acme}"' in page and "globex" not in page
    dead = discarded_job(store, error="VatError: no rate for acme")
    failed = client.simulate_get("/failed", params={"search": "vaterror"}).text
    assert f'id="job-{dead}"' in failed and "1</b> dead letter(s) match this filter" in failed
    assert "error=" in client.simulate_get("/failed", params={"since": "someday"}).headers["location"]


def test_the_failed_page_replays_all_matching_with_csrf_and_says_how_many(
    client: falcon.testing.TestClient, store: Store
) -> None:
    ids = discard(store, 4, error="Timeout")
    keep = discard(store, 1, error="KeyError")
    csrf = _csrf(client, "/failed")
    forged = client.simulate_post("/failed/replay", body=urlencode({"csrf": "x" * 32, "error_like": "timeout",
                                                                    "reason": "r"}), headers=FORM,
                                  cookies={"ledger_csrf": csrf})  # fmt: skip
    assert forged.status_code == 403
    preview = post_form(client, "/failed/replay", csrf, error_like="timeout", reason="r", dry_run="1",
                        next="/failed?error_like=timeout")  # fmt: skip
    assert notice(preview)["notice"] == ["would replay 4 job(s); nothing changed (preview)"]
    done = post_form(client, "/failed/replay", csrf, error_like="timeout", reason="network fixed",
                     next="/failed?error_like=timeout")  # fmt: skip
    assert done.headers["location"].startswith("/failed?error_like=timeout&notice=replayed+4+job")
    assert {store.job(i).state for i in ids} == {"available"}  # type: ignore[union-attr]
    assert store.job(keep[0]).state == "discarded"  # type: ignore[union-attr]
    [event] = [e for e in store.events_for_job(ids[0]) if e.type == "replayed"]
    assert (event.data["by"], event.data["reason"], event.metadata["via"]) == (
        "dashboard",
        "network fixed",
        "dashboard",
    )
    assert notice(post_form(client, "/failed/replay", csrf, reason="r"))["error"][0].startswith("choose a filter")
    assert notice(post_form(client, "/failed/replay", csrf, kind="heartbeat"))["error"][0].startswith("reason:")


def test_the_queues_page_pauses_and_resumes_with_csrf(client: falcon.testing.TestClient, store: Store) -> None:
    store.enqueue_many([("heartbeat", {}, "mail", 5, 1, None)])
    page = client.simulate_get("/queues")
    assert 'id="queue-mail"' in page.text and "Pause" in page.text
    csrf = page.cookies["ledger_csrf"].value
    assert client.simulate_post("/queues/mail/pause", body=urlencode({"csrf": "y" * 32}), headers=FORM,
                                cookies={"ledger_csrf": csrf}).status_code == 403  # fmt: skip
    r = post_form(client, "/queues/mail/pause", csrf, reason="smtp down")
    assert notice(r)["notice"] == ["queue mail paused"]
    [state] = store.queue_states()
    assert (state.paused, state.changed_by, state.reason) == (True, "dashboard", "smtp down")
    assert "smtp down" in client.simulate_get("/queues").text
    assert notice(post_form(client, "/queues/mail/resume", csrf))["notice"] == ["queue mail resumed"]
    assert "not paused" in notice(post_form(client, "/queues/mail/resume", csrf))["error"][0]


def test_the_queues_page_sets_and_clears_limits_and_refuses_a_bad_one_naming_the_field(
    client: falcon.testing.TestClient, store: Store
) -> None:
    csrf = client.simulate_get("/queues").cookies["ledger_csrf"].value
    r = post_form(client, "/limits", csrf, scope="kind:heartbeat", concurrency="2", rate="60/1m", key="customer_id")
    assert notice(r)["notice"] == ["limit kind:heartbeat set; it applies to jobs enqueued from now on"]
    [row] = store.limits()
    assert (row.scope, row.concurrency, row.rate, row.per, row.key_path) == (
        "kind:heartbeat", 2, 60, timedelta(minutes=1), ["customer_id"])  # fmt: skip
    assert 'id="limit-kind:heartbeat"' in client.simulate_get("/queues").text
    for form, error in [
        ({"scope": "kind:heartbeat", "rate": "sixty"}, "rate 'sixty': write starts per period, e.g. 60/1m"),
        ({"scope": "kind:heartbeat", "concurrency": "-1"}, "concurrency '-1': write a whole number of at least 1"),
        ({"scope": "kind:heartbeat", "concurrency": "²"}, "concurrency '²': write a whole number of at least 1"),
        ({"scope": "kind:heartbeat"}, "concurrency: a limit needs a concurrency, a rate, or both"),
        ({"scope": "nowhere", "concurrency": "1"}, "scope 'nowhere': must be kind:<kind> or queue:<queue>"),
    ]:
        assert notice(post_form(client, "/limits", csrf, **form))["error"] == [error], form
    assert store.limits() == [row], "a refused form changes nothing"
    assert notice(post_form(client, "/limits/kind:heartbeat/clear", csrf))["notice"] == ["limit kind:heartbeat cleared"]
    assert store.limits() == []
    assert notice(post_form(client, "/limits/kind:heartbeat/clear", csrf))["error"] == ["no limit on kind:heartbeat"]


def test_the_schedules_page_shows_the_next_run_and_pauses(client: falcon.testing.TestClient, store: Store) -> None:
    declare(store)
    page = client.simulate_get("/schedules")
    assert 'id="schedule-nightly"' in page.text and "03:00:00 CE" in page.text, "the next run in its own zone"
    csrf = page.cookies["ledger_csrf"].value
    assert notice(post_form(client, "/schedules/nightly/pause", csrf, reason="audit"))["notice"] == [
        "schedule nightly paused"]  # fmt: skip
    shown = client.simulate_get("/schedules").text
    assert "paused</span>" in shown and "audit" in shown and "Resume" in shown


def test_the_activity_page_and_the_overview_draw_the_outcomes(
    client: falcon.testing.TestClient, store: Store, pool: ConnectionPool[Any]
) -> None:
    discard(store, 2)
    store.conn.execute("SELECT ledger.throughput_refresh('0 seconds')")
    page = client.simulate_get("/activity", params={"hours": "1"}).text
    assert page.count("<svg") == 2, "all kinds, then heartbeat"
    assert 'class="bar discarded"' in page and "2 discarded" in page and "<script" not in page
    assert 'class="bar discarded"' in client.simulate_get("/").text
    assert "error=" in client.simulate_get("/activity", params={"hours": "99"}).headers["location"]
