"""The `ledger` command as a user runs it: a real subprocess against a real database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ledger.migrate import schema_version
from ledger.states import JobState
from ledger.store import Store

LEDGER = [sys.executable, "-m", "ledger"]


def ledger(*args: str, url: str | None, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "LEDGER_ENV"}}
    if url is not None:
        env["DATABASE_URL"] = url
    env.update(extra_env or {})
    return subprocess.run([*LEDGER, *args], capture_output=True, text=True, env=env, timeout=60)


def discard_one(store: Store, kind: str = "heartbeat", error: str = "boom\nsecond line") -> int:
    job = store.enqueue_many([(kind, {}, "default", 5, 1, None)])[0]
    store.claim("default", 1, "w")
    store.fail(job, error)
    return job


def test_failed_says_so_when_there_are_no_discarded_jobs(db_url: str) -> None:
    out = ledger("failed", url=db_url)
    assert (out.returncode, out.stdout) == (0, "no discarded jobs found\n")


def test_failed_lists_discarded_jobs_newest_first_one_greppable_line_each(db_url: str, store: Store) -> None:
    first, second = discard_one(store), discard_one(store, kind="other")
    out = ledger("failed", url=db_url)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert [line.split()[0] for line in lines] == [f"id={second}", f"id={first}"]
    assert lines[1].startswith(f"id={first} kind=heartbeat attempt=1/1 finalized_at=")
    assert lines[1].endswith('error="boom second line"')
    only = ledger("failed", "--kind", "other", "--json", url=db_url)
    [row] = json.loads(only.stdout)
    assert row["job_id"] == second and row["errors"][0]["error"] == "boom\nsecond line"


def test_failed_json_is_one_array_and_an_empty_one_when_there_are_none(db_url: str) -> None:
    out = ledger("failed", "--json", url=db_url)
    assert (out.returncode, json.loads(out.stdout)) == (0, [])


def test_replay_puts_a_discarded_job_back_and_refuses_one_that_is_not(db_url: str, store: Store) -> None:
    job = discard_one(store)
    out = ledger("replay", str(job), "--reason", "fixed upstream", url=db_url, extra_env={"LEDGER_OPERATOR": "ana"})
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"replayed job {job}: state=available attempt=0/1\n"
    assert store.events_for_job(job)[-1].data == {"by": "ana", "reason": "fixed upstream"}

    again = ledger("replay", str(job), url=db_url)
    assert again.returncode == 1
    assert f"error: job {job} is available; only discarded or cancelled jobs can be replayed" in again.stderr
    assert "Traceback" not in again.stderr
    missing = ledger("replay", "999999", url=db_url)
    assert missing.returncode == 1 and "error: job 999999 not found" in missing.stderr


def test_show_prints_state_and_the_full_timeline(db_url: str, store: Store) -> None:
    job = discard_one(store)
    out = ledger("show", str(job), url=db_url)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"job {job}  kind=heartbeat  queue=default  state=discarded  attempt=1/1")
    timeline = out.stdout.split("timeline:\n")[1].splitlines()
    events = [line for line in timeline if line.startswith("  v")]
    assert [line.split()[2] for line in events] == ["enqueued", "started", "discarded"]


def test_show_prints_a_traceback_as_an_indented_block(db_url: str, store: Store) -> None:
    job = store.enqueue_many([("heartbeat", {}, "default", 5, 1, None)])[0]
    store.claim("default", 1, "w")
    trace = 'Traceback (most recent call last):\n  File "jobs.py", line 3, in send\nValueError: boom'
    store.fail(job, "ValueError: boom", metadata={"traceback": trace, "worker": "w"})
    out = ledger("show", str(job), url=db_url)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    at = lines.index("        meta.traceback:")
    assert lines[at - 1].split()[2] == "discarded" and "meta.worker=w" in lines[at - 1]
    assert "Traceback" not in lines[at - 1]
    assert lines[at + 1 : at + 4] == [
        "          Traceback (most recent call last):",
        '            File "jobs.py", line 3, in send',
        "          ValueError: boom",
    ]
    assert ledger("show", "424242", url=db_url).stderr.strip().endswith("error: job 424242 not found")


def test_enqueue_refuses_bad_input_with_a_clear_message_and_writes_nothing(db_url: str, store: Store) -> None:
    cases = {
        ("enqueue", "heartbeat", "--args", "{oops"): (2, "--args is not valid JSON"),
        ("enqueue", "heartbeat", "--args", "[1]"): (2, "--args must be a JSON object"),
        ("enqueue", "nosuch"): (1, "unknown job kind 'nosuch'; known kinds: heartbeat, ledger.prune, ledger.rescue"),
        ("enqueue", "heartbeat", "--args", '{"x": 1}'): (1, "field 'x': Extra inputs are not permitted"),
        ("enqueue", "heartbeat", "--priority", "11"): (1, "field 'priority'"),
    }
    for args, (code, message) in cases.items():
        out = ledger(*args, url=db_url)
        assert out.returncode == code, (args, out.stderr)
        assert message in out.stderr, (args, out.stderr)
    assert store.job_counts() == []
    ok = ledger("enqueue", "heartbeat", url=db_url)
    assert ok.returncode == 0 and ok.stdout.startswith("enqueued heartbeat job id=")


def test_rebuild_check_is_clean_then_reports_a_tampered_projection(db_url: str, store: Store) -> None:
    job = discard_one(store)
    assert ledger("rebuild", "--check", url=db_url).stdout == "projections match the events\n"
    store.conn.execute("UPDATE ledger.jobs SET attempt = 7 WHERE id = %s", [job])
    bad = ledger("rebuild", "--check", url=db_url)
    assert bad.returncode == 1
    assert f"jobs job {job}:" in bad.stdout and "differ from the fold of the events" in bad.stderr
    fixed = ledger("rebuild", url=db_url)
    assert fixed.stdout == "rebuilt projections of 1 job(s) from the events\n"
    assert ledger("rebuild", "--check", url=db_url).returncode == 0


def test_migrate_twice_is_a_no_op_from_the_command_line(db_url: str) -> None:
    out = ledger("migrate", url=db_url)
    assert (out.returncode, out.stdout) == (0, f"schema is at version {schema_version()}; nothing to do\n")


def test_production_mode_refuses_to_run_without_database_url(tmp_path: Path) -> None:
    out = ledger("failed", url=None, extra_env={"LEDGER_ENV": "production", "LEDGER_DATA_DIR": str(tmp_path)})
    assert out.returncode == 1
    assert "DATABASE_URL is required but unset" in out.stderr
    assert not (tmp_path / "pgdata").exists()


def test_the_database_in_use_is_debug_output_shown_with_ledger_verbose(db_url: str) -> None:
    quiet = ledger("failed", url=db_url)
    assert (quiet.returncode, quiet.stderr) == (0, ""), "an answer on stdout, nothing on stderr"
    loud = ledger("failed", url=db_url, extra_env={"LEDGER_VERBOSE": "1"})
    assert "database: postgresql://" in loud.stderr and "(from DATABASE_URL)" in loud.stderr


@pytest.mark.parametrize(
    "command",
    ["failed", "show", "replay", "cancel", "jobs", "stats", "rebuild", "prune", "enqueue", "migrate", "worker"],
)
def test_every_command_has_help(command: str) -> None:
    out = ledger(command, "--help", url=None)
    assert out.returncode == 0 and "Usage" in out.stdout


def test_jobs_lists_jobs_newest_first_filtered_one_line_each_or_as_json(db_url: str, store: Store) -> None:
    assert ledger("jobs", url=db_url).stdout == "no jobs found\n"
    discarded = discard_one(store)
    waiting = store.enqueue_many([("heartbeat", {}, "mail", 5, 3, None)])[0]
    out = ledger("jobs", url=db_url)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert [line.split()[0] for line in lines] == [f"id={waiting}", f"id={discarded}"]
    assert lines[0].startswith(f"id={waiting} kind=heartbeat queue=mail state=available attempt=0/3 run_at=")
    assert lines[1].endswith('error="boom second line"')
    only = ledger("jobs", "--state", "discarded", "--json", url=db_url)
    assert [j["id"] for j in json.loads(only.stdout)] == [discarded]
    assert json.loads(ledger("jobs", "--queue", "nope", "--json", url=db_url).stdout) == []


def test_stats_counts_jobs_per_queue_and_state_and_the_wait_of_the_oldest_due(db_url: str, store: Store) -> None:
    assert ledger("stats", url=db_url).stdout == "no jobs\n"
    discard_one(store)
    store.enqueue_many([("heartbeat", {}, "default", 5, 1, None)] * 2)
    later = datetime(2099, 1, 1, tzinfo=UTC)
    store.enqueue_many([("heartbeat", {}, "mail", 5, 1, later)])
    out = ledger("stats", url=db_url)
    assert out.returncode == 0, out.stderr
    header, default, mail = (line.split() for line in out.stdout.splitlines())
    assert header == ["queue", *(s.value for s in JobState), "oldest", "due"]
    assert default[:-1] == ["default", "0", "2", "0", "0", "0", "0", "1"]
    assert default[-1] != "-"  # how long: not a wall-clock assertion
    assert mail == ["mail", "1", "0", "0", "0", "0", "0", "0", "-"]
    data = json.loads(ledger("stats", "--json", url=db_url).stdout)
    assert [(w["queue"], w["due"]) for w in data["waiting"]] == [("default", 2)]
    assert {(c["queue"], c["state"], c["count"]) for c in data["counts"]} == {
        ("default", "available", 2), ("default", "discarded", 1), ("mail", "scheduled", 1),
    }  # fmt: skip


def test_enqueue_in_a_duration_schedules_the_job_that_far_from_now(db_url: str, store: Store) -> None:
    out = ledger("enqueue", "heartbeat", "--in", "2h", url=db_url)
    assert out.returncode == 0, out.stderr
    job = store.job(int(out.stdout.split("id=")[1]))
    assert job is not None and job.state == JobState.SCHEDULED
    # run_at was computed before the job was written: a little under two hours past created_at.
    assert timedelta(hours=1, minutes=50) < job.run_at - job.created_at <= timedelta(hours=2)
    both = ledger("enqueue", "heartbeat", "--in", "5m", "--run-at", "2030-01-01T09:00:00+00:00", url=db_url)
    assert (both.returncode, both.stderr) == (2, "error: give --run-at or --in, not both\n")


def test_enqueue_run_at_without_a_zone_is_local_time(db_url: str, store: Store) -> None:
    out = ledger("enqueue", "heartbeat", "--run-at", "2030-01-15T09:00", url=db_url, extra_env={"TZ": "America/Lima"})
    assert out.returncode == 0, out.stderr
    job = store.job(int(out.stdout.split("id=")[1]))
    assert job is not None and job.run_at == datetime(2030, 1, 15, 14, 0, tzinfo=UTC)  # Lima is UTC-5
    assert "without a zone" in ledger("enqueue", "--help", url=None).stdout


def test_enqueue_insert_only_writes_a_kind_this_machine_has_no_code_for(db_url: str, store: Store) -> None:
    refused = ledger("enqueue", "send_email", url=db_url)
    assert refused.returncode == 1 and "unknown job kind 'send_email'" in refused.stderr
    assert "name the module with --app, LEDGER_APP or [tool.ledger] app" in refused.stderr
    out = ledger("enqueue", "send_email", "--insert-only", "--args", '{"to": 3}', "--queue", "mail", url=db_url)
    assert out.returncode == 0, out.stderr
    job = store.job(int(out.stdout.split("id=")[1]))
    assert job is not None and (job.kind, job.queue, job.args, job.max_attempts) == (
        "send_email",
        "mail",
        {"to": 3},
        25,
    )
    # Options are still checked: nothing written.
    bad = ledger("enqueue", "send_email", "--insert-only", "--priority", "12", url=db_url)
    assert bad.returncode == 1 and "field 'priority'" in bad.stderr
    assert len(store.jobs()) == 1
