"""Retention: partitions of the ledger are dropped or rewritten, never edited row by row."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from psycopg.rows import DictRow

from ledger.db import connect
from ledger.durations import parse_duration
from ledger.errors import InvalidArguments
from ledger.migrate import current_version, migrate, schema_version
from ledger.retention import prune
from ledger.store import Store

from .conftest import count_events, unique_name
from .test_cli import ledger

NOW = timedelta(0)


def small_partitions(conn: psycopg.Connection[DictRow], size: int = 100) -> int:
    """Cut new partitions `size` job ids wide and move the id sequence to the first of them."""
    conn.execute("UPDATE ledger.events_partitioning SET size = %s", [size])
    row = conn.execute(
        "SELECT setval('ledger.job_id_seq', covered_until - 1) + 1 AS first FROM ledger.events_partitioning"
    ).fetchone()
    assert row is not None
    first: int = row["first"]
    return first


def full_partition(store: Store) -> tuple[int, list[int], int]:
    """Small partitions, the first filled with 100 jobs of queue q and closed by one more job
    in the next (queue `later`): (the first partition's lo, its job ids, the later job's id)."""
    first = small_partitions(store.conn)
    ids = enqueue(store, 100)
    [later] = enqueue(store, 1, queue="later")
    return first, ids, later


def enqueue(store: Store, n: int, queue: str = "q", max_attempts: int = 1) -> list[int]:
    return store.enqueue_many([("k", {}, queue, 5, max_attempts, None)] * n)


def run(store: Store, n: int, outcome: str = "succeed", queue: str = "q") -> list[int]:
    """Claim n jobs of `queue` and give each the outcome."""
    jobs = store.claim(queue, n, "w")
    for job in jobs:
        if outcome == "succeed":
            store.succeed(job.id)
        else:
            store.fail(job.id, "boom")
    return [j.id for j in jobs]


def partitions(conn: psycopg.Connection[DictRow]) -> dict[int, str]:
    return {r["lo"]: r["name"] for r in conn.execute("SELECT lo, name FROM ledger.events_partitions ORDER BY lo")}


def events_of(conn: psycopg.Connection[DictRow], ids: list[int]) -> list[dict[str, Any]]:
    """The events of these jobs as every version wrote them (the hash chain came with version 4)."""
    return conn.execute(
        "SELECT position, job_id, version, type, at, data, metadata FROM ledger.events "
        "WHERE job_id = ANY(%s) ORDER BY position",
        [ids],
    ).fetchall()


def job_ids(conn: psycopg.Connection[DictRow]) -> set[int]:
    return {r["id"] for r in conn.execute("SELECT id FROM ledger.jobs")}


def test_enqueue_creates_partitions_ahead_of_the_job_ids(store: Store, conn: psycopg.Connection[DictRow]) -> None:
    first = small_partitions(conn)
    ids = enqueue(store, 350)
    assert ids[0] == first
    covered = conn.execute("SELECT covered_until FROM ledger.events_partitioning").fetchone()
    assert covered is not None and covered["covered_until"] >= ids[-1] + 100  # a spare partition ahead
    assert {first, first + 100, first + 200, first + 300} <= set(partitions(conn))
    assert count_events(conn) == 350
    # Each partition holds its own range and refuses rewrites like the parent.
    for statement in (f"DELETE FROM ledger.events_{first}", f"TRUNCATE ledger.events_{first}"):
        with pytest.raises(psycopg.Error, match="append-only"):
            conn.execute(statement)


def test_prune_drops_a_partition_whose_jobs_all_finished_before_the_cutoff(
    store: Store, conn: psycopg.Connection[DictRow]
) -> None:
    first, _, later = full_partition(store)
    run(store, 100)
    report = prune(Store(conn), NOW)
    assert [(p.lo, p.action, p.jobs_removed, p.events_removed) for p in report.partitions if p.lo == first] == [
        (first, "dropped", 100, 300)
    ]
    assert first not in partitions(conn)
    assert job_ids(conn) == {later} and count_events(conn) == 1
    assert Store(conn).projections_diff() == []


def test_prune_rewrites_a_partition_and_discarded_and_unfinished_jobs_keep_their_full_history(
    store: Store, conn: psycopg.Connection[DictRow]
) -> None:
    first, ids, _ = full_partition(store)
    run(store, 85)
    dead = run(store, 5, outcome="fail")
    cancelled = ids[90:92]
    for job_id in cancelled:
        store.cancel(job_id)
    waiting = ids[92:]
    survivors = dead + waiting
    history_before = events_of(conn, survivors)
    failed_before = store.discarded(limit=100)

    [part] = [p for p in prune(Store(conn), NOW).partitions if p.lo == first]

    assert (part.action, part.jobs_removed, part.jobs_kept) == ("rewritten", 87, 13)
    assert part.events_removed == 85 * 3 + 2 * 2
    assert partitions(conn)[first] == f"events_{first}_r"
    assert job_ids(conn) == set(survivors) | {ids[-1] + 1}
    assert events_of(conn, survivors) == history_before  # positions, versions, data: all as they were
    assert store.discarded(limit=100) == failed_before
    assert store.projections_diff() == []
    # The rewritten partition is guarded like the first, and its jobs go on living.
    with pytest.raises(psycopg.Error, match="append-only"):
        conn.execute(f"TRUNCATE ledger.events_{first}_r")
    store.replay(dead[0], actor="test", reason="fixed")
    assert {j.id for j in store.claim("q", 100, "w")} == {dead[0], *waiting}
    # A second prune with everything finished drops the rewritten table.
    for job_id in [dead[0], *waiting]:
        store.succeed(job_id)
    [again] = [p for p in prune(Store(conn), NOW, purge_discarded=True).partitions if p.lo == first]
    assert (again.action, again.jobs_removed) == ("dropped", 13)
    assert store.projections_diff() == []


def test_prune_keeps_jobs_that_finished_after_the_cutoff_and_partitions_still_taking_ids(
    store: Store, conn: psycopg.Connection[DictRow]
) -> None:
    first, _, _ = full_partition(store)
    run(store, 100)
    run(store, 1, queue="later")
    report = prune(Store(conn), timedelta(hours=1))
    actions = {p.lo: p.action for p in report.partitions}
    assert actions[first] == "kept" and actions[first + 100] == "open"
    assert report.jobs_removed == 0 and count_events(conn) == 303
    # Finished now, but its partition is still handing out ids: kept whatever the cutoff.
    assert {p.lo: p.action for p in prune(Store(conn), NOW).partitions}[first + 100] == "open"


def test_prune_leaves_a_partition_where_fewer_than_half_the_jobs_can_go(
    store: Store, conn: psycopg.Connection[DictRow]
) -> None:
    first, _, _ = full_partition(store)
    run(store, 40)
    [part] = [p for p in prune(Store(conn), NOW).partitions if p.lo == first]
    assert (part.action, part.jobs_removed, part.jobs_kept) == ("kept", 0, 60)
    assert len(job_ids(conn)) == 101


def test_discarded_jobs_survive_a_prune_unless_purged_on_purpose(
    store: Store, conn: psycopg.Connection[DictRow]
) -> None:
    first, _, _ = full_partition(store)
    dead = run(store, 100, outcome="fail")
    assert {p.lo: p.action for p in prune(Store(conn), NOW).partitions}[first] == "kept"
    assert len(store.discarded(limit=200)) == 100
    [part] = [p for p in prune(Store(conn), NOW, purge_discarded=True).partitions if p.lo == first]
    assert (part.action, part.jobs_removed) == ("dropped", 100)
    assert store.discarded(limit=200) == [] and not set(dead) & job_ids(conn)


def test_a_prune_that_cannot_get_its_lock_reports_busy_and_changes_nothing(
    store: Store, conn: psycopg.Connection[DictRow], db_url: str
) -> None:
    first, _, _ = full_partition(store)
    run(store, 100)
    with connect(db_url, autocommit=False) as reader:
        reader.execute("SELECT count(*) FROM ledger.events")  # a long transaction holding a read lock
        report = prune(Store(conn), NOW, lock_timeout=timedelta(milliseconds=50), attempts=2)
        assert {p.lo: p.action for p in report.partitions}[first] == "busy"
        assert len(job_ids(conn)) == 101 and count_events(conn) == 301
    assert {p.lo: p.action for p in prune(Store(conn), NOW).partitions}[first] == "dropped"


def test_prune_from_the_command_line_and_its_refusals(db_url: str, conn: psycopg.Connection[DictRow]) -> None:
    store = Store(conn)
    first, _, _ = full_partition(store)
    run(store, 100)
    out = ledger("prune", "--older-than", "0s", url=db_url)
    assert out.returncode == 0, out.stderr
    assert f"events_{first} (jobs {first}..{first + 99}): dropped, 100 job(s), 300 event(s)" in out.stdout
    assert "pruned 100 job(s) and 300 event(s)" in out.stdout
    bad = ledger("prune", "--older-than", "a week", url=db_url)
    assert bad.returncode == 1 and "duration 'a week' is not understood" in bad.stderr
    assert ledger("prune", url=db_url).returncode == 2  # --older-than is required


@pytest.mark.parametrize(
    ("text", "seconds"), [("7d", 604800), ("12h", 43200), ("1w2d", 777600), ("90m", 5400), ("0s", 0), ("1.5h", 5400)]
)
def test_durations_read_as_a_person_writes_them(text: str, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "7", "d", "7 days", "-1d", "7d banana"])
def test_durations_that_are_not_understood_are_refused(text: str) -> None:
    with pytest.raises(InvalidArguments, match="is not understood"):
        parse_duration(text)


def test_a_version_1_database_is_upgraded_in_place_and_keeps_its_history(server_url: str) -> None:
    from pathlib import Path

    name = unique_name("ledger_upgrade_v1")
    with connect(server_url) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = make_conninfo(server_url, dbname=name)
    try:
        with connect(url) as conn:
            v1 = (Path(__file__).parent / "data" / "schema_v1.sql").read_text()
            with conn.transaction():
                conn.execute(v1.encode())
                conn.execute("INSERT INTO ledger.schema_version (version) VALUES (1)")
            # History written by version 1's own functions, as its code called them.
            ids = [
                r["id"]
                for r in conn.execute(
                    "SELECT ledger.job_enqueue('k', '{}', 'q', 5, 1) AS id FROM generate_series(1, 4)"
                )
            ]
            for job in conn.execute("SELECT id FROM ledger.job_claim('q', 2, 'w')").fetchall():
                conn.execute("SELECT ledger.job_succeed(%s)", [job["id"]])
            for job in conn.execute("SELECT id FROM ledger.job_claim('q', 1, 'w')").fetchall():
                conn.execute("SELECT ledger.job_fail(%s, 'boom')", [job["id"]])
            history = events_of(conn, ids)

            assert str(migrate(conn)) == f"schema applied: version 1 -> {schema_version()}"
            assert current_version(conn) == schema_version()
            store = Store(conn)
            assert events_of(conn, ids) == history
            assert store.projections_diff() == []
            # The history written before the chain was chained by the upgrade, as ledger.event_hash would have.
            assert store.events_verify() == []
            assert partitions(conn)[0] == "events_0"
            with pytest.raises(psycopg.Error, match="append-only"):
                conn.execute("TRUNCATE ledger.events_0")
            [new] = enqueue(store, 1)
            assert new == ids[-1] + 1
            assert events_of(conn, [new])[0]["position"] > max(e["position"] for e in history)
            [claimed] = store.claim("q", 1, "w")
            store.succeed(claimed.id)
            # The old table is a partition like any other: a prune rewrites it.
            [part] = [p for p in prune(Store(conn), NOW).partitions if p.lo == 0]
            assert (part.action, part.jobs_removed, part.jobs_kept) == ("rewritten", 3, 1)
            assert store.projections_diff() == [] and len(store.discarded()) == 1
    finally:
        with connect(server_url) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
