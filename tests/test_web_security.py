"""The locked-down web surface: who may read and write what, sessions, the sign-in throttle,
redirects, cross-origin writes, and hostile form bodies. falcon's TestClient against a real database,
and two gunicorn servers over HTTP where the processes matter."""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterator
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

import falcon
import falcon.inspect
import falcon.testing
import psycopg
import pytest
from psycopg.rows import DictRow, dict_row
from psycopg_pool import ConnectionPool

from ledger.kinds import builtin_registry
from ledger.settings import Settings
from ledger.store import Store
from ledger.web.app import create_app
from ledger.web.settings import WebSettings

from .servers import Gunicorn, http

TOKEN = "s3cret-token"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
FORM = {"content-type": "application/x-www-form-urlencoded"}


@pytest.fixture
def pool(db_url: str) -> Iterator[ConnectionPool[Any]]:
    with ConnectionPool(db_url, min_size=1, max_size=4, kwargs={"autocommit": True, "row_factory": dict_row}) as p:
        yield p


def client_for(pool: ConnectionPool[Any], token: str | None = TOKEN, **web: Any) -> falcon.testing.TestClient:
    settings = Settings(database_url="postgresql://unused")
    app = create_app(settings, WebSettings(api_token=token, **web), pool=pool, registry=builtin_registry())
    return falcon.testing.TestClient(app)


def csrf_of(c: falcon.testing.TestClient) -> str:
    return str(c.simulate_get("/login").cookies["ledger_csrf"].value)


def sign_in(c: falcon.testing.TestClient, token: str = TOKEN, **kwargs: Any) -> falcon.testing.Result:
    csrf = csrf_of(c)
    body = urlencode({"token": token, "csrf": csrf, "next": "/failed"})
    return c.simulate_post("/login", body=body, headers=FORM, cookies={"ledger_csrf": csrf}, **kwargs)


def session_of(c: falcon.testing.TestClient) -> str:
    signed = sign_in(c)
    assert signed.status_code == 303, signed.text
    return str(signed.cookies["ledger_session"].value)


def discarded_job(store: Store) -> int:
    job = store.enqueue_many([("heartbeat", {}, "default", 5, 1, None)])[0]
    store.claim("default", 1, "w")
    store.fail(job, "boom")
    return job


def served_gets(app: Any) -> list[tuple[str, str]]:
    """(path with ids filled in, route) of every GET the app serves, but the sign-in and static files."""
    out = []
    for route in falcon.inspect.inspect_routes(app):
        if "GET" in {m.method for m in route.methods if not m.internal} and route.path != "/login":
            out.append((re.sub(r"\{\w+(:[^}]*)?\}", "1", route.path), route.path))
    return out


# ---------------------------------------------------------------- who may read


def test_with_a_token_set_every_page_and_api_read_needs_it(pool: ConnectionPool[Any], store: Store) -> None:
    discarded_job(store)
    # One wrong token per API read below: more reads than the throttle's default allows (its own tests are below).
    c = client_for(pool, auth_max_failures=1000)
    gets = served_gets(c.app)
    assert {"/", "/jobs", "/failed", "/jobs/1", "/api/jobs", "/api/jobs/1", "/api/counts", "/openapi.json",
            "/healthz", "/metrics", "/debug/enqueue-test"} <= {p for p, _ in gets}  # fmt: skip
    session = session_of(c)
    for path, _ in gets:
        anonymous = c.simulate_get(path)
        if path.startswith(("/api", "/openapi", "/healthz", "/metrics", "/debug")):
            assert anonymous.status_code == 401, path
            assert anonymous.headers["www-authenticate"] == "Bearer", path
            assert anonymous.json == {"title": "authentication required", "description": anonymous.json["description"]}
            assert c.simulate_get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401, path
            assert c.simulate_get(path, headers=BEARER).status_code == 200, path
        else:
            assert anonymous.status_code == 303, path
            assert anonymous.headers["location"] == f"/login?next={falcon.uri.encode_value(path)}", path
            assert c.simulate_get(path, cookies={"ledger_session": session}).status_code == 200, path
    # A session is for the dashboard; the API takes only the bearer token (no cookie-authenticated writes).
    assert c.simulate_get("/api/jobs", cookies={"ledger_session": session}).status_code == 401


def test_healthz_and_metrics_are_public_only_when_switched_on(pool: ConnectionPool[Any]) -> None:
    closed, opened = client_for(pool), client_for(pool, public_ops=True)
    for path in ("/healthz", "/metrics"):
        assert closed.simulate_get(path).status_code == 401, path
        assert opened.simulate_get(path).status_code == 200, path
    # The switch opens those two and nothing else.
    assert opened.simulate_get("/api/counts").status_code == 401
    assert opened.simulate_get("/").status_code == 303


def test_without_a_token_development_stays_open(pool: ConnectionPool[Any]) -> None:
    c = client_for(pool, None)
    for path, _ in served_gets(c.app):
        assert c.simulate_get(path).status_code in (200, 404), path
    assert c.simulate_get("/login", params={"next": "/jobs"}).headers["location"] == "/jobs"


def test_the_api_token_must_come_as_a_bearer_credential(pool: ConnectionPool[Any], store: Store) -> None:
    c = client_for(pool)
    job = {"kind": "heartbeat"}
    for header in (TOKEN, f"Token {TOKEN}", f"Basic {TOKEN}", f"Bearer{TOKEN}", "Bearer", f"{TOKEN} Bearer"):
        r = c.simulate_post("/api/jobs", json=job, headers={"Authorization": header})
        assert r.status_code == 401, header
        assert "Bearer" in r.json["description"]
    assert store.job_counts() == []
    for header in (f"Bearer {TOKEN}", f"bearer {TOKEN}", f"BEARER  {TOKEN} "):
        assert c.simulate_post("/api/jobs", json=job, headers={"Authorization": header}).status_code == 201, header


# ---------------------------------------------------------------- sessions


def test_a_session_is_random_kept_only_as_a_hash_and_reveals_nothing_about_the_token(
    pool: ConnectionPool[Any], conn: psycopg.Connection[DictRow]
) -> None:
    c = client_for(pool)
    first, second = session_of(c), session_of(c)
    assert first != second and len(first) == len(second) == 43  # secrets.token_urlsafe(32)
    assert TOKEN not in first and TOKEN.encode().hex() not in first
    rows = conn.execute("SELECT id_hash FROM ledger.web_sessions ORDER BY started_at").fetchall()
    stored = {bytes(r["id_hash"]) for r in rows}
    assert stored == {hashlib.sha256(s.encode()).digest() for s in (first, second)}
    assert not any(s.encode() in h for s in (first, second) for h in stored)
    # The old cookie, a fixed MAC of the token, opens nothing any more.
    fixed = hmac.new(TOKEN.encode(), b"ledger-dashboard-session", hashlib.sha256).hexdigest()
    assert c.simulate_get("/failed", cookies={"ledger_session": fixed}).status_code == 303
    assert c.simulate_get("/failed", cookies={"ledger_session": first}).status_code == 200


def test_a_session_expires_after_its_ttl(pool: ConnectionPool[Any], conn: psycopg.Connection[DictRow]) -> None:
    c = client_for(pool, session_ttl="90m")
    signed = sign_in(c)
    cookie = signed.cookies["ledger_session"]
    assert cookie.max_age == 90 * 60 and cookie.http_only and cookie.same_site == "Strict"
    row = conn.execute("SELECT expires_at - started_at AS ttl FROM ledger.web_sessions").fetchone()
    assert row == {"ttl": timedelta(minutes=90)}
    assert c.simulate_get("/", cookies={"ledger_session": cookie.value}).status_code == 200
    # Time passes (on the database's clock, which decides): the same cookie opens nothing.
    conn.execute("UPDATE ledger.web_sessions SET expires_at = now() - interval '1 second'")
    expired = c.simulate_get("/", cookies={"ledger_session": cookie.value})
    assert expired.status_code == 303 and expired.headers["location"].startswith("/login")


def test_the_session_ttl_defaults_to_eight_hours_and_reads_durations() -> None:
    assert WebSettings().session_ttl == timedelta(hours=8)
    assert WebSettings(session_ttl="30m").session_ttl == timedelta(minutes=30)
    assert WebSettings(session_ttl=600).session_ttl == timedelta(minutes=10)
    with pytest.raises(ValueError, match="longer than zero"):
        WebSettings(session_ttl="0s")


def test_sign_out_ends_the_session_even_for_a_copied_cookie(
    pool: ConnectionPool[Any], conn: psycopg.Connection[DictRow]
) -> None:
    c = client_for(pool)
    session = session_of(c)
    page = c.simulate_get("/failed", cookies={"ledger_session": session})
    assert 'action="/logout"' in page.text and "Sign out" in page.text
    csrf = page.cookies.get("ledger_csrf")
    csrf_value = csrf.value if csrf else csrf_of(c)
    cookies = {"ledger_session": session, "ledger_csrf": csrf_value}
    forged = c.simulate_post("/logout", body=urlencode({"csrf": "x" * 32}), headers=FORM, cookies=cookies)
    assert forged.status_code == 403
    assert c.simulate_get("/failed", cookies={"ledger_session": session}).status_code == 200
    out = c.simulate_post("/logout", body=urlencode({"csrf": csrf_value}), headers=FORM, cookies=cookies)
    assert out.status_code == 303 and out.headers["location"] == "/login?notice=signed+out"
    assert out.cookies["ledger_session"].value == "" and out.cookies["ledger_session"].max_age in (None, 0)
    assert conn.execute("SELECT count(*) AS n FROM ledger.web_sessions").fetchone() == {"n": 0}
    again = c.simulate_get("/failed", cookies={"ledger_session": session})
    assert again.status_code == 303 and again.headers["location"].startswith("/login")


# ---------------------------------------------------------------- the sign-in


EVIL_NEXT = [
    "/\\evil.example",
    "/%5cevil.example",
    "/%5Cevil.example",
    "//evil.example",
    "/%2Fevil.example",
    "/\t/evil.example",
    "/\n/evil.example",
    "/\r\nSet-Cookie: x=1",
    "https://evil.example/",
    "javascript:alert(1)",
    "evil.example",
    "\\\\evil.example",
    " /\\evil.example",
    "/jobs/\u00e9",
    "",
]


@pytest.mark.parametrize("target", EVIL_NEXT)
def test_the_sign_in_next_accepts_only_local_paths(pool: ConnectionPool[Any], target: str) -> None:
    c = client_for(pool)
    shown = c.simulate_get("/login", params={"next": target})
    assert shown.status_code == 200 and 'name="next" value="/"' in shown.text
    csrf = csrf_of(c)
    body = urlencode({"token": TOKEN, "csrf": csrf, "next": target})
    signed = c.simulate_post("/login", body=body, headers=FORM, cookies={"ledger_csrf": csrf})
    assert signed.status_code == 303 and signed.headers["location"] == "/"


def test_the_sign_in_and_dashboard_forms_keep_a_local_next(pool: ConnectionPool[Any], store: Store) -> None:
    c = client_for(pool)
    csrf = csrf_of(c)
    body = urlencode({"token": TOKEN, "csrf": csrf, "next": "/jobs?state=discarded&queue=a%20b"})
    signed = c.simulate_post("/login", body=body, headers=FORM, cookies={"ledger_csrf": csrf})
    assert signed.headers["location"] == "/jobs?state=discarded&queue=a%20b"
    job = discarded_job(store)
    cookies = {"ledger_csrf": csrf, "ledger_session": signed.cookies["ledger_session"].value}
    for target in EVIL_NEXT:
        r = c.simulate_post(f"/jobs/{job}/cancel", body=urlencode({"csrf": csrf, "next": target}), headers=FORM,
                            cookies=cookies)  # fmt: skip
        assert r.headers["location"].startswith(f"/jobs/{job}?"), target


def test_sign_in_is_throttled_per_client_address(pool: ConnectionPool[Any]) -> None:
    c = client_for(pool, auth_max_failures=3, auth_window="15m")
    attacker, operator = "203.0.113.9", "198.51.100.7"
    for _ in range(3):
        assert sign_in(c, "guess", remote_addr=attacker).status_code == 401
    blocked = sign_in(c, "guess", remote_addr=attacker)
    assert blocked.status_code == 429 and "Too many wrong tokens" in blocked.text
    assert 0 < int(blocked.headers["retry-after"]) <= 15 * 60
    # Past the limit no token is compared, the right one included...
    assert sign_in(c, TOKEN, remote_addr=attacker).status_code == 429
    # ...and the bearer header is the same door: it counts and is blocked alike.
    api = c.simulate_get("/api/counts", headers=BEARER, remote_addr=attacker)
    assert api.status_code == 429 and api.json["title"] == "too many wrong tokens"
    # Another address is not held back by the first one's failures.
    assert sign_in(c, TOKEN, remote_addr=operator).status_code == 303


def test_wrong_bearer_tokens_count_toward_the_same_limit(pool: ConnectionPool[Any]) -> None:
    c = client_for(pool, auth_max_failures=2)
    wrong = {"Authorization": "Bearer nope"}
    assert [c.simulate_get("/api/counts", headers=wrong).status_code for _ in range(3)] == [401, 401, 429]
    assert c.simulate_get("/api/counts", headers=BEARER).status_code == 429
    assert sign_in(c).status_code == 429
    # No credentials at all is not a guess: it neither counts nor is told to wait.
    assert c.simulate_get("/api/counts", remote_addr="192.0.2.1").status_code == 401


def test_the_throttle_treats_an_ipv6_64_as_one_client(pool: ConnectionPool[Any]) -> None:
    c = client_for(pool, auth_max_failures=2)
    for host in ("2001:db8:1:2::1", "2001:db8:1:2::2"):
        assert sign_in(c, "guess", remote_addr=host).status_code == 401
    assert sign_in(c, TOKEN, remote_addr="2001:db8:1:2:ffff::9").status_code == 429
    assert sign_in(c, TOKEN, remote_addr="2001:db8:1:3::1").status_code == 303


def test_a_right_sign_in_forgets_the_clients_earlier_failures(pool: ConnectionPool[Any]) -> None:
    c = client_for(pool, auth_max_failures=3)
    for _ in range(2):
        assert sign_in(c, "typo").status_code == 401
    assert sign_in(c).status_code == 303
    assert [sign_in(c, "typo").status_code for _ in range(4)] == [401, 401, 401, 429]


def test_the_throttle_is_shared_by_every_web_process(db_url: str) -> None:
    env = {"LEDGER_API_TOKEN": TOKEN, "LEDGER_AUTH_MAX_FAILURES": "4"}
    one, two = Gunicorn(db_url, env), Gunicorn(db_url, env)
    try:

        def attempt(server: Gunicorn, token: str) -> int:
            status, headers, _ = http(f"{server.base}/login")
            csrf = re.search(r"ledger_csrf=(\w+)", headers["set-cookie"])
            assert status == 200 and csrf, headers
            body = urlencode({"token": token, "csrf": csrf.group(1), "next": "/"}).encode()
            status, _, _ = http(f"{server.base}/login", data=body,
                                headers={**FORM, "Cookie": f"ledger_csrf={csrf.group(1)}"})  # fmt: skip
            return status

        # Two failures in each process: four in all, the limit, though neither process saw four.
        assert [attempt(one, "guess"), attempt(two, "guess"), attempt(one, "guess"), attempt(two, "guess")] == [401] * 4
        assert attempt(one, TOKEN) == 429
        assert attempt(two, TOKEN) == 429
        assert http(f"{two.base}/api/counts", headers=BEARER)[0] == 429
    finally:
        one.stop()
        two.stop()


# ---------------------------------------------------------------- hostile bodies and ids


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        ({"content-type": "application/json"}, '{"token": "s3cret-token", "csrf": "x"}'),
        ({"content-type": "application/json"}, "[1, 2]"),
        ({"content-type": "multipart/form-data; boundary=b"},
         '--b\r\nContent-Disposition: form-data; name="token"\r\n\r\nx\r\n--b--\r\n'),
        ({"content-type": "text/plain"}, "token=s3cret-token"),
    ],
    ids=["json-object", "json-list", "multipart", "text"],
)  # fmt: skip
@pytest.mark.parametrize("token", [TOKEN, None], ids=["token", "no-token"])
def test_sign_in_with_a_body_that_is_not_a_form_is_415(
    pool: ConnectionPool[Any], headers: dict[str, str], body: str, token: str | None
) -> None:
    c = client_for(pool, token)
    for path in ("/login", "/logout"):
        r = c.simulate_post(path, body=body, headers=headers)
        assert r.status_code == 415, (path, r.text)
        assert r.json["title"] == "not a form" and "application/x-www-form-urlencoded" in r.json["description"]


def test_a_form_field_sent_twice_is_refused_naming_it(pool: ConnectionPool[Any]) -> None:
    c = client_for(pool)
    csrf = csrf_of(c)
    body = urlencode([("token", TOKEN), ("token", "other"), ("csrf", csrf)])
    r = c.simulate_post("/login", body=body, headers=FORM, cookies={"ledger_csrf": csrf})
    assert r.status_code == 422 and r.json["fields"] == ["token"]


BEYOND_BIGINT = "9223372036854775808"


def test_dashboard_ids_beyond_bigint_are_404_not_500(pool: ConnectionPool[Any]) -> None:
    c = client_for(pool, None)
    csrf = c.simulate_get("/").cookies["ledger_csrf"].value
    assert c.simulate_get(f"/jobs/{BEYOND_BIGINT}").status_code == 404
    for action in ("replay", "cancel"):
        r = c.simulate_post(f"/jobs/{BEYOND_BIGINT}/{action}", body=urlencode({"csrf": csrf, "reason": "x"}),
                            headers=FORM, cookies={"ledger_csrf": csrf})  # fmt: skip
        assert r.status_code == 404, (action, r.text)
    assert c.simulate_get("/jobs/0").status_code == 404


@pytest.mark.parametrize(("reason", "problem"), [("a\x00b", "reason"), ("r" * 1001, "reason")])
def test_a_bad_reason_in_a_dashboard_form_redirects_with_a_notice_and_changes_nothing(
    pool: ConnectionPool[Any], store: Store, reason: str, problem: str
) -> None:
    c = client_for(pool, None)
    job = discarded_job(store)
    csrf = c.simulate_get("/").cookies["ledger_csrf"].value
    for action in ("replay", "cancel"):
        r = c.simulate_post(f"/jobs/{job}/{action}", body=urlencode({"csrf": csrf, "reason": reason}), headers=FORM,
                            cookies={"ledger_csrf": csrf})  # fmt: skip
        assert r.status_code == 303, r.text
        assert r.headers["location"].startswith(f"/jobs/{job}?error=") and problem in r.headers["location"]
    assert store.job(job).state == "discarded"  # type: ignore[union-attr]
    assert len(store.events_for_job(job)) == 3


# ---------------------------------------------------------------- cross-origin writes


def test_a_cross_site_form_post_to_the_api_is_refused(pool: ConnectionPool[Any], store: Store) -> None:
    c = client_for(pool, None)  # development: no token to stop it
    form = urlencode({"kind": "heartbeat"})
    for headers in (
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Origin": "http://falconframework.org.evil.example"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
    ):
        r = c.simulate_post("/api/jobs", body=form, headers={**FORM, **headers})
        assert r.status_code == 403 and r.json["title"] == "cross-origin request refused", headers
        j = c.simulate_post("/api/jobs", json={"kind": "heartbeat"}, headers=headers)
        assert j.status_code == 403, headers
    assert store.job_counts() == []
    # The API takes JSON only: a form body (what a cross-site page can send without asking) is 415 anyway.
    assert c.simulate_post("/api/jobs", body=form, headers=FORM).status_code == 415
    # A client that sends no Origin (curl, a script) works, and so does the site's own page.
    assert c.simulate_post("/api/jobs", json={"kind": "heartbeat"}).status_code == 201
    own = {"Origin": "http://falconframework.org", "Sec-Fetch-Site": "same-origin"}
    assert c.simulate_post("/api/jobs", json={"kind": "heartbeat"}, headers=own).status_code == 201
    assert sum(n.count for n in store.job_counts()) == 2


def test_cross_site_dashboard_and_sign_in_posts_are_refused_even_with_the_csrf_token(
    pool: ConnectionPool[Any], store: Store
) -> None:
    c = client_for(pool)
    job = discarded_job(store)
    csrf = csrf_of(c)
    session = session_of(c)
    evil = {**FORM, "Origin": "https://evil.example"}
    cookies = {"ledger_csrf": csrf, "ledger_session": session}
    replay = c.simulate_post(f"/jobs/{job}/replay", body=urlencode({"csrf": csrf}), headers=evil, cookies=cookies)
    assert replay.status_code == 403
    login = c.simulate_post("/login", body=urlencode({"token": TOKEN, "csrf": csrf}), headers=evil,
                            cookies={"ledger_csrf": csrf})  # fmt: skip
    assert login.status_code == 403 and "ledger_session" not in login.cookies
    assert c.simulate_post("/logout", body=urlencode({"csrf": csrf}), headers=evil, cookies=cookies).status_code == 403
    assert store.job(job).state == "discarded"  # type: ignore[union-attr]
    own = {**FORM, "Origin": "http://falconframework.org"}
    done = c.simulate_post(f"/jobs/{job}/replay", body=urlencode({"csrf": csrf}), headers=own, cookies=cookies)
    assert done.status_code == 303 and "notice=" in done.headers["location"]


# ---------------------------------------------------------------- the tables, new and upgraded


def _web_tables(conn: psycopg.Connection[DictRow]) -> list[Any]:
    columns = conn.execute(
        "SELECT table_name, column_name, data_type, is_nullable, column_default FROM information_schema.columns "
        "WHERE table_schema = 'ledger' AND table_name LIKE 'web\\_%' ORDER BY table_name, ordinal_position"
    ).fetchall()
    indexes = conn.execute(
        "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'ledger' AND tablename LIKE 'web\\_%' "
        "ORDER BY indexname"
    ).fetchall()
    checks = conn.execute(
        "SELECT conrelid::regclass::text AS t, pg_get_constraintdef(oid) AS def FROM pg_constraint "
        "WHERE conrelid::regclass::text LIKE 'ledger.web\\_%' ORDER BY 1, 2"
    ).fetchall()
    return [columns, indexes, checks]


def test_an_upgraded_database_gets_the_same_web_tables_as_a_new_one(
    server_url: str, conn: psycopg.Connection[DictRow]
) -> None:
    from pathlib import Path

    from psycopg.conninfo import make_conninfo

    from ledger.db import connect
    from ledger.migrate import migrate

    name = "ledger_upgrade_web"
    with connect(server_url) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        with connect(make_conninfo(server_url, dbname=name)) as old:
            with old.transaction():
                old.execute((Path(__file__).parent / "data" / "schema_v1.sql").read_text().encode())
                old.execute("INSERT INTO ledger.schema_version (version) VALUES (1)")
            migrate(old)
            assert _web_tables(old) == _web_tables(conn) and _web_tables(conn)[0]
            upgraded = Store(old)
            upgraded.web_session_start(hashlib.sha256(b"x").digest(), timedelta(hours=1))
            assert upgraded.web_session_check(hashlib.sha256(b"x").digest()) is not None
            assert upgraded.web_auth_fail("192.0.2.1", 1, timedelta(minutes=1)) is not None
    finally:
        with connect(server_url) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_closed_windows_and_expired_sessions_are_swept_as_new_ones_come(
    store: Store, conn: psycopg.Connection[DictRow]
) -> None:
    minute = timedelta(minutes=1)
    for client in ("192.0.2.1", "192.0.2.2"):
        assert store.web_auth_fail(client, 5, minute) is None
    store.web_session_start(hashlib.sha256(b"old").digest(), minute)
    conn.execute("UPDATE ledger.web_auth_failures SET window_end = now() - interval '1 second'")
    conn.execute("UPDATE ledger.web_sessions SET expires_at = now() - interval '1 second'")
    store.web_auth_fail("192.0.2.3", 5, minute)
    store.web_session_start(hashlib.sha256(b"new").digest(), minute)
    assert conn.execute("SELECT array_agg(client) AS c FROM ledger.web_auth_failures").fetchone() == {
        "c": ["192.0.2.3"]
    }
    assert conn.execute("SELECT count(*) AS n FROM ledger.web_sessions").fetchone() == {"n": 1}
    # A closed window starts afresh for its own client too.
    conn.execute("UPDATE ledger.web_auth_failures SET failures = 5, window_end = now() - interval '1 second'")
    assert store.web_auth_wait("192.0.2.3", 5) is None
    assert store.web_auth_fail("192.0.2.3", 2, minute) is None
