"""`ledger` commands about jobs: enqueue, show, jobs, failed, replay, cancel, stats."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import typer
from pydantic import ValidationError

from ..apps import load_app
from ..client import Client
from ..console import fail
from ..durations import parse_duration
from ..kinds import default_registry, format_validation_error
from ..models import ACTIVE_STATES, Event, Job, JobFilter, Unique
from ..states import JobState
from .base import APP_OPTION, JOB_ID, app, friendly, operator, store
from .bulk import FILTER_HELP, bulk, job_filter, optional_job_id

__all__ = ["cancel", "enqueue", "failed", "jobs", "replay", "show", "stats"]


def _json_object(text: str) -> dict[str, Any]:
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as exc:
        fail(f"--args is not valid JSON ({exc}); pass an object such as '{{\"n\": 1}}'", 2)
    except RecursionError:
        fail("--args is nested too deeply to parse", 2)
    if not isinstance(parsed, dict):
        fail(f"--args must be a JSON object such as '{{\"n\": 1}}', not {type(parsed).__name__}", 2)
    return parsed


def _when(run_at: datetime | None, delay: str | None) -> datetime | None:
    """--run-at (a zone-less time is local time) or --in (from now); not both."""
    if run_at is not None and delay is not None:
        fail("give --run-at or --in, not both", 2)
    if delay is not None:
        return datetime.now(UTC) + parse_duration(delay, "in")
    if run_at is not None and run_at.tzinfo is None:
        return run_at.astimezone()  # a naive datetime is read as this machine's local time
    return run_at


@app.command()
@friendly
def enqueue(
    kind: str = typer.Argument(..., help="The job kind, e.g. heartbeat."),
    args: str = typer.Option("{}", "--args", help="Arguments as a JSON object."),
    queue: str | None = typer.Option(None, help="Queue (default: the kind's)."),
    priority: int | None = typer.Option(None, help="0 runs first, 9 last (default: the kind's)."),
    max_attempts: int | None = typer.Option(None, help="Attempts before the job is discarded."),
    run_at: datetime | None = typer.Option(
        None, help="Run no earlier than this ISO time; without a zone (2030-01-01T09:00) it is local time."
    ),
    delay: str | None = typer.Option(None, "--in", help="Run no earlier than this long from now: 30s, 5m, 2h, 1d."),
    insert_only: bool = typer.Option(
        False,
        "--insert-only",
        help="Enqueue a kind this machine has no code for: args are validated by the worker; "
        "options default to queue default, priority 5, 25 attempts.",
    ),
    unique_key: str | None = typer.Option(
        None, "--unique-key", help="Enqueue only if no job of this kind with this key is waiting or running."
    ),
    unique_period: str | None = typer.Option(
        None, "--unique-period", help="With --unique-key: one job per period (1h, 1d) instead, whatever its state."
    ),
    app_module: str | None = APP_OPTION,
) -> None:
    """Enqueue one job and print its id (or the id of the job its unique key matched)."""
    load_app(app_module)
    parsed = _json_object(args)
    when = _when(run_at, delay)
    unique = None
    if unique_period is not None and unique_key is None:
        fail("--unique-period needs --unique-key", 2)
    if unique_key is not None:
        try:
            unique = Unique(
                key=unique_key,
                period=parse_duration(unique_period, "unique_period") if unique_period else None,
                states=frozenset(JobState) if unique_period else ACTIVE_STATES,
            )
        except ValidationError as exc:
            fail(f"--unique-key: {format_validation_error(exc)}", 2)
    with store() as s:
        job_id = Client(registry=default_registry, insert_only=insert_only).enqueue(
            kind, parsed, queue=queue, priority=priority, max_attempts=max_attempts, run_at=when, unique=unique,
            conn=s.conn,
        )  # fmt: skip
    if job_id.duplicate:
        typer.echo(f"job id={job_id} already enqueued (unique key {unique_key})")
    else:
        typer.echo(f"enqueued {kind} job id={job_id}")


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    text = " ".join(text.split())
    return json.dumps(text) if " " in text else text


def _event_lines(e: Event) -> list[str]:
    """The event on one line; a value of several lines (a traceback) as an indented block below it."""
    details = {**e.data, **{f"meta.{k}": v for k, v in e.metadata.items()}}
    shown = {k: v for k, v in details.items() if v is not None and k != "args"}
    inline = " ".join(f"{k}={_short(v)}" for k, v in shown.items() if not (isinstance(v, str) and "\n" in v.strip()))
    lines = [f"  v{e.version:<3} {e.at.isoformat(timespec='milliseconds')}  {e.type.value:<9} {inline}".rstrip()]
    for k, v in shown.items():
        if isinstance(v, str) and "\n" in v.strip():
            lines.append(f"        {k}:")
            lines.extend(f"          {line}".rstrip() for line in v.strip("\n").splitlines())
    return lines


def _job_header(j: Job) -> list[str]:
    return [
        f"job {j.id}  kind={j.kind}  queue={j.queue}  state={j.state.value}  "
        f"attempt={j.attempt}/{j.max_attempts}  priority={j.priority}  version={j.version}",
        f"  args: {json.dumps(j.args)}",
        f"  run_at: {j.run_at.isoformat()}  created_at: {j.created_at.isoformat()}"
        + (f"  finalized_at: {j.finalized_at.isoformat()}" if j.finalized_at else ""),
        *([f"  last_error: {_short(j.last_error)}"] if j.last_error else []),
    ]


@app.command()
@friendly
def show(
    job_id: int = JOB_ID,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """One job: its current state and its full event timeline (tracebacks as indented blocks)."""
    with store() as s:
        view = s.job_view(job_id)
    if view is None:
        fail(f"job {job_id} not found")
    if as_json:
        typer.echo(view.model_dump_json())
        return
    extra = []
    if (progress := view.progress) is not None:
        extra.append(f"  progress: {json.dumps(progress.value)} (attempt {progress.attempt}, "
                     f"at {progress.at.isoformat(timespec='milliseconds')})")  # fmt: skip
    if view.result is not None:
        extra.append(f"  result: {json.dumps(view.result)}")
    lines = [*_job_header(view.job), *extra, "timeline:", *(line for e in view.events for line in _event_lines(e))]
    typer.echo("\n".join(lines))


@app.command("jobs")
@friendly
def jobs(
    state: JobState | None = typer.Option(None, help="Only jobs in this state."),
    kind: str | None = typer.Option(None, help="Only this kind."),
    queue: str | None = typer.Option(None, help="Only this queue."),
    limit: int = typer.Option(50, min=1, max=10000, help="At most this many, newest first."),
    as_json: bool = typer.Option(False, "--json", help="One JSON array."),
) -> None:
    """List jobs, newest first: one line each; `no jobs found` when none match."""
    with store() as s:
        rows = s.jobs(state=state.value if state else None, kind=kind, queue=queue, limit=limit)
    if as_json:
        typer.echo(json.dumps([j.model_dump(mode="json") for j in rows]))
        return
    if not rows:
        typer.echo("no jobs found")
        return
    for j in rows:
        error = f" error={_short(j.last_error)}" if j.last_error else ""
        typer.echo(
            f"id={j.id} kind={j.kind} queue={j.queue} state={j.state.value} "
            f"attempt={j.attempt}/{j.max_attempts} run_at={j.run_at.isoformat()}{error}"
        )


@app.command()
@friendly
def failed(
    kind: str | None = typer.Option(None, help="Only this kind."),
    queue: str | None = typer.Option(None, help="Only this queue."),
    limit: int = typer.Option(50, min=1, max=10000, help="At most this many, newest first."),
    as_json: bool = typer.Option(False, "--json", help="One JSON array ([] when none)."),
) -> None:
    """List discarded jobs (the dead letters), newest first."""
    with store() as s:
        rows = s.discarded(kind=kind, queue=queue, limit=limit)
    if as_json:
        typer.echo(json.dumps([d.model_dump(mode="json") for d in rows]))
        return
    if not rows:
        typer.echo("no discarded jobs found")
        return
    for d in rows:
        error = " ".join((d.last_error or "").split())
        typer.echo(
            f"id={d.job_id} kind={d.kind} attempt={d.attempt}/{d.max_attempts} "
            f"finalized_at={d.discarded_at.isoformat()} error={json.dumps(error)}"
        )


# Bulk replay and cancel (ledger/cli/bulk.py): the same commands given filters instead of an id.
_BULK_ID = typer.Argument(None, help="The job id; or none, and filters to act on every match.",
                          callback=optional_job_id, show_default=False)  # fmt: skip
_KIND = typer.Option(None, "--kind", help="Bulk: jobs of this kind.")
_QUEUE = typer.Option(None, "--queue", help="Bulk: jobs of this queue.")
_SINCE = typer.Option(None, "--since", help="Bulk: ended (or, unfinished, enqueued) since: an ISO time or 2h, 1d.")
_ERROR = typer.Option(None, "--error-like", help="Bulk: whose last error contains this text (case blind).")
_SEARCH = typer.Option(None, "--search", help="Bulk: whose args or last error contain this text (a customer id).")
_DRY = typer.Option(False, "--dry-run", help="Bulk: print what would be done; change nothing.")


def _one_or_bulk(job_id: int | None, match: JobFilter, dry_run: bool, action: str) -> bool:
    """True for a bulk act; usage errors (both, neither, --dry-run with an id) exit 2."""
    if job_id is not None and not match.empty:
        fail(f"give a job id or filters ({FILTER_HELP}), not both", 2)
    if job_id is None and match.empty:
        fail(f"give a job id, or filters ({FILTER_HELP}) to {action} every matching job", 2)
    if job_id is not None and dry_run:
        fail("--dry-run goes with filters, not with a job id", 2)
    return job_id is None


@app.command()
@friendly
def replay(
    job_id: int | None = _BULK_ID,
    reason: str | None = typer.Option(None, help="Why; recorded in the replay event(s). Required in bulk."),
    kind: str | None = _KIND,
    queue: str | None = _QUEUE,
    since: str | None = _SINCE,
    error_like: str | None = _ERROR,
    search: str | None = _SEARCH,
    dry_run: bool = _DRY,
) -> None:
    """Put a discarded or cancelled job back to work with a fresh attempt budget.

    With filters instead of an id: replay every matching discarded job, all under one batch id.
    """
    match = job_filter(kind, queue, since, error_like, search)
    if _one_or_bulk(job_id, match, dry_run, "replay"):
        bulk("replay", match, reason, dry_run)
        return
    assert job_id is not None
    with store() as s:
        job = s.replay(job_id, actor=operator(), reason=reason, metadata={"via": "cli"})
    typer.echo(f"replayed job {job.id}: state={job.state.value} attempt={job.attempt}/{job.max_attempts}")


@app.command()
@friendly
def cancel(
    job_id: int | None = _BULK_ID,
    reason: str | None = typer.Option(None, help="Why; recorded in the cancel event(s). Required in bulk."),
    kind: str | None = _KIND,
    queue: str | None = _QUEUE,
    since: str | None = _SINCE,
    error_like: str | None = _ERROR,
    search: str | None = _SEARCH,
    dry_run: bool = _DRY,
) -> None:
    """Cancel a job that has not finished.

    With filters instead of an id: cancel every matching unfinished job (running ones too), all
    under one batch id.
    """
    match = job_filter(kind, queue, since, error_like, search)
    if _one_or_bulk(job_id, match, dry_run, "cancel"):
        bulk("cancel", match, reason, dry_run)
        return
    assert job_id is not None
    with store() as s:
        job = s.cancel(job_id, reason, metadata={"via": "cli", "by": operator()})
    typer.echo(f"cancelled job {job.id}")


def _age(period: timedelta) -> str:
    """12.3s, 4m05s, 3h02m, 2d04h: how long the oldest job has waited, as a person reads it."""
    seconds = max(0.0, period.total_seconds())
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


@app.command()
@friendly
def stats(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Jobs per queue and state, and how long the oldest due job of each queue has waited."""
    with store() as s:
        counts = s.job_counts()
        waits = {w.queue: w for w in s.queue_waits()}
        unserved = s.kinds_unserved()
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "counts": [c.model_dump(mode="json") for c in counts],
                    "waiting": [
                        {"queue": w.queue, "due": w.due, "oldest_wait_seconds": w.oldest_wait.total_seconds()}
                        for w in waits.values()
                    ],
                    "unserved": [{"queue": u["queue"], "kind": u["kind"], "jobs": u["jobs"]} for u in unserved],
                }
            )
        )
        return
    if not counts:
        typer.echo("no jobs")
        return
    table: dict[str, dict[JobState, str]] = {}
    for c in counts:
        # Past 100k jobs, finished states are estimates over all queues (ledger.job_counts()).
        table.setdefault(c.queue, {})[c.state] = str(c.count) if c.exact else f"~{c.count}"
    states = list(JobState)
    width = max(8, *(len(q) for q in table))
    typer.echo(f"{'queue':<{width}} " + " ".join(f"{s.value:>9}" for s in states) + "  oldest due")
    for queue, row in sorted(table.items()):
        oldest = _age(waits[queue].oldest_wait) if queue in waits else "-"
        typer.echo(f"{queue:<{width}} " + " ".join(f"{row.get(s, '0'):>9}" for s in states) + f"  {oldest}")
    for u in unserved:
        typer.echo(f"no live worker runs {u['kind']} in queue {u['queue']}: {u['jobs']} job(s) wait for one", err=True)


@app.command()
@friendly
def wait(
    job_id: int = JOB_ID,
    timeout: float | None = typer.Option(None, min=0, help="Give up after this many seconds (exit 1)."),
) -> None:
    """Wait until the job ends; print its result as JSON (`null` for none), or exit 1 with its last error."""
    try:
        result = Client(registry=default_registry, insert_only=True).wait(job_id, timeout)
    except TimeoutError as exc:
        fail(str(exc))
    typer.echo(json.dumps(result))
