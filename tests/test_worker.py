"""The worker as a real process: NOTIFY wake-up, retries, discard and replay, shutdown, rescue, exactly-once."""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from psycopg.rows import DictRow

from ledger.db import connect
from ledger.store import Store

from .jobapp import SIDE_TABLE
from .test_cli import ledger
from .workers import WorkerProcess, wait_until

QUIET = ["--heartbeat-every", "3600", "--rescue-every", "3600"]


def enqueue(store: Store, kind: str, n: int = 1, args: dict[str, object] | None = None, attempts: int = 5) -> list[int]:
    return store.enqueue_many([(kind, args or {}, "default", 5, attempts, None)] * n)


def states(store: Store, ids: list[int]) -> Counter[str]:
    return Counter(j.state.value for i in ids if (j := store.job(i)) is not None)


def startup_jobs_done(store: Store) -> None:
    """The periodic jobs a worker enqueues as it starts (heartbeat, rescue, prune: ids 1-3) have run.

    Under load one of them can still be running when a test signals the
    worker, and would be abandoned or rescued along with the test's jobs.
    """
    wait_until(lambda: states(store, [1, 2, 3]) == {"succeeded": 3}, what="the periodic jobs of start-up")


def executions(conn: psycopg.Connection[DictRow]) -> Counter[int]:
    return Counter(r["job_id"] for r in conn.execute("SELECT job_id FROM executions").fetchall())


def test_a_job_enqueued_while_idle_starts_without_waiting_for_the_poll(
    db_url: str, store: Store, workers: list[WorkerProcess]
) -> None:
    # The poll is an hour away: only the NOTIFY can wake this worker in time.
    workers.append(WorkerProcess(db_url, "--poll-interval", "3600", *QUIET).started())
    wait_until(lambda: states(store, [1, 2]) == {"succeeded": 2}, what="the periodic jobs of start-up")
    [job] = enqueue(store, "noop")
    wait_until(lambda: states(store, [job]) == {"succeeded": 1}, timeout=15, what="the job to run")
    assert [e.type for e in store.events_for_job(job)] == ["enqueued", "started", "succeeded"]


def test_a_failing_job_retries_with_growing_delays_is_discarded_and_replay_runs_it_again(
    db_url: str, store: Store, side: psycopg.Connection[DictRow], workers: list[WorkerProcess]
) -> None:
    workers.append(WorkerProcess(db_url, "--poll-interval", "0.1", *QUIET).started())
    [job] = enqueue(store, "flaky", attempts=3)
    wait_until(lambda: states(store, [job]) == {"discarded": 1}, what="the job to be discarded")

    events = store.events_for_job(job)
    assert [e.type for e in events] == ["enqueued", *["started", "failed"] * 2, "started", "discarded"]
    delays = [(datetime.fromisoformat(e.data["run_at"]) - e.at).total_seconds() for e in events if e.type == "failed"]
    assert delays[0] < delays[1], f"backoff grows: {delays}"
    assert all(e.data["error"] == "RuntimeError: upstream is down" for e in events if e.type in {"failed", "discarded"})
    assert "Traceback" in events[-1].metadata["traceback"]
    workers[0].wait_for('"will_retry": false')  # logged after the outcome is recorded: wait for it

    listed = ledger("failed", url=db_url)
    assert listed.stdout.startswith(f"id={job} kind=flaky attempt=3/3 ")

    side.execute("CREATE TABLE fixed ()")
    assert ledger("replay", str(job), "--reason", "fixed", url=db_url).returncode == 0
    wait_until(lambda: states(store, [job]) == {"succeeded": 1}, what="the replayed job to succeed")
    assert [e.type for e in store.events_for_job(job)][-3:] == ["replayed", "started", "succeeded"]
    assert ledger("failed", url=db_url).stdout == "no discarded jobs found\n"


def test_sigterm_lets_jobs_in_flight_finish_and_records_them(
    db_url: str, store: Store, side: psycopg.Connection[DictRow], workers: list[WorkerProcess]
) -> None:
    w = WorkerProcess(db_url, "--shutdown-timeout", "30", *QUIET).started()
    workers.append(w)
    ids = enqueue(store, "sleep", 5, {"seconds": 1.5})
    wait_until(lambda: states(store, ids) == {"running": 5}, what="five running jobs")
    w.signal(signal.SIGTERM)
    assert w.wait() == 0, w.log
    assert states(store, ids) == {"succeeded": 5}
    assert "worker stopped" in w.log
    assert executions(side) == dict.fromkeys(ids, 1)


def test_a_second_signal_abandons_running_jobs_to_the_rescue(
    db_url: str, store: Store, side: psycopg.Connection[DictRow], workers: list[WorkerProcess]
) -> None:
    w = WorkerProcess(db_url, *QUIET, name="quitter").started()
    workers.append(w)
    startup_jobs_done(store)
    ids = enqueue(store, "sleep", 2, {"seconds": 30})
    wait_until(lambda: states(store, ids) == {"running": 2}, what="two running jobs")
    w.signal(signal.SIGINT)
    w.wait_for("worker stopping")
    w.signal(signal.SIGINT)
    assert w.wait() == 1
    assert "abandoning 2 job(s)" in w.log and "worker stopped" in w.log
    # Its heartbeat is gone, so a rescue now returns both to work without waiting for the lease.
    rescued = store.rescue()
    assert sorted(j.id for j in rescued) == ids
    assert all(j.state == "retryable" for j in rescued)


def test_a_job_that_outlasts_the_shutdown_timeout_is_abandoned_after_one_sigterm(
    db_url: str, store: Store, side: psycopg.Connection[DictRow], workers: list[WorkerProcess]
) -> None:
    w = WorkerProcess(db_url, "--shutdown-timeout", "1", *QUIET, name="impatient").started()
    workers.append(w)
    startup_jobs_done(store)
    [job] = enqueue(store, "sleep", 1, {"seconds": 30})
    wait_until(lambda: states(store, [job]) == {"running": 1}, what="the job to run")
    w.signal(signal.SIGTERM)
    # Well before the job's 30 s: a worker that ignored the timeout would still be waiting for it.
    assert w.wait(15) == 1, w.log
    assert f"abandoning 1 job(s) still running: [{job}]" in w.log
    assert states(store, [job]) == {"running": 1}, "left to the rescue, not recorded"
    assert executions(side) == {}


def test_sigkill_mid_job_a_second_worker_rescues_and_runs_the_jobs(
    db_url: str, store: Store, side: psycopg.Connection[DictRow], workers: list[WorkerProcess]
) -> None:
    doomed = WorkerProcess(db_url, "--lease", "2", *QUIET, name="doomed").started()
    workers.append(doomed)
    ids = enqueue(store, "sleep", 4, {"seconds": 3})
    wait_until(lambda: states(store, ids) == {"running": 4}, what="four running jobs")
    doomed.kill()

    rescuer = WorkerProcess(db_url, "--rescue-every", "1", "--poll-interval", "0.2", name="rescuer").started()
    workers.append(rescuer)
    wait_until(lambda: states(store, ids) == {"succeeded": 4}, timeout=40, what="rescued jobs to succeed")
    for job in ids:
        kinds = [e.type for e in store.events_for_job(job)]
        assert kinds == ["enqueued", "started", "rescued", "started", "succeeded"]
        rescued = next(e for e in store.events_for_job(job) if e.type == "rescued")
        assert rescued.data["worker"] == "doomed" and "vanished" in rescued.data["error"]
    # The killed attempts never reached the side table: each body completed once, on the rescuer.
    assert executions(side) == dict.fromkeys(ids, 1)
    assert rescuer.stop() == 0


def test_three_workers_run_each_of_three_thousand_jobs_exactly_once(
    db_url: str, store: Store, side: psycopg.Connection[DictRow], workers: list[WorkerProcess]
) -> None:
    workers.extend(WorkerProcess(db_url, "--queues", "default=8", *QUIET, name=f"w{i}").started() for i in range(3))
    ids = store.enqueue_many([("sleep", {}, "default", 5, 5, None)] * 3000)
    wait_until(lambda: states(store, ids)["succeeded"] == 3000, timeout=120, what="3000 jobs to succeed")
    counts = executions(side)
    assert set(counts) == set(ids) and set(counts.values()) == {1}
    by_worker = Counter(r["worker"] for r in side.execute("SELECT worker FROM executions").fetchall())
    assert set(by_worker) == {"w0", "w1", "w2"}, "all three workers took part"
    for w in workers:
        assert w.stop() == 0
    assert store.projections_diff() == []


def test_periodic_jobs_are_enqueued_once_per_period_with_two_workers(
    db_url: str, store: Store, workers: list[WorkerProcess]
) -> None:
    args = ["--heartbeat-every", "1", "--rescue-every", "3600"]
    workers.extend(WorkerProcess(db_url, *args, name=n).started() for n in ("p1", "p2"))
    wait_until(
        lambda: (
            store.conn.execute("SELECT count(*) AS n FROM ledger.jobs WHERE kind = 'heartbeat'").fetchone()["n"]  # type: ignore[index]
            >= 5
        ),
        what="five heartbeat periods",
    )
    for w in workers:
        assert w.stop() == 0
    per_second = store.conn.execute(
        "SELECT date_trunc('second', created_at) AS s, count(*) AS n FROM ledger.jobs "
        "WHERE kind = 'heartbeat' GROUP BY 1 ORDER BY 1"
    ).fetchall()
    assert [r["n"] for r in per_second] == [1] * len(per_second)
    assert "worker heartbeat" in workers[0].log + workers[1].log


def test_the_worker_reconnects_after_the_database_restarts_and_drains_the_queue(
    tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    from ledger.embedded import ensure_server, stop_server

    data = tmp_path / "db"
    url = ensure_server(data)
    env = {"LEDGER_DATA_DIR": str(data)}
    w = WorkerProcess(None, "--poll-interval", "0.2", *QUIET, env=env).started()
    workers.append(w)
    with connect(url) as c:
        c.execute(SIDE_TABLE)
        before = enqueue(Store(c), "sleep", 6, {"seconds": 1})
        wait_until(lambda: states(Store(c), before)["running"] >= 1, what="jobs in flight")
    try:
        stop_server(data)
        w.wait_for("database unavailable", timeout=60)
        url = ensure_server(data)
        with connect(url) as c:
            after = enqueue(Store(c), "noop", 20)
            wait_until(
                lambda: states(Store(c), before + after) == {"succeeded": 26}, timeout=60, what="the queue to drain"
            )
        w.wait_for("listener reconnected")
        assert w.stop() == 0
    finally:
        stop_server(data)


def test_a_job_can_snooze_cancel_or_give_up_from_its_own_code(
    db_url: str, store: Store, side: psycopg.Connection[DictRow], workers: list[WorkerProcess]
) -> None:
    workers.append(WorkerProcess(db_url, "--poll-interval", "0.1", *QUIET).started())
    [snoozed] = enqueue(store, "snoozer")
    [cancelled] = enqueue(store, "quitter")
    [given_up] = enqueue(store, "hopeless")
    wait_until(
        lambda: (
            [store.job(j).state for j in (snoozed, cancelled, given_up)]  # type: ignore[union-attr]
            == ["succeeded", "cancelled", "discarded"]
        ),
        what="snoozed, cancelled and discarded outcomes",
    )
    assert [e.type for e in store.events_for_job(snoozed)] == [
        "enqueued", "started", "snoozed", "started", "succeeded",
    ]  # fmt: skip
    assert store.job(snoozed).max_attempts == 6  # type: ignore[union-attr]  # the snooze cost no attempt
    assert store.events_for_job(cancelled)[-1].data == {"reason": "nothing left to do"}
    dead = store.job(given_up)
    assert dead is not None and (dead.attempt, dead.max_attempts) == (1, 5), "discarded at once, not retried"
    assert dead.last_error == "the account was deleted; retrying cannot help"


def test_a_job_that_runs_too_long_is_cancelled_and_counted_as_a_failed_attempt(
    db_url: str, store: Store, side: psycopg.Connection[DictRow], workers: list[WorkerProcess]
) -> None:
    w = WorkerProcess(db_url, "--poll-interval", "0.1", *QUIET).started()
    workers.append(w)
    [job] = enqueue(store, "sluggish", attempts=1)
    wait_until(lambda: states(store, [job]) == {"discarded": 1}, what="the timed-out job to be discarded")
    assert store.job(job).last_error == "timed out after 0.3s"  # type: ignore[union-attr]
    # One structured line per failed attempt, and the application's hook ran.
    w.wait_for(f'"msg": "job {job} attempt failed"')
    line = next(x for x in w.lines if f'"job {job} attempt failed"' in x)
    for field in ('"kind": "sluggish"', f'"job_id": {job}', '"attempt": "1/1"', '"will_retry": false'):
        assert field in line
    # The hook writes its row on its own connection, after the outcome: wait for it, not for the log.
    hooks = wait_until(
        lambda: side.execute("SELECT worker FROM executions WHERE job_id = %s", [job]).fetchall(),
        what="the error hook's row",
    )
    assert hooks == [{"worker": "hook:False"}]


def test_the_worker_prunes_finished_history_on_its_retention_schedule(
    db_url: str, store: Store, workers: list[WorkerProcess]
) -> None:
    from .test_retention import partitions, small_partitions

    first = small_partitions(store.conn)
    ids = enqueue(store, "noop", 100)
    enqueue(store, "noop", 1)  # opens the next partition, so the first takes no new ids
    workers.append(WorkerProcess(db_url, *QUIET, "--retention", "0s", "--prune-every", "1").started())
    wait_until(lambda: store.job(ids[0]) is None, timeout=60, what="the finished jobs to be pruned")
    assert first not in partitions(store.conn)
    assert all(store.job(i) is None for i in ids)
    workers[0].wait_for("retention: pruned")
    assert workers[0].stop() == 0
    assert store.projections_diff() == []


def test_jobs_claimed_in_a_live_workers_name_but_unknown_to_it_are_returned_to_work(
    db_url: str, store: Store, side: psycopg.Connection[DictRow], workers: list[WorkerProcess]
) -> None:
    # What a claim whose commit succeeded but whose answer was lost leaves behind.
    w = WorkerProcess(db_url, *QUIET, "--lease", "2", "--poll-interval", "3600", name="forgetful").started()
    workers.append(w)
    [job] = store.enqueue_many([("sleep", {}, "parked", 5, 5, None)])
    store.claim("parked", 1, "forgetful")
    w.wait_for("returned 1 job(s) whose claim answer was lost to work")
    assert [e.type.value for e in store.events_for_job(job)][-1] == "rescued"
    assert w.stop() == 0


def test_a_queue_never_runs_more_bodies_at_once_than_its_concurrency(
    db_url: str, store: Store, side: psycopg.Connection[DictRow], workers: list[WorkerProcess]
) -> None:
    workers.append(WorkerProcess(db_url, *QUIET, "--queues", "crowd=3", name="crowd").started())
    ids = store.enqueue_many([("crowd", {}, "crowd", 5, 1, None)] * 30)
    wait_until(lambda: states(store, ids)["succeeded"] == 30, timeout=60, what="30 crowd jobs")
    live = [int(r["worker"].split(":")[1]) for r in side.execute("SELECT worker FROM executions").fetchall()]
    assert len(live) == 30 and max(live) == 3
    assert workers[0].stop() == 0


def test_a_worker_of_other_queues_runs_the_rescue_on_a_queue_it_serves(
    db_url: str, store: Store, workers: list[WorkerProcess]
) -> None:
    [job] = store.enqueue_many([("noop", {}, "mail", 5, 3, None)])
    store.claim("mail", 1, "ghost", lease=timedelta(seconds=1))  # a worker that then vanished
    w = WorkerProcess(db_url, "--queues", "mail=2", "--rescue-every", "1", "--poll-interval", "0.2", name="mailer")
    workers.append(w.started())
    wait_until(lambda: (j := store.job(job)) is not None and j.state.value == "succeeded", what="the rescue")
    history = [e.type.value for e in store.events_for_job(job)]
    assert history == ["enqueued", "started", "rescued", "started", "succeeded"]
    assert w.stop() == 0


# ---------------------------------------------------------------- reliability under load and operators


def test_a_lost_claim_comes_back_within_two_heartbeats_under_a_steady_backlog(
    db_url: str, store: Store, workers: list[WorkerProcess]
) -> None:
    # Lease 3 s: a heartbeat every second. The backlog of 1-20 ms jobs keeps a claim in flight
    # nearly always, which is what held lost claims back for as long as the backlog lasted.
    w = WorkerProcess(db_url, *QUIET, "--lease", "3", "--queues", "default=50", name="busy").started()
    workers.append(w)
    stop = threading.Event()

    def backlog() -> None:
        with connect(db_url) as c:
            s = Store(c)
            while not stop.is_set():
                waiting = next((x.count for x in s.job_counts() if x.state == "available"), 0)
                if waiting < 1000:
                    s.enqueue_many(
                        [("blip", {"seconds": (i % 20 + 1) / 1000}, "default", 5, 3, None) for i in range(200)]
                    )
                time.sleep(0.05)

    feeder = threading.Thread(target=backlog, daemon=True)
    feeder.start()
    try:
        wait_until(
            lambda: any(c.state == "succeeded" and c.count > 200 for c in store.job_counts()),
            what="the backlog flowing",
        )
        [lost_job] = store.enqueue_many([("blip", {}, "parked", 5, 3, None)])
        store.claim("parked", 1, "busy")  # committed in the worker's name; the worker never hears of it
        w.wait_for("returned 1 job(s) whose claim answer was lost to work", timeout=30)
        assert store.job(lost_job).state == "retryable"  # type: ignore[union-attr]
        assert len(store.jobs(state="available", limit=1)) == 1, "the backlog was still there"
    finally:
        stop.set()
        feeder.join(10)


def test_a_worker_claims_only_the_kinds_it_can_run_and_the_others_wait_untouched(
    db_url: str, store: Store, workers: list[WorkerProcess]
) -> None:
    bare = WorkerProcess(db_url, *QUIET, "--poll-interval", "0.1", name="bare", app=None).started()
    workers.append(bare)
    [mine] = enqueue(store, "heartbeat")
    [theirs] = enqueue(store, "noop")  # a kind only the app's workers know
    wait_until(lambda: states(store, [mine]) == {"succeeded": 1}, what="the built-in kind to run")
    bare.wait_for("listener listening")
    time.sleep(1.0)  # ten polls of the bare worker: none may take the app's job
    job = store.job(theirs)
    assert job is not None and (job.state, job.attempt, job.version) == ("available", 0, 1)
    assert [(r["queue"], r["kind"], r["jobs"]) for r in store.kinds_unserved()] == [("default", "noop", 1)]
    app = WorkerProcess(db_url, *QUIET, name="app").started()
    workers.append(app)
    wait_until(lambda: states(store, [theirs]) == {"succeeded": 1}, what="a worker that knows the kind")
    assert [e.type for e in store.events_for_job(theirs)] == ["enqueued", "started", "succeeded"]
    assert store.kinds_unserved() == []


@pytest.mark.parametrize("poll_only", [False, True], ids=["notified", "found-at-the-heartbeat"])
def test_cancelling_a_running_job_stops_its_body_and_the_history_says_who_and_when(
    db_url: str, store: Store, side: psycopg.Connection[DictRow], workers: list[WorkerProcess], poll_only: bool
) -> None:
    extra = ["--poll-only", "--poll-interval", "0.2", "--lease", "3"] if poll_only else []
    w = WorkerProcess(db_url, *QUIET, *extra, name="runner").started(listening=not poll_only)
    workers.append(w)
    [async_job] = enqueue(store, "dawdle")
    [sync_job] = enqueue(store, "patient")
    wait_until(lambda: states(store, [async_job, sync_job]) == {"running": 2}, what="both bodies running")
    for job in (async_job, sync_job):
        out = ledger("cancel", str(job), "--reason", "wrong customer", url=db_url, extra_env={"LEDGER_OPERATOR": "ana"})
        assert out.returncode == 0, out.stderr
    for job, how in ((async_job, "stopped on the cancel"), (sync_job, "the body ended after the cancel (succeeded)")):
        wait_until(lambda j=job: store.events_for_job(j)[-1].type == "stopped", timeout=30, what=f"job {job} stopped")
        history = store.events_for_job(job)
        assert [e.type for e in history] == ["enqueued", "started", "cancelled", "stopped"]
        cancelled, stopped = history[2], history[3]
        assert cancelled.metadata["by"] == "ana" and cancelled.data["reason"] == "wrong customer"
        assert stopped.data["how"] == how and stopped.metadata["worker"] == "runner"
        assert stopped.at >= cancelled.at
    assert executions(side) == {}, "neither body ran to its own end"
    assert states(store, [async_job, sync_job]) == {"cancelled": 2}
    assert w.stop() == 0


def test_an_insert_only_job_with_bad_args_fails_in_the_worker_naming_the_field(
    db_url: str, store: Store, workers: list[WorkerProcess]
) -> None:
    from ledger.client import Client
    from ledger.kinds import builtin_registry

    # This process has no code for `sleep`: the insert-only client writes it as it is.
    with Client(db_url, registry=builtin_registry(), insert_only=True) as client:
        job = client.enqueue("sleep", {"seconds": "a while"}, max_attempts=1)
    w = WorkerProcess(db_url, *QUIET)
    workers.append(w.started())
    wait_until(lambda: states(store, [job]) == {"discarded": 1}, what="the job to be discarded")
    last = store.job(job)
    assert last is not None and last.last_error is not None
    assert last.last_error.startswith("invalid args for job kind 'sleep': field 'seconds'")


def test_the_start_up_line_names_the_app_the_kinds_and_the_database(db_url: str, workers: list[WorkerProcess]) -> None:
    w = WorkerProcess(db_url, *QUIET)
    workers.append(w.started())
    [line] = [line for line in w.lines if '"msg": "worker w: queues=' in line]
    assert "app=tests.jobapp (from --app)" in line
    kinds = line.split("kinds=")[1].split()[0].split(",")
    assert {"crowd", "flaky", "free", "heartbeat", "hopeless", "ledger.prune", "ledger.rescue", "noop"} <= set(kinds)
    assert "database=postgresql://" in line
    assert "periodic job enqueued" not in w.log, "debug output"
    assert "database: " not in w.log, "named once, in the start-up line"
