"""`ledger schedules`: the cron schedules workers declared, with their next run; pause and resume them."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import typer

from ..cron import next_run, zone
from ..errors import LedgerError
from ..models import ScheduleRow
from .base import app, friendly, operator, store

__all__ = ["schedules_app"]

schedules_app = typer.Typer(
    rich_markup_mode=None,
    invoke_without_command=True,
    help="Cron schedules: each with its next run (`ledger schedules`); pause or resume one.",
)
app.add_typer(schedules_app, name="schedules")


def _local(when: datetime | None, timezone: str) -> str:
    if when is None:
        return "-"
    try:
        return when.astimezone(zone(timezone)).isoformat()
    except LedgerError:
        return when.isoformat()


def _as_json(row: ScheduleRow, now: datetime) -> dict[str, Any]:
    when, how = next_run(row, now)
    return {**row.model_dump(mode="json"), "next_run": when.isoformat() if when else None, "next_run_is": how}


@schedules_app.callback()
@friendly
def schedules(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="One JSON array ([] when none)."),
) -> None:
    """List the schedules workers declared, each with its next run in its own time zone."""
    if ctx.invoked_subcommand is not None:
        return
    with store() as s:
        rows, now = s.schedules()
    if as_json:
        typer.echo(json.dumps([_as_json(r, now) for r in rows]))
        return
    if not rows:
        typer.echo("no schedules declared (a worker declares those its app registers with registry.schedule)")
        return
    for r in rows:
        when, how = next_run(r, now)
        if r.paused:
            at = r.changed_at.isoformat() if r.changed_at else "?"
            state = f"paused by {r.changed_by} at {at}" + (f": {json.dumps(r.reason)}" if r.reason else "")
        else:
            state = f"{how}={_local(when, r.timezone)}"
        last = f" last={_local(r.last_slot, r.timezone)} job={r.last_job_id}" if r.last_slot else ""
        typer.echo(f"{r.name} cron={json.dumps(r.cron)} timezone={r.timezone} kind={r.kind} missed={r.missed} "
                   f"{state}{last}")  # fmt: skip


@schedules_app.command("pause")
@friendly
def pause(
    name: str = typer.Argument(..., help="The schedule's name."),
    reason: str | None = typer.Option(None, help="Why; recorded with who paused it and when."),
) -> None:
    """Pause a schedule for every worker: its slots pass without a job until it is resumed."""
    with store() as s:
        row = s.schedule_set_paused(name, True, actor=operator(), reason=reason)
    typer.echo(f"paused schedule {row.name}")


@schedules_app.command("resume")
@friendly
def resume(
    name: str = typer.Argument(..., help="The schedule's name."),
    reason: str | None = typer.Option(None, help="Why; recorded with who resumed it and when."),
) -> None:
    """Resume a paused schedule: slots count from now (the paused ones are not caught up)."""
    with store() as s:
        row = s.schedule_set_paused(name, False, actor=operator(), reason=reason)
        rows, now = s.schedules()
    current = next(r for r in rows if r.name == row.name)
    when, how = next_run(current, now)
    typer.echo(f"resumed schedule {row.name}; {how} {_local(when, row.timezone)}")
