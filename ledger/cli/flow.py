"""`ledger` commands of flow control: pause and resume queues, list them, and set the fleet's limits."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import typer
from pydantic import ValidationError

from ..console import fail
from ..durations import parse_rate
from ..errors import InvalidArguments
from ..kinds import format_validation_error
from ..models import Limit
from .base import app, friendly, operator, store

__all__ = ["limit_clear", "limit_set", "limits", "queue_pause", "queue_resume", "queues"]

queue_app = typer.Typer(no_args_is_help=True, help="Pause and resume a queue for the whole fleet.")
limit_app = typer.Typer(no_args_is_help=True, help="Limits across the fleet: concurrency and rate, per key.")
app.add_typer(queue_app, name="queue")
app.add_typer(limit_app, name="limit")


@queue_app.command("pause")
@friendly
def queue_pause(
    name: str = typer.Argument(..., help="The queue."),
    reason: str | None = typer.Option(None, help="Why; recorded with who paused it."),
) -> None:
    """Stop every worker from claiming the queue (running jobs finish; enqueueing still works)."""
    with store() as s:
        q = s.queue_set_paused(name, True, actor=operator(), reason=reason)
    typer.echo(f"queue {q.queue} paused by {q.changed_by}" + (f": {q.reason}" if q.reason else ""))


@queue_app.command("resume")
@friendly
def queue_resume(
    name: str = typer.Argument(..., help="The queue."),
    reason: str | None = typer.Option(None, help="Why; recorded with who resumed it."),
) -> None:
    """Let the fleet claim the queue again (its workers are woken at once)."""
    with store() as s:
        q = s.queue_set_paused(name, False, actor=operator(), reason=reason)
    typer.echo(f"queue {q.queue} resumed by {q.changed_by}")


@app.command()
@friendly
def queues(as_json: bool = typer.Option(False, "--json", help="One JSON array.")) -> None:
    """Every queue: its jobs per state, paused or not (who, when, why), and its limit."""
    with store() as s:
        counts = s.job_counts()
        states = {q.queue: q for q in s.queue_states()}
        declared = {r.scope.removeprefix("queue:"): r for r in s.limits() if r.scope.startswith("queue:")}
    names = sorted({c.queue for c in counts if c.queue != "*"} | set(states) | set(declared))
    rows: list[dict[str, Any]] = []
    for name in names:
        q = states.get(name)
        lim = declared.get(name)
        rows.append({
            "queue": name,
            "jobs": {c.state.value: c.count for c in counts if c.queue == name},
            "paused": bool(q and q.paused),
            "changed_by": q.changed_by if q else None,
            "changed_at": q.changed_at.isoformat() if q else None,
            "reason": q.reason if q else None,
            "limit": _limit_text(lim.concurrency, lim.rate, lim.per, lim.key_path) if lim else None,
        })  # fmt: skip
    if as_json:
        typer.echo(json.dumps(rows))
        return
    if not rows:
        typer.echo("no queues found")
        return
    for r in rows:
        jobs = " ".join(f"{k}={v}" for k, v in sorted(r["jobs"].items())) or "empty"
        state = f"paused by {r['changed_by']} at {r['changed_at']}" if r["paused"] else "running"
        why = f" ({r['reason']})" if r["paused"] and r["reason"] else ""
        limit = f" limit: {r['limit']}" if r["limit"] else ""
        typer.echo(f"{r['queue']}: {state}{why}; {jobs}{limit}")


def _rate(text: str) -> tuple[int, timedelta]:
    try:
        return parse_rate(text, "--rate")
    except InvalidArguments as exc:
        fail(str(exc), 2)


def _limit_text(concurrency: int | None, rate: int | None, per: timedelta | None, key: list[str] | None) -> str:
    parts = [f"{concurrency} at once"] if concurrency else []
    if rate and per:
        parts.append(f"{rate} per {per.total_seconds():g}s")
    return ", ".join(parts) + (f" per {'.'.join(key)}" if key else "")


@limit_app.command("set")
@friendly
def limit_set(
    scope: str = typer.Argument(..., help="kind:<kind> or queue:<queue>."),
    concurrency: int | None = typer.Option(None, help="At most this many running at once."),
    rate: str | None = typer.Option(None, help="At most this many starts per period: 60/1m."),
    key: str | None = typer.Option(None, help="Per value of this args field (dotted for a nested one)."),
) -> None:
    """Declare a limit the claim enforces across the fleet, for jobs enqueued from now on."""
    starts, per = _rate(rate) if rate else (None, None)
    try:
        limit = Limit(concurrency=concurrency, rate=starts, per=per, key=key)
    except ValidationError as exc:
        fail(f"invalid limit: {format_validation_error(exc)}", 2)
    with store() as s:
        row = s.limit_set(scope, limit)
    typer.echo(f"limit {row.scope}: {_limit_text(row.concurrency, row.rate, row.per, row.key_path)}")


@limit_app.command("clear")
@friendly
def limit_clear(scope: str = typer.Argument(..., help="kind:<kind> or queue:<queue>.")) -> None:
    """Remove a limit: nothing holds its jobs back any more."""
    with store() as s:
        cleared = s.limit_clear(scope)
    if not cleared:
        fail(f"no limit on {scope}")
    typer.echo(f"limit {scope} cleared")


@app.command()
@friendly
def limits(as_json: bool = typer.Option(False, "--json", help="One JSON array.")) -> None:
    """Every declared limit, by scope."""
    with store() as s:
        rows = s.limits()
    if as_json:
        typer.echo(json.dumps([r.model_dump(mode="json") for r in rows]))
        return
    if not rows:
        typer.echo("no limits declared")
    for r in rows:
        typer.echo(f"{r.scope}: {_limit_text(r.concurrency, r.rate, r.per, r.key_path)}")
