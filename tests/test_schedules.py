"""Cron schedules: slots across DST changes (pure, fixed clocks), one enqueue per slot across a fleet of
real workers, missed slots skipped or run once, pause and resume recorded."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import anyio
import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg.rows import DictRow
from psycopg_pool import AsyncConnectionPool

from ledger.cron import check, last_slot, next_slot, plan, slots
from ledger.db import connect
from ledger.errors import IllegalTransition, InvalidArguments, NotFound
from ledger.kinds import JobContext, NoArgs, Registry, builtin_registry
from ledger.store import Store
from ledger.worker.periodic import Scheduler

from .test_cli import ledger
from .threads import new_barrier, run_threads
from .workers import WorkerProcess, wait_until

PARIS = ZoneInfo("Europe/Paris")
QUIET = ["--heartbeat-every", "3600", "--rescue-every", "3600", "--poll-interval", "0.5"]


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


def paris(*parts: int, fold: int = 0) -> datetime:
    return datetime(*parts, tzinfo=PARIS, fold=fold)  # type: ignore[misc]


def take(cron: str, tz: ZoneInfo, after: datetime, n: int) -> list[datetime]:
    it = slots(cron, tz, after)
    return [next(it) for _ in range(n)]


# ---------------------------------------------------------------- DST, pure (Europe/Paris, 2026)
# Clocks go forward on 29 March at 02:00 (to 03:00) and back on 25 October at 03:00 (to 02:00).


def test_a_slot_that_does_not_exist_is_skipped() -> None:
    got = take("30 2 * * *", PARIS, paris(2026, 3, 27, 12, 0), 3)
    assert got == [paris(2026, 3, 28, 2, 30), paris(2026, 3, 30, 2, 30), paris(2026, 3, 31, 2, 30)]


def test_a_repeated_slot_runs_once_at_its_first_instant() -> None:
    got = take("30 2 * * *", PARIS, paris(2026, 10, 24, 12, 0), 2)
    # An instant in the fold never compares equal across zones (PEP 495): compare in UTC.
    assert got == [utc(2026, 10, 25, 0, 30), paris(2026, 10, 26, 2, 30)], "02:30 summer time, not the second 02:30"


def test_every_half_hour_across_both_changes_takes_each_wall_clock_slot_once() -> None:
    back = take("*/30 * * * *", PARIS, paris(2026, 10, 25, 1, 45), 5)
    assert [t.astimezone(UTC).strftime("%H:%M") for t in back] == ["00:00", "00:30", "02:00", "02:30", "03:00"]
    forward = take("*/30 * * * *", PARIS, paris(2026, 3, 29, 1, 15), 3)
    assert [t.astimezone(PARIS).strftime("%H:%M") for t in forward] == ["01:30", "03:00", "03:30"]


def test_weekday_mornings_stay_at_nine_local_time_across_the_change() -> None:
    got = take("0 9 * * MON-FRI", PARIS, paris(2026, 3, 26, 12, 0), 3)
    assert got == [utc(2026, 3, 27, 8, 0), utc(2026, 3, 30, 7, 0), utc(2026, 3, 31, 7, 0)]


def test_the_second_pass_of_a_repeated_hour_neither_reruns_nor_misses_its_slots() -> None:
    second_pass = paris(2026, 10, 25, 2, 10, fold=1)  # 01:10 UTC: the 02:30 of this night ran at 00:30 UTC
    assert next_slot("30 2 * * *", PARIS, second_pass) == paris(2026, 10, 26, 2, 30)
    assert last_slot("30 2 * * *", PARIS, second_pass) == utc(2026, 10, 25, 0, 30)


def test_the_southern_hemisphere_and_a_half_hour_offset_too() -> None:
    sydney = ZoneInfo("Australia/Sydney")  # forward on 4 October 2026 at 02:00
    got = take("30 2 * * *", sydney, datetime(2026, 10, 3, 12, 0, tzinfo=sydney), 2)
    assert got == [datetime(2026, 10, 5, 2, 30, tzinfo=sydney), datetime(2026, 10, 6, 2, 30, tzinfo=sydney)]
    lord_howe = ZoneInfo("Australia/Lord_Howe")  # +10:30 to +11:00 on 4 October 2026 at 02:00
    assert next_slot("15 2 * * *", lord_howe, datetime(2026, 10, 3, 12, 0, tzinfo=lord_howe)) == datetime(
        2026, 10, 5, 2, 15, tzinfo=lord_howe
    )


def test_six_fields_are_seconds_first() -> None:
    assert take("*/20 * * * * *", PARIS, utc(2026, 1, 1, 0, 0, 5), 2) == [utc(2026, 1, 1, 0, 0, 20),
                                                                         utc(2026, 1, 1, 0, 0, 40)]  # fmt: skip


CRONS = ["*/30 * * * *", "30 2 * * *", "0 * * * *", "15,45 1-3 * * *", "0 9 * * MON-FRI", "*/10 2 * * SUN"]
ZONES = ["Europe/Paris", "America/New_York", "Australia/Sydney", "Australia/Lord_Howe", "UTC"]


@settings(max_examples=200, deadline=None)
@given(
    cron=st.sampled_from(CRONS),
    name=st.sampled_from(ZONES),
    start=st.datetimes(min_value=datetime(2026, 1, 1), max_value=datetime(2027, 1, 1), timezones=st.just(UTC)),
)
def test_slots_are_increasing_real_and_unique_per_wall_clock_time(cron: str, name: str, start: datetime) -> None:
    tz = ZoneInfo(name)
    got = take(cron, tz, start, 6)
    assert got[0] > start and got == sorted(set(got)), "strictly after, strictly increasing"
    walls = [t.astimezone(tz).replace(tzinfo=None) for t in got]
    assert len(set(walls)) == len(walls), "a wall-clock time runs once"
    for t in got:
        assert t.astimezone(tz).astimezone(UTC) == t and last_slot(cron, tz, t) == t
    before = last_slot(cron, tz, start)
    assert before is not None and before <= start < got[0] == next_slot(cron, tz, before)


# ---------------------------------------------------------------- the plan, pure

HOUR = "0 * * * *"


def test_a_slot_that_has_come_is_fired_and_the_next_one_planned() -> None:
    now = utc(2026, 5, 1, 10, 0, 2)
    p = plan(HOUR, PARIS, utc(2026, 5, 1, 10, 0), now, "skip", timedelta(minutes=1))
    assert (p.fire, p.missed, p.following) == (utc(2026, 5, 1, 10, 0), 0, utc(2026, 5, 1, 11, 0))


def test_missed_slots_are_skipped_unless_the_latest_is_within_its_grace() -> None:
    planned = utc(2026, 5, 1, 7, 0)
    late = plan(HOUR, PARIS, planned, utc(2026, 5, 1, 10, 20), "skip", timedelta(minutes=1))
    assert (late.fire, late.missed, late.first_missed, late.last_missed) == (
        None, 4, utc(2026, 5, 1, 7, 0), utc(2026, 5, 1, 10, 0))  # fmt: skip
    recent = plan(HOUR, PARIS, planned, utc(2026, 5, 1, 10, 0, 30), "skip", timedelta(minutes=1))
    assert (recent.fire, recent.missed, recent.last_missed) == (utc(2026, 5, 1, 10, 0), 3, utc(2026, 5, 1, 9, 0))


def test_missed_slots_run_once_for_all_of_them() -> None:
    p = plan(HOUR, PARIS, utc(2026, 5, 1, 7, 0), utc(2026, 5, 1, 10, 20), "once", timedelta(minutes=1))
    assert (p.fire, p.missed, p.following) == (utc(2026, 5, 1, 10, 0), 3, utc(2026, 5, 1, 11, 0))


def test_a_plan_from_a_time_that_is_no_slot_waits_for_the_next_slot() -> None:
    declared = utc(2026, 5, 1, 10, 20)
    p = plan(HOUR, PARIS, declared, utc(2026, 5, 1, 10, 25), "once", timedelta(minutes=1))
    assert (p.fire, p.missed, p.following) == (None, 0, utc(2026, 5, 1, 11, 0))


def test_bad_expressions_and_zones_are_refused_naming_the_field() -> None:
    for cron, zone, field in [("61 * * * *", "UTC", "cron"), ("0 0 30 2 *", "UTC", "cron"),
                              ("0 9 * * *", "Mars/Olympus", "timezone"), ("", "UTC", "cron")]:  # fmt: skip
        with pytest.raises(InvalidArguments) as refused:
            check(cron, zone)
        assert refused.value.fields == [field], (cron, zone)
    registry = app_registry()
    with pytest.raises(InvalidArguments, match="missed 'later'"):
        registry.schedule("x", "report", cron="0 3 * * *", missed="later")  # type: ignore[arg-type]


# ---------------------------------------------------------------- in the database


def app_registry(**schedule: Any) -> Registry:
    registry = builtin_registry()

    @registry.kind("report", queue="q")
    async def report(ctx: JobContext[NoArgs]) -> None:
        return None

    if schedule:
        registry.schedule("nightly", "report", **schedule)
    return registry


def scheduler_pass(db_url: str, registry: Registry, *, declare: bool = True) -> float:
    """One pass of a worker's scheduler over the schedules, in this process."""

    async def main() -> float:
        async with AsyncConnectionPool(db_url, min_size=1, max_size=2, kwargs={"autocommit": True}) as pool:
            scheduler = Scheduler(pool, registry)
            if declare:
                await scheduler.declare()
            return await scheduler.fire_due()

    return anyio.run(main)


def scheduled_jobs(conn: psycopg.Connection[DictRow], name: str) -> list[DictRow]:
    return conn.execute(
        "SELECT job_id, metadata FROM ledger.events WHERE type = 'enqueued' AND metadata->>'schedule' = %s "
        "ORDER BY job_id",
        [name],
    ).fetchall()


def set_planned(conn: psycopg.Connection[DictRow], name: str, at: datetime) -> None:
    """As if no worker had run since `at`: the schedule still waits for the slot planned then."""
    conn.execute("UPDATE ledger.schedules SET next_run_at = %s WHERE name = %s", [at, name])


YEARLY = "0 0 1 1 *"


def _four_years_of_slots(store: Store) -> tuple[datetime, datetime]:
    now = store.db_now_minus(timedelta(0))
    latest = last_slot(YEARLY, PARIS, now)
    assert latest is not None
    first = last_slot(YEARLY, PARIS, latest - timedelta(days=3 * 365 + 1))
    assert first is not None
    return first, latest


@pytest.mark.parametrize("missed", ["skip", "once"])
def test_slots_missed_while_no_worker_ran_are_skipped_or_run_once_and_recorded(
    db_url: str, store: Store, conn: psycopg.Connection[DictRow], missed: str
) -> None:
    registry = app_registry(cron=YEARLY, timezone="Europe/Paris", missed=missed)
    scheduler_pass(db_url, registry)
    first, latest = _four_years_of_slots(store)
    set_planned(conn, "nightly", first)  # four new years' slots passed while the fleet was down
    scheduler_pass(db_url, registry, declare=False)
    jobs = scheduled_jobs(conn, "nightly")
    [event] = [e for e in store.schedule_events("nightly") if e.type == "missed"]
    [row] = store.schedules()[0]
    assert row.next_run_at == next_slot(YEARLY, PARIS, latest)
    if missed == "skip":
        assert jobs == [] and event.data["slots"] == 4 and event.data["ran_for"] is None
    else:
        [job] = jobs
        assert job["metadata"] == {"schedule": "nightly", "slot": latest.isoformat(), "missed": 3}
        assert event.data["slots"] == 3 and event.data["ran_for"] == latest.isoformat()
        assert row.last_job_id == job["job_id"]
    assert datetime.fromisoformat(event.data["first"]) == first
    assert scheduler_pass(db_url, registry, declare=False) > 0 and len(scheduled_jobs(conn, "nightly")) == len(jobs)


def test_a_paused_schedule_enqueues_nothing_and_a_resume_does_not_catch_up(
    db_url: str, store: Store, conn: psycopg.Connection[DictRow]
) -> None:
    registry = app_registry(cron=YEARLY, timezone="Europe/Paris", missed="once")
    scheduler_pass(db_url, registry)
    paused = store.schedule_set_paused("nightly", True, actor="ana", reason="quarter closing")
    assert (paused.paused, paused.changed_by, paused.reason) == (True, "ana", "quarter closing")
    first, _ = _four_years_of_slots(store)
    set_planned(conn, "nightly", first)
    scheduler_pass(db_url, registry, declare=False)
    assert scheduled_jobs(conn, "nightly") == [], "paused: nothing, whatever is due"
    listed = ledger("schedules", url=db_url)
    assert listed.returncode == 0 and "paused by ana at " in listed.stdout and '"quarter closing"' in listed.stdout

    out = ledger(
        "schedules",
        "resume",
        "nightly",
        "--reason",
        "books closed",
        url=db_url,
        extra_env={"LEDGER_OPERATOR": "cli-operator"},
    )
    assert out.returncode == 0 and out.stdout.startswith("resumed schedule nightly; next "), out.stderr
    scheduler_pass(db_url, registry, declare=False)
    assert scheduled_jobs(conn, "nightly") == [], "the slots passed while paused are not run, even with missed=once"
    [row] = store.schedules()[0]
    assert not row.paused and row.next_run_at > store.db_now_minus(timedelta(0))
    log = [(e.type, e.by, e.reason) for e in reversed(store.schedule_events("nightly"))]
    assert log[1:] == [("paused", "ana", "quarter closing"), ("resumed", "cli-operator", "books closed")]
    again = ledger("schedules", "resume", "nightly", url=db_url)
    assert (again.returncode, again.stderr) == (1, "error: schedule nightly is not paused; only a paused schedule "
                                                   "can be resumed\n")  # fmt: skip
    with pytest.raises(NotFound, match="schedule 'nope' not found"):
        store.schedule_set_paused("nope", True)
    with pytest.raises(IllegalTransition):
        store.schedule_set_paused("nightly", False)
    with pytest.raises(psycopg.Error, match="append-only"):
        conn.execute("DELETE FROM ledger.schedule_events")


def test_racing_compare_and_sets_take_a_slot_once(db_url: str, store: Store, conn: psycopg.Connection[DictRow]) -> None:
    registry = app_registry(cron="* * * * *", timezone="UTC")
    scheduler_pass(db_url, registry)
    due = last_slot("* * * * *", ZoneInfo("UTC"), store.db_now_minus(timedelta(0)))
    assert due is not None
    set_planned(conn, "nightly", due)
    [row] = store.schedules()[0]
    barrier = new_barrier(8)
    taken: list[tuple[bool, int | None]] = []

    def racer() -> None:
        with connect(db_url) as c:
            barrier.wait()
            taken.append(Store(c).schedule_fire("nightly", "* * * * *", "UTC", expected=row.next_run_at,
                                                following=row.next_run_at + timedelta(minutes=1),
                                                slot=row.next_run_at))  # fmt: skip

    run_threads(*[racer] * 8, barrier=barrier)
    assert sorted(t for t, _ in taken) == [False] * 7 + [True]
    assert len(scheduled_jobs(conn, "nightly")) == 1


def test_a_worker_declared_otherwise_does_not_fire(
    db_url: str, store: Store, conn: psycopg.Connection[DictRow]
) -> None:
    scheduler_pass(db_url, app_registry(cron="* * * * *", timezone="UTC"))
    old = app_registry(cron="*/5 * * * *", timezone="UTC")  # an older worker, still running during a deploy
    set_planned(conn, "nightly", store.db_now_minus(timedelta(minutes=10)))
    scheduler_pass(db_url, old, declare=False)
    assert scheduled_jobs(conn, "nightly") == []


# ---------------------------------------------------------------- a fleet of real workers


@pytest.fixture
def fleet(db_url: str) -> Iterator[list[WorkerProcess]]:
    workers = [WorkerProcess(db_url, *QUIET, name=f"cron{i}", app="tests.cronapp") for i in range(3)]
    yield workers
    for w in workers:
        w.kill()


def test_a_cron_slot_is_enqueued_once_by_three_workers(
    fleet: list[WorkerProcess], conn: psycopg.Connection[DictRow], store: Store
) -> None:
    for w in fleet:
        w.started()
    wait_until(lambda: len(scheduled_jobs(conn, "every-2s")) >= 5, 30, "five slots of the every-2s schedule")
    for w in fleet:
        assert w.stop() == 0
    slots_taken = [datetime.fromisoformat(j["metadata"]["slot"]) for j in scheduled_jobs(conn, "every-2s")]
    assert len(slots_taken) == len(set(slots_taken)), f"a slot enqueued twice: {slots_taken}"
    # Every slot from the first to the last is accounted for once: a job, or (a worker stalled past
    # it on a busy machine) counted as missed in the schedule's history.
    missed = sum(e.data["slots"] for e in store.schedule_events("every-2s") if e.type == "missed")
    assert (slots_taken[-1] - slots_taken[0]) / timedelta(seconds=2) + 1 == len(slots_taken) + missed
    assert sum("scheduled job enqueued" in w.log for w in fleet) >= 1
    assert store.projections_diff() == [] and store.events_verify() == []
