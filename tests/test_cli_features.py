"""The CLI of unique jobs, flow control and waiting, as an operator types it."""

from __future__ import annotations

import json

from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from ledger.store import Store

from .test_cli import ledger
from .test_web import client_for


def test_enqueue_with_a_unique_key_says_when_the_job_is_already_enqueued(db_url: str, store: Store) -> None:
    first = ledger("enqueue", "heartbeat", "--unique-key", "nightly", url=db_url)
    assert first.returncode == 0 and first.stdout.startswith("enqueued heartbeat job id=")
    job = int(first.stdout.split("id=")[1])
    again = ledger("enqueue", "heartbeat", "--unique-key", "nightly", url=db_url)
    assert (again.returncode, again.stdout) == (0, f"job id={job} already enqueued (unique key nightly)\n")
    bad = ledger("enqueue", "heartbeat", "--unique-period", "1h", url=db_url)
    assert bad.returncode == 2 and bad.stderr.strip() == "error: --unique-period needs --unique-key"
    assert len(store.jobs()) == 1


def test_pause_resume_and_the_queue_list(db_url: str, store: Store) -> None:
    store.enqueue_many([("heartbeat", {}, "mail", 5, 1, None)] * 2)
    paused = ledger("queue", "pause", "mail", "--reason", "smtp down", url=db_url, extra_env={"LEDGER_OPERATOR": "ana"})
    assert (paused.returncode, paused.stdout) == (0, "queue mail paused by ana: smtp down\n")
    assert store.claim("mail", 5, "w") == []
    listed = ledger("queues", url=db_url).stdout
    assert listed.startswith("mail: paused by ana at ") and "(smtp down); available=2" in listed
    [row] = json.loads(ledger("queues", "--json", url=db_url).stdout)
    assert (row["queue"], row["paused"], row["jobs"]) == ("mail", True, {"available": 2})
    resumed = ledger("queue", "resume", "mail", url=db_url, extra_env={"LEDGER_OPERATOR": "ana"})
    assert resumed.stdout == "queue mail resumed by ana\n" and len(store.claim("mail", 5, "w")) == 2
    again = ledger("queue", "resume", "mail", url=db_url)
    assert (
        again.returncode == 1
        and again.stderr.strip() == "error: queue mail is not paused; only a paused queue can be resumed"
    )


def test_limits_are_set_listed_and_cleared_and_a_bad_one_is_one_line(db_url: str, store: Store) -> None:
    out = ledger(
        "limit", "set", "kind:export", "--concurrency", "2", "--rate", "60/1m", "--key", "customer.id", url=db_url
    )
    assert (out.returncode, out.stdout) == (0, "limit kind:export: 2 at once, 60 per 60s per customer.id\n")
    assert ledger("limits", url=db_url).stdout == "kind:export: 2 at once, 60 per 60s per customer.id\n"
    assert [r["key_path"] for r in json.loads(ledger("limits", "--json", url=db_url).stdout)] == [["customer", "id"]]
    for args, message in [
        (("--rate", "sixty"), "error: --rate 'sixty': write starts per period, e.g. 60/1m"),
        (
            ("--concurrency", "0"),
            "error: invalid limit: field 'concurrency': Input should be greater than or equal to 1",
        ),
        ((), "error: invalid limit: field '(root)': Value error, a limit needs a concurrency, a rate, or both"),
    ]:
        bad = ledger("limit", "set", "kind:export", *args, url=db_url)
        assert bad.returncode == 2 and bad.stderr.strip() == message, bad.stderr
    scope = ledger("limit", "set", "nope", "--concurrency", "1", url=db_url)
    assert scope.returncode == 1 and scope.stderr.strip() == "error: scope 'nope': must be kind:<kind> or queue:<queue>"
    assert ledger("limit", "clear", "kind:export", url=db_url).stdout == "limit kind:export cleared\n"
    gone = ledger("limit", "clear", "kind:export", url=db_url)
    assert gone.returncode == 1 and gone.stderr.strip() == "error: no limit on kind:export"
    assert ledger("limits", url=db_url).stdout == "no limits declared\n"


def test_wait_prints_the_result_or_fails_with_the_last_error(db_url: str, store: Store) -> None:
    ok, bad = store.enqueue_many([("k", {}, "q", 5, 1, None)] * 2)
    store.claim("q", 2, "w")
    store.succeed(ok, result='{"sum": 7}')
    store.fail(bad, "boom")
    assert ledger("wait", str(ok), url=db_url).stdout == '{"sum": 7}\n'
    failed = ledger("wait", str(bad), url=db_url)
    assert failed.returncode == 1 and failed.stderr.strip() == f"error: job {bad} was discarded: boom"


def test_stats_and_metrics_name_the_due_jobs_no_live_worker_can_run(db_url: str, store: Store) -> None:
    store.enqueue_many([("always_fail", {}, "default", 5, 1, None)] * 3)
    out = ledger("stats", url=db_url)
    assert "no live worker runs always_fail in queue default: 3 job(s) wait for one" in out.stderr
    assert json.loads(ledger("stats", "--json", url=db_url).stdout)["unserved"] == [
        {"queue": "default", "kind": "always_fail", "jobs": 3}
    ]
    with ConnectionPool(db_url, min_size=1, kwargs={"autocommit": True, "row_factory": dict_row}) as pool:
        metrics = client_for(pool).simulate_get("/metrics").text
    assert 'ledger_jobs_unserved{kind="always_fail",queue="default"} 3.0' in metrics, metrics
