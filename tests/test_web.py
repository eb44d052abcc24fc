"""The web app through its WSGI interface (falcon's TestClient) against a real database."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import falcon
import falcon.inspect
import falcon.testing
import psycopg
import pytest
from psycopg.rows import DictRow, dict_row
from psycopg_pool import ConnectionPool

from ledger.errors import ConfigError
from ledger.kinds import builtin_registry
from ledger.migrate import schema_version
from ledger.settings import Settings
from ledger.store import Store
from ledger.web.app import create_app
from ledger.web.openapi import document
from ledger.web.settings import WebSettings

TOKEN = "s3cret-token"


@pytest.fixture
def pool(db_url: str) -> Iterator[ConnectionPool[Any]]:
    with ConnectionPool(db_url, min_size=1, max_size=4, kwargs={"autocommit": True, "row_factory": dict_row}) as p:
        yield p


def client_for(
    pool: ConnectionPool[Any], token: str | None = None, production: bool = False, **web: Any
) -> falcon.testing.TestClient:
    settings = Settings(database_url="postgresql://unused", env="production" if production else "development")
    app = create_app(settings, WebSettings(api_token=token, **web), pool=pool, registry=builtin_registry())
    return falcon.testing.TestClient(app)


@pytest.fixture
def client(pool: ConnectionPool[Any]) -> falcon.testing.TestClient:
    return client_for(pool)


def discarded_job(store: Store, error: str = "ValueError: boom") -> int:
    job = store.enqueue_many([("heartbeat", {}, "default", 5, 1, None)])[0]
    store.claim("default", 1, "web-test-worker")
    store.fail(
        job,
        error,
        metadata={
            "worker": "web-test-worker",
            "duration_ms": 12.5,
            "traceback": "Traceback (most recent call last):\n  boom",
        },
    )
    return job


# ---------------------------------------------------------------- /debug, /healthz


def test_enqueue_test_answers_with_the_id_of_a_new_heartbeat_job(
    client: falcon.testing.TestClient, store: Store
) -> None:
    r = client.simulate_get("/debug/enqueue-test")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    match = re.fullmatch(r"enqueued heartbeat job id=(\d+)\n", r.text)
    assert match
    job = store.job(int(match.group(1)))
    assert job is not None and job.kind == "heartbeat" and job.state == "available"


def test_enqueue_test_answers_500_naming_the_reason_when_the_database_refuses(
    client: falcon.testing.TestClient, conn: psycopg.Connection[DictRow]
) -> None:
    conn.execute("ALTER FUNCTION ledger.job_enqueue RENAME TO job_enqueue_gone")  # what one job goes to
    r = client.simulate_get("/debug/enqueue-test")
    assert r.status_code == 500
    assert r.text.startswith("enqueue failed: ") and "ledger.job_enqueue(" in r.text


def test_debug_routes_are_404_in_production_unless_switched_on(pool: ConnectionPool[Any]) -> None:
    assert client_for(pool, TOKEN, production=True).simulate_get("/debug/enqueue-test").status_code == 404
    on = client_for(pool, TOKEN, production=True, debug_routes=True)
    assert on.simulate_get("/debug/enqueue-test", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_production_refuses_to_start_without_a_token(pool: ConnectionPool[Any]) -> None:
    with pytest.raises(ConfigError, match="LEDGER_API_TOKEN is required in production"):
        client_for(pool, None, production=True)


def test_healthz_is_200_when_the_database_answers_and_503_when_not(client: falcon.testing.TestClient) -> None:
    ok = client.simulate_get("/healthz")
    assert (ok.status_code, ok.json["status"], ok.json["schema_version"]) == (200, "ok", schema_version())
    with ConnectionPool("postgresql://nobody@127.0.0.1:1/none?connect_timeout=1", min_size=1, open=True) as dead:
        down = client_for(dead).simulate_get("/healthz")
    assert (down.status_code, down.json["database"]) == (503, "down")


# ---------------------------------------------------------------- JSON API


def test_enqueue_through_the_api_returns_201_with_the_id(client: falcon.testing.TestClient, store: Store) -> None:
    r = client.simulate_post("/api/jobs", json={"kind": "heartbeat", "priority": 2})
    assert r.status_code == 201 and r.headers["location"] == f"/api/jobs/{r.json['id']}"
    job = store.job(r.json["id"])
    assert job is not None and job.priority == 2
    assert store.events_for_job(job.id)[0].metadata == {"via": "api"}


@pytest.mark.parametrize(
    ("body", "status", "fields"),
    [
        ({"kind": "nope"}, 422, ["kind"]),
        ({"kind": "heartbeat", "args": {"x": 1}}, 422, ["args.x"]),
        ({"kind": "heartbeat", "priority": 99}, 422, ["priority"]),
        ({"kind": "heartbeat", "surprise": True}, 422, ["surprise"]),
        ({"args": {}}, 422, ["kind"]),
        ([1, 2], 422, ["(body)"]),
    ],
)
def test_enqueue_refuses_invalid_input_naming_the_field(
    client: falcon.testing.TestClient, store: Store, body: Any, status: int, fields: list[str]
) -> None:
    r = client.simulate_post("/api/jobs", json=body)
    assert r.status_code == status, r.text
    assert r.json["fields"] == fields and r.json["description"]
    assert store.job_counts() == []


def test_malformed_json_is_400_and_an_oversized_body_is_413(client: falcon.testing.TestClient, store: Store) -> None:
    bad = client.simulate_post("/api/jobs", body="{nope", headers={"content-type": "application/json"})
    assert bad.status_code == 400 and bad.json["title"] == "Invalid JSON"
    big = json.dumps({"kind": "heartbeat", "args": {"x": "a" * 70_000}})
    huge = client.simulate_post("/api/jobs", body=big, headers={"content-type": "application/json"})
    assert huge.status_code == 413
    assert store.job_counts() == []


def test_list_jobs_filters_and_pages_by_keyset(client: falcon.testing.TestClient, store: Store) -> None:
    ids = store.enqueue_many(
        [("heartbeat", {}, "default", 5, 1, None)] * 5 + [("heartbeat", {}, "other", 5, 1, None)] * 2
    )
    first = client.simulate_get("/api/jobs", params={"queue": "default", "limit": "3"})
    assert [j["id"] for j in first.json["jobs"]] == ids[4:1:-1]
    second = client.simulate_get(
        "/api/jobs", params={"queue": "default", "limit": "3", "before": str(first.json["next_before"])}
    )
    assert [j["id"] for j in second.json["jobs"]] == ids[1::-1] and second.json["next_before"] is None
    assert client.simulate_get("/api/jobs", params={"state": "bogus"}).json["fields"] == ["state"]
    assert client.simulate_get("/api/jobs", params={"limit": "0"}).status_code == 422


def test_one_job_with_its_timeline_and_404_for_a_missing_one(client: falcon.testing.TestClient, store: Store) -> None:
    job = discarded_job(store)
    r = client.simulate_get(f"/api/jobs/{job}")
    assert r.json["job"]["state"] == "discarded"
    assert [e["type"] for e in r.json["events"]] == ["enqueued", "started", "discarded"]
    assert client.simulate_get("/api/jobs/999999").status_code == 404


def test_replay_and_cancel_answer_409_with_the_reason_when_illegal(
    client: falcon.testing.TestClient, store: Store
) -> None:
    job = discarded_job(store)
    ok = client.simulate_post(f"/api/jobs/{job}/replay", json={"reason": "fixed", "by": "ana"})
    assert ok.status_code == 200 and ok.json["job"]["state"] == "available"
    again = client.simulate_post(f"/api/jobs/{job}/replay")
    assert again.status_code == 409
    assert again.json["description"] == f"job {job} is available; only discarded or cancelled jobs can be replayed"
    assert client.simulate_post(f"/api/jobs/{job}/cancel", json={"reason": "no"}).status_code == 200
    assert client.simulate_post(f"/api/jobs/{job}/cancel").status_code == 409
    assert client.simulate_post("/api/jobs/424242/cancel").status_code == 404
    assert client.simulate_post(f"/api/jobs/{job}/replay", json={"reason": 5}).json["fields"] == ["reason"]


def test_counts_by_state_and_queue(client: falcon.testing.TestClient, store: Store) -> None:
    store.enqueue_many([("heartbeat", {}, "a", 5, 1, None)] * 3 + [("heartbeat", {}, "b", 5, 1, None)])
    counts = {(c["state"], c["queue"]): c["count"] for c in client.simulate_get("/api/counts").json["counts"]}
    assert counts == {("available", "a"): 3, ("available", "b"): 1}


def test_the_openapi_document_lists_exactly_the_routes_the_app_serves(client: falcon.testing.TestClient) -> None:
    served: dict[str, set[str]] = {}
    for route in falcon.inspect.inspect_routes(client.app):
        path = re.sub(r"\{(\w+):[^}]*\}", r"{\1}", route.path)
        if path.startswith(("/api", "/healthz", "/debug", "/metrics")):
            served[path] = {m.method.lower() for m in route.methods if m.method not in ("OPTIONS",) and not m.internal}
    doc = client.simulate_get("/openapi.json").json
    assert doc == document(builtin_registry())
    assert [v["properties"]["kind"]["enum"] for v in doc["components"]["schemas"]["JobRequest"]["oneOf"]] == [
        ["heartbeat"],
        ["ledger.prune"],
        ["ledger.rescue"],
    ]
    assert {p: set(ops) for p, ops in doc["paths"].items()} == served


# ---------------------------------------------------------------- /metrics


def test_metrics_expose_counts_events_and_histograms(client: falcon.testing.TestClient, store: Store) -> None:
    job = store.enqueue_many([("heartbeat", {}, "default", 5, 1, None)])[0]
    store.claim("default", 1, "w")
    store.succeed(job, metadata={"duration_ms": 30.0, "wait_ms": 2.0})
    store.enqueue_many([("heartbeat", {}, "default", 5, 1, None)])
    store.conn.execute("SELECT ledger.metrics_refresh('0 seconds')")
    text = client.simulate_get("/metrics").text
    # prometheus_client writes labels in name order (and values as floats: 1.0).
    assert 'ledger_jobs{queue="default",state="available"} 1' in text
    assert "ledger_events_appended_total 4" in text
    assert 'ledger_job_run_seconds_bucket{kind="heartbeat",le="0.05"} 1' in text
    assert 'ledger_job_run_seconds_bucket{kind="heartbeat",le="0.025"} 0' in text
    assert 'ledger_job_wait_seconds_count{kind="heartbeat"} 1' in text
    assert "# TYPE ledger_job_run_seconds histogram" in text


# ---------------------------------------------------------------- security


def test_responses_carry_security_headers(client: falcon.testing.TestClient) -> None:
    r = client.simulate_get("/")
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["x-frame-options"] == "DENY"
    assert "default-src 'self'" in r.headers["content-security-policy"]


FORM = {"content-type": "application/x-www-form-urlencoded"}


@pytest.mark.parametrize(
    ("csrf_field", "csrf_cookie"),
    [
        pytest.param(None, "c" * 32, id="no csrf in the form"),
        pytest.param("x" * 32, "c" * 32, id="a wrong csrf"),
        pytest.param("c" * 32, None, id="no csrf cookie"),
        pytest.param("", "c" * 32, id="an empty csrf"),
        pytest.param(None, None, id="neither csrf nor cookie"),
    ],
)
def test_sign_in_with_the_right_token_but_no_matching_csrf_is_refused(
    pool: ConnectionPool[Any], csrf_field: str | None, csrf_cookie: str | None
) -> None:
    c = client_for(pool, TOKEN)
    form = {"token": TOKEN, "next": "/failed"} | ({} if csrf_field is None else {"csrf": csrf_field})
    cookies = {} if csrf_cookie is None else {"ledger_csrf": csrf_cookie}
    r = c.simulate_post("/login", body=_form(form), cookies=cookies, headers=FORM)
    assert 400 <= r.status_code < 500, r.status_code
    assert "ledger_session" not in r.cookies


def _form(data: dict[str, str]) -> str:
    from urllib.parse import urlencode

    return urlencode(data)


# ---------------------------------------------------------------- dashboard


def test_dashboard_pages_render(client: falcon.testing.TestClient, store: Store) -> None:
    job = discarded_job(store)
    store.enqueue_many([("heartbeat", {}, "default", 5, 1, None)])
    overview = client.simulate_get("/")
    assert overview.status_code == 200 and "Overview" in overview.text and 'http-equiv="refresh"' in overview.text
    failed = client.simulate_get("/failed")
    assert f'href="/jobs/{job}"' in failed.text and "ValueError: boom" in failed.text
    page = client.simulate_get(f"/jobs/{job}")
    assert "attempt 1" in page.text and "web-test-worker" in page.text and "12 ms" in page.text
    assert "Traceback (most recent call last)" in page.text and "Replay" in page.text
    assert client.simulate_get("/jobs", params={"state": "discarded"}).text.count(f"#{job}") == 1
    assert client.simulate_get("/jobs/999999").status_code == 404


SCRIPT = "<script>alert(1)</script>"


@pytest.mark.parametrize("page", ["/jobs/{job}", "/failed", "/", "/jobs"])
def test_an_error_text_is_escaped_on_every_page_that_shows_it(
    client: falcon.testing.TestClient, store: Store, page: str
) -> None:
    job = discarded_job(store, error=SCRIPT)
    html = client.simulate_get(page.format(job=job)).text
    assert f"#{job}" in html or f"job {job}" in html.lower(), "the page shows the job"
    assert SCRIPT not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_a_filter_value_is_escaped_where_the_form_shows_it_again(client: falcon.testing.TestClient) -> None:
    for page in ("/failed", "/jobs"):
        r = client.simulate_get(page, params={"kind": '"><script>alert(1)</script>'})
        assert r.status_code == 200, page
        assert "<script>alert(1)" not in r.text and "&lt;script&gt;alert(1)" in r.text, page


def test_dashboard_replay_needs_the_csrf_token_and_records_who(client: falcon.testing.TestClient, store: Store) -> None:
    job = discarded_job(store)
    page = client.simulate_get(f"/jobs/{job}")
    csrf = page.cookies["ledger_csrf"].value
    forged = client.simulate_post(
        f"/jobs/{job}/replay", body=_form({"csrf": "x" * 32}), headers=FORM, cookies={"ledger_csrf": csrf}
    )
    assert forged.status_code == 403
    done = client.simulate_post(
        f"/jobs/{job}/replay", body=_form({"csrf": csrf, "reason": "try again", "next": "/failed"}), headers=FORM,
        cookies={"ledger_csrf": csrf},
    )  # fmt: skip
    assert done.status_code == 303 and done.headers["location"].startswith("/failed?notice=")
    assert store.job(job).state == "available"  # type: ignore[union-attr]
    assert store.events_for_job(job)[-1].data == {"by": "dashboard", "reason": "try again"}
    refused = client.simulate_post(
        f"/jobs/{job}/replay", body=_form({"csrf": csrf}), headers=FORM, cookies={"ledger_csrf": csrf}
    )
    assert "error=job" in refused.headers["location"]
    evil = client.simulate_post(
        f"/jobs/{job}/cancel",
        body=_form({"csrf": csrf, "next": "//evil.example"}),
        headers=FORM,
        cookies={"ledger_csrf": csrf},
    )
    assert evil.headers["location"].startswith(f"/jobs/{job}?")
