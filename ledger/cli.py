"""The `ledger` command line: migrate, enqueue, show, failed, replay, cancel, rebuild, db, worker."""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any, ParamSpec, TypeVar

import psycopg
import typer

from .apps import load_app
from .client import Client
from .console import fail
from .db import connect, database_url
from .errors import ConfigError, LedgerError
from .kinds import default_registry
from .logs import setup_logging
from .migrate import migrate, schema_version
from .models import Event, Job
from .retention import parse_duration, prune
from .settings import get_settings
from .store import Store

__all__ = ["app", "main"]

app = typer.Typer(add_completion=False, no_args_is_help=True, help="The job ledger: jobs as an append-only history.")
db_app = typer.Typer(no_args_is_help=True, help="The embedded development database.")
app.add_typer(db_app, name="db")

P = ParamSpec("P")
R = TypeVar("R")


def friendly(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn a LedgerError or a lost database into one line on stderr and a non-zero exit."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except LedgerError as exc:
            fail(str(exc))
        except psycopg.OperationalError as exc:
            fail(f"database error: {str(exc).strip()}")

    return wrapper


@contextmanager
def store() -> Iterator[Store]:
    """A store on a connection to a database that has the schema.

    In development the schema is applied when missing; in production the
    command refuses and says to run `ledger migrate`, so a read never
    changes a production database's schema behind an operator's back.
    """
    with connect(database_url()) as conn:
        if get_settings().production:
            have, want = Store(conn).schema_version(), schema_version()
            if have != want:
                raise ConfigError(f"the database's ledger schema is version {have}, not {want}; run `ledger migrate`")
        else:
            migrate(conn)
        yield Store(conn)


APP_OPTION = typer.Option(None, "--app", help="Module that registers your job kinds (or LEDGER_APP).")


@app.command("migrate")
@friendly
def migrate_cmd() -> None:
    """Apply schema.sql to the database; a no-op when it is applied already."""
    with connect(database_url()) as conn:
        typer.echo(str(migrate(conn)))


@app.command()
@friendly
def enqueue(
    kind: str = typer.Argument(..., help="The job kind, e.g. heartbeat."),
    args: str = typer.Option("{}", "--args", help="Arguments as a JSON object."),
    queue: str | None = typer.Option(None, help="Queue (default: the kind's)."),
    priority: int | None = typer.Option(None, help="0 runs first, 9 last (default: the kind's)."),
    max_attempts: int | None = typer.Option(None, help="Attempts before the job is discarded."),
    run_at: datetime | None = typer.Option(None, help="Run no earlier than this ISO time (with a zone)."),
    app_module: str | None = APP_OPTION,
) -> None:
    """Enqueue one job and print its id."""
    load_app(app_module)
    try:
        parsed = json.loads(args)
    except json.JSONDecodeError as exc:
        fail(f"--args is not valid JSON ({exc}); pass an object such as '{{\"n\": 1}}'", 2)
    except RecursionError:
        fail("--args is nested too deeply to parse", 2)
    if not isinstance(parsed, dict):
        fail(f"--args must be a JSON object such as '{{\"n\": 1}}', not {type(parsed).__name__}", 2)
    with store() as s:
        job_id = Client(registry=default_registry).enqueue(
            kind, parsed, queue=queue, priority=priority, max_attempts=max_attempts, run_at=run_at, conn=s.conn
        )
    typer.echo(f"enqueued {kind} job id={job_id}")


def _event_line(e: Event) -> str:
    details = {**e.data, **{f"meta.{k}": v for k, v in e.metadata.items()}}
    shown = " ".join(f"{k}={_short(v)}" for k, v in details.items() if v is not None and k != "args")
    return f"  v{e.version:<3} {e.at.isoformat(timespec='milliseconds')}  {e.type.value:<9} {shown}".rstrip()


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    text = " ".join(text.split())
    return json.dumps(text) if " " in text else text


def _job_header(j: Job) -> list[str]:
    return [
        f"job {j.id}  kind={j.kind}  queue={j.queue}  state={j.state.value}  "
        f"attempt={j.attempt}/{j.max_attempts}  priority={j.priority}  version={j.version}",
        f"  args: {json.dumps(j.args)}",
        f"  run_at: {j.run_at.isoformat()}  created_at: {j.created_at.isoformat()}"
        + (f"  finalized_at: {j.finalized_at.isoformat()}" if j.finalized_at else ""),
        *([f"  last_error: {j.last_error}"] if j.last_error else []),
    ]


@app.command()
@friendly
def show(
    job_id: int = typer.Argument(..., help="The job id."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """One job: its current state and its full event timeline."""
    with store() as s:
        job = s.job(job_id)
        if job is None:
            fail(f"job {job_id} not found")
        events = s.events_for_job(job_id)
    if as_json:
        typer.echo(
            json.dumps({"job": job.model_dump(mode="json"), "events": [e.model_dump(mode="json") for e in events]})
        )
        return
    typer.echo("\n".join([*_job_header(job), "timeline:", *(_event_line(e) for e in events)]))


@app.command()
@friendly
def failed(
    kind: str | None = typer.Option(None, help="Only this kind."),
    queue: str | None = typer.Option(None, help="Only this queue."),
    limit: int = typer.Option(50, min=1, max=10000, help="At most this many, newest first."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
) -> None:
    """List discarded jobs (the dead letters), newest first."""
    with store() as s:
        rows = s.discarded(kind=kind, queue=queue, limit=limit)
    if not rows:
        typer.echo("no discarded jobs found")
        return
    for d in rows:
        if as_json:
            typer.echo(json.dumps(d.model_dump(mode="json")))
        else:
            error = " ".join((d.last_error or "").split())
            typer.echo(
                f"id={d.job_id} kind={d.kind} attempt={d.attempt}/{d.max_attempts} "
                f"finalized_at={d.discarded_at.isoformat()} error={json.dumps(error)}"
            )


def _operator() -> str:
    return os.environ.get("LEDGER_OPERATOR") or os.environ.get("USER") or "cli"


@app.command()
@friendly
def replay(
    job_id: int = typer.Argument(..., help="The job id."),
    reason: str | None = typer.Option(None, help="Why; recorded in the replay event."),
) -> None:
    """Put a discarded or cancelled job back to work with a fresh attempt budget."""
    with store() as s:
        job = s.replay(job_id, actor=_operator(), reason=reason, metadata={"via": "cli"})
    typer.echo(f"replayed job {job.id}: state={job.state.value} attempt={job.attempt}/{job.max_attempts}")


@app.command()
@friendly
def cancel(
    job_id: int = typer.Argument(..., help="The job id."),
    reason: str | None = typer.Option(None, help="Why; recorded in the cancel event."),
) -> None:
    """Cancel a job that has not finished."""
    with store() as s:
        job = s.cancel(job_id, reason, metadata={"via": "cli", "by": _operator()})
    typer.echo(f"cancelled job {job.id}")


@app.command()
@friendly
def rebuild(
    check: bool = typer.Option(False, "--check", help="Only compare; change nothing."),
) -> None:
    """Re-derive the projections from the events (with --check: report differences, exit 1 if any)."""
    with store() as s:
        if not check:
            n = s.projections_rebuild()
            typer.echo(f"rebuilt projections of {n} job(s) from the events")
            return
        diffs = s.projections_diff()
    for d in diffs:
        typer.echo(
            f"{d['projection']} job {d['job_id']}: live={json.dumps(d['live'])} rebuilt={json.dumps(d['rebuilt'])}"
        )
    if diffs:
        fail(f"{len(diffs)} projection row(s) differ from the fold of the events")
    typer.echo("projections match the events")


@app.command("prune")
@friendly
def prune_cmd(
    older_than: str = typer.Option(..., "--older-than", help="Age of finished jobs to remove: 7d, 12h, 30m, 1w."),
    discarded: bool = typer.Option(False, "--discarded", help="Also remove discarded jobs (dead letters) that old."),
) -> None:
    """Remove the history of jobs that finished (succeeded, cancelled) before the cutoff.

    Whole partitions of the ledger are dropped or rewritten; no event row is
    deleted. Discarded jobs keep their history unless --discarded is given.
    """
    period = parse_duration(older_than)
    with store() as s:
        report = prune(s, period, purge_discarded=discarded)
    for p in report.partitions:
        if p.action in ("dropped", "rewritten", "busy"):
            typer.echo(
                f"{p.name} (jobs {p.lo}..{p.hi - 1}): {p.action}, {p.jobs_removed} job(s), {p.events_removed} event(s)"
            )
    typer.echo(str(report))
    if report.count("busy"):
        fail(
            f"{report.count('busy')} partition(s) were busy (a long transaction holds them); run the prune again later"
        )


@app.command()
@friendly
def verify() -> None:
    """Recompute every job's hash chain: report each history changed, cut or extended behind the ledger's back."""
    with store() as s:
        problems = s.events_verify()
    for p in problems:
        where = f"job {p['job_id']}" + (f" v{p['version']}" if p["version"] is not None else "")
        typer.echo(f"{where}: {p['problem']}")
    if problems:
        jobs = len({p["job_id"] for p in problems})
        fail(f"{len(problems)} problem(s) in the history of {jobs} job(s); see docs/guarantees.md")
    typer.echo("every history matches its hash chain")


@app.command()
@friendly
def roles(
    app_role: list[str] = typer.Option([], "--app", help="Role of workers, web and clients (repeatable)."),
    readonly: list[str] = typer.Option([], "--readonly", help="Role of dashboards and reports (repeatable)."),
) -> None:
    """Give roles their access to the ledger; run as its owner (creating a role needs CREATEROLE).

    An --app role calls the ledger's functions and reads its views; a
    --readonly role only reads. Neither holds any table privilege, so neither
    can change history except through the functions. A role that does not
    exist is created (LOGIN, no password: set one with ALTER ROLE).
    """
    if not app_role and not readonly:
        fail("name at least one role: --app NAME and/or --readonly NAME", 2)
    with store() as s:
        for name, access in [*((n, "app") for n in app_role), *((n, "readonly") for n in readonly)]:
            created = s.roles_grant(name, access)
            typer.echo(f"role {name}: {'created, ' if created else ''}{access} access")


@db_app.command("url")
@friendly
def db_url() -> None:
    """Print the URL of the database in use (starting the embedded one if needed)."""
    typer.echo(database_url())


@db_app.command("stop")
@friendly
def db_stop() -> None:
    """Stop the embedded development server."""
    from .embedded import stop_server

    stopped = stop_server(get_settings().data_dir)
    typer.echo("embedded server stopped" if stopped else "embedded server was not running")


def _plugins() -> None:
    """Add the subcommands other packages register (entry point group `ledger.commands`)."""
    from importlib.metadata import entry_points

    for ep in entry_points(group="ledger.commands"):
        app.command(ep.name)(ep.load())


def main() -> None:
    _plugins()
    setup_logging(logging.INFO if os.environ.get("LEDGER_VERBOSE") else logging.WARNING)
    if not os.environ.get("LEDGER_VERBOSE"):
        # The one line saying which database is in use, even when quiet.
        logging.getLogger("ledger.db").setLevel(logging.INFO)
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
