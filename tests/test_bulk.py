"""Bulk replay and cancel: every matching job in one act, one batch id in every event, nothing refused silently."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta

import psycopg
import pytest
from psycopg.rows import DictRow

from ledger.errors import InvalidArguments
from ledger.models import JobFilter
from ledger.store import Store

from .test_cli import ledger

OPERATOR = {"LEDGER_OPERATOR": "ana"}


def discarded(store: Store, n: int, kind: str = "export", queue: str = "q", error: str = "boom",
              args: list[dict[str, object]] | None = None) -> list[int]:  # fmt: skip
    ids = store.enqueue_many([(kind, (args or [{}] * n)[i], queue, 5, 1, None) for i in range(n)])
    claimed = store.claim(queue, n, "w")
    assert len(claimed) == n
    for job_id in ids:
        store.fail(job_id, error)
    return ids


def test_a_bulk_replay_of_a_thousand_jobs_in_one_command(
    db_url: str, store: Store, conn: psycopg.Connection[DictRow]
) -> None:
    ids = discarded(store, 1000, error="ConnectionError: upstream refused")
    others = discarded(store, 3, kind="report")
    out = ledger("replay", "--kind", "export", "--reason", "upstream is back", url=db_url, extra_env=OPERATOR)
    assert out.returncode == 0, out.stderr
    match = re.fullmatch(r"replayed 1000 job\(s\) matching kind=export in batch ([0-9a-f-]{36})\n", out.stdout)
    assert match, out.stdout
    batch = match.group(1)
    states = conn.execute(
        "SELECT state, count(*) AS n FROM ledger.jobs WHERE id = ANY (%s) GROUP BY state", [ids]
    ).fetchall()
    assert states == [{"state": "available", "n": 1000}]
    assert {store.job(i).state for i in others} == {"discarded"}  # type: ignore[union-attr]
    events = conn.execute("SELECT data, metadata FROM ledger.events WHERE type = 'replayed' ORDER BY job_id").fetchall()
    assert len(events) == 1000
    assert all(e["data"] == {"by": "ana", "reason": "upstream is back", "batch": batch} for e in events)
    assert all(e["metadata"] == {"via": "cli", "batch": batch} for e in events)
    act = store.bulk_action(batch)
    assert act is not None and (act["action"], act["filters"], act["by"], act["via"]) == (
        "replay", {"kind": "export"}, "ana", "cli")  # fmt: skip
    assert store.discarded(kind="export") == []
    assert ledger("verify", url=db_url).returncode == 0
    assert ledger("rebuild", "--check", url=db_url).stdout == "projections match the events\n"


def test_a_dry_run_says_what_it_would_do_and_changes_nothing(
    db_url: str, store: Store, conn: psycopg.Connection[DictRow]
) -> None:
    ids = discarded(store, 25)
    before = conn.execute("SELECT count(*) AS n FROM ledger.events").fetchone()
    out = ledger("replay", "--kind", "export", "--reason", "try", "--dry-run", url=db_url)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"would replay 25 dead letter(s) matching kind=export: {ids[0]}, {ids[1]}, ")
    assert out.stdout.endswith("… (5 more); dry run, nothing changed\n")
    assert conn.execute("SELECT count(*) AS n FROM ledger.events").fetchone() == before
    assert conn.execute("SELECT count(*) AS n FROM ledger.bulk_actions").fetchone() == {"n": 0}


def test_the_filters_narrow_what_is_replayed(store: Store, conn: psycopg.Connection[DictRow]) -> None:
    old = discarded(store, 2, error="TimeoutError: slow")
    conn.execute("UPDATE ledger.jobs SET finalized_at = finalized_at - interval '2 days' WHERE id = ANY (%s)", [old])
    acme = discarded(store, 2, args=[{"customer": "acme-42"}, {"customer": "acme-42"}], error="KeyError: 'vat'")
    other_queue = discarded(store, 1, queue="slow", error="KeyError: 'vat'")
    since = store.db_now_minus(timedelta(days=1))

    def would(**f: object) -> list[int]:
        return store.jobs_bulk("replay", JobFilter(**f), reason="r", dry_run=True).done  # type: ignore[arg-type]

    assert would(kind="export", queue="q") == old + acme
    assert would(kind="export", since=since) == acme + other_queue
    assert would(error_like="keyerror") == acme + other_queue, "case blind"
    assert would(search="ACME-42") == acme, "in the args"
    assert would(search="timeout") == old, "or in the error"
    assert would(error_like="%") == [], "plain text: no wildcards"
    assert store.discarded_count(JobFilter(kind="export", error_like="vat")) == 3
    assert [d.job_id for d in store.discarded(search="acme-42")] == acme[::-1]


def test_a_refused_job_is_reported_and_the_others_are_replayed(
    db_url: str, store: Store, conn: psycopg.Connection[DictRow]
) -> None:
    ids = discarded(store, 3)
    # Give the second a unique key that a newer job now holds: its replay would make two.
    conn.execute("UPDATE ledger.jobs SET unique_key = 'k1', unique_states = %s WHERE id = %s",
                 ["{available,scheduled,retryable,running}", ids[1]])  # fmt: skip
    [holder] = store.enqueue_many(
        [("export", {}, "q", 5, 1, None)], unique=[("k1", None, ["available", "scheduled", "retryable", "running"])]
    )
    out = ledger("replay", "--kind", "export", "--reason", "again", url=db_url)
    assert out.returncode == 1
    lines = out.stdout.splitlines()
    assert lines[0].startswith("replayed 2 job(s) matching kind=export in batch ")
    assert lines[1] == f"refused job {ids[1]}: job {ids[1]} cannot be replayed: job {holder} holds its unique key k1"
    assert out.stderr == "error: 1 matching job(s) were refused (listed above); the others were replayed\n"
    assert [store.job(i).state for i in ids] == ["available", "discarded", "available"]  # type: ignore[union-attr]


def test_a_bulk_cancel_stops_every_unfinished_match_running_ones_too(
    db_url: str, store: Store, conn: psycopg.Connection[DictRow]
) -> None:
    waiting = store.enqueue_many([("export", {}, "q", 5, 3, None)] * 3)
    [running] = store.claim("q", 1, "w")
    done = discarded(store, 1, queue="other")
    out = ledger("cancel", "--kind", "export", "--reason", "customer left", url=db_url, extra_env=OPERATOR)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("cancelled 3 job(s) matching kind=export in batch ")
    assert {store.job(i).state for i in waiting} == {"cancelled"}  # type: ignore[union-attr]
    assert running.id in waiting and store.job(done[0]).state == "discarded"  # type: ignore[union-attr]
    batch = out.stdout.split()[-1]
    [event] = [e for e in store.events_for_job(running.id) if e.type == "cancelled"]
    assert event.data == {"reason": "customer left", "batch": batch}
    assert event.metadata == {"via": "cli", "by": "ana", "batch": batch}
    assert ledger("cancel", "--kind", "export", "--reason", "again", url=db_url).stdout == (
        "no unfinished job(s) match kind=export\n")  # fmt: skip
    assert store.projections_diff() == [] and store.events_verify() == []


def test_one_job_by_id_works_as_before_and_mixed_or_empty_asks_are_usage_errors(db_url: str, store: Store) -> None:
    [job] = discarded(store, 1)
    single = ledger("replay", str(job), url=db_url)
    assert (single.returncode, single.stdout) == (0, f"replayed job {job}: state=available attempt=0/1\n")
    for args, message in [
        ((str(job), "--kind", "export"), "give a job id or filters (--kind, --queue, --since, --error-like or "
                                         "--search), not both"),
        ((), "give a job id, or filters (--kind, --queue, --since, --error-like or --search) to replay every "
             "matching job"),
        (("--kind", "export"), "--reason: a bulk replay needs a reason; it is recorded in every event"),
        (("--kind", "export", "--since", "last tuesday", "--reason", "r"), "--since 'last tuesday': give a time"),
        ((str(job), "--dry-run"), "--dry-run goes with filters, not with a job id"),
        (("--kind", "x" * 300, "--reason", "r"), "invalid filter: field 'kind': String should have at most 200"),
    ]:  # fmt: skip
        out = ledger("replay", *args, url=db_url)
        [line] = out.stderr.splitlines()
        assert out.returncode == 2 and line.startswith(f"error: {message}"), (args, out.stderr)


def test_a_batch_id_is_one_act(store: Store) -> None:
    discarded(store, 2)
    batch = uuid.uuid4()
    store.jobs_bulk("replay", JobFilter(kind="export"), reason="r", batch=batch)
    with pytest.raises(InvalidArguments, match="that id is another act"):
        store.jobs_bulk("cancel", JobFilter(kind="export"), reason="r", batch=batch)
    with pytest.raises(InvalidArguments, match="filters: give at least one"):
        store.jobs_bulk("replay", JobFilter(), reason="r")
    with pytest.raises(psycopg.Error, match="append-only"):
        store.conn.execute("DELETE FROM ledger.bulk_actions")


def test_chunks_take_every_match_once(store: Store) -> None:
    ids = discarded(store, 23)
    result = store.jobs_bulk("replay", JobFilter(queue="q"), reason="r", chunk=5)
    assert result.done == ids and result.refused == [] and result.changed == []
    assert store.projections_diff() == [] and store.events_verify() == []
