"""`ledger` commands that look after the ledger itself: migrate, rebuild, prune, db url, db stop."""

from __future__ import annotations

import json

import typer

from ..console import fail
from ..db import connect, database_url
from ..durations import parse_duration
from ..migrate import migrate
from ..retention import prune
from ..settings import get_settings
from ..store import Store
from .base import app, db_app, friendly, store

__all__ = ["db_stop", "db_url", "migrate_cmd", "prune_cmd", "rebuild"]


@app.command("migrate")
@friendly
def migrate_cmd() -> None:
    """Apply schema.sql to the database; a no-op when it is applied already."""
    with connect(database_url()) as conn:
        typer.echo(str(migrate(conn)))


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
    period = parse_duration(older_than, "older_than")
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


@db_app.command("url")
@friendly
def db_url() -> None:
    """Print the URL of the database in use (starting the embedded one if needed)."""
    typer.echo(database_url())


@db_app.command("stop")
@friendly
def db_stop(
    force: bool = typer.Option(False, "--force", help="Stop it even while a worker or web server uses it."),
) -> None:
    """Stop the embedded development server (refused while other processes use it, unless --force)."""
    from ..embedded import ensure_server, server_running, stop_server

    data_dir = get_settings().data_dir
    if not server_running(data_dir):
        typer.echo("embedded server was not running")
        return
    if not force:
        with connect(ensure_server(data_dir)) as conn:
            others = Store(conn).server_connections_other()
        if others["sessions"]:
            fail(
                f"the embedded server has {others['sessions']} other connection(s) (to {others['databases']}): "
                "a worker, a web server or a test run uses it; stop them first, or pass --force"
            )
    stopped = stop_server(data_dir)
    typer.echo("embedded server stopped" if stopped else "embedded server was not running")
