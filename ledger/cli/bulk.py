"""Bulk replay and cancel for `ledger replay` / `ledger cancel` given filters instead of an id.

`ledger replay --kind K [--queue Q] [--since T] [--error-like TEXT] [--search TEXT] --reason R
[--dry-run]` replays every matching dead letter (cancel: every matching unfinished job) through
the store's chunked bulk method: one batch id in every event, the count printed, every job that
could not be acted on listed with why.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import typer
from pydantic import ValidationError

from ..console import fail
from ..durations import parse_duration
from ..errors import InvalidArguments
from ..kinds import format_validation_error
from ..models import BulkResult, JobFilter
from .base import MAX_ID, operator, store

__all__ = ["FILTER_HELP", "bulk", "job_filter", "optional_job_id"]

FILTER_HELP = "--kind, --queue, --since, --error-like or --search"


def optional_job_id(value: int | None) -> int | None:
    if value is not None and not 1 <= value <= MAX_ID:
        raise typer.BadParameter(f"job ids are whole numbers from 1 to {MAX_ID}, not {value}")
    return value


def _since(text: str | None) -> datetime | None:
    """--since: an ISO time (without a zone: local time) or a duration back from now (2h, 1d)."""
    if text is None:
        return None
    try:
        return datetime.now(UTC) - parse_duration(text, "since")
    except InvalidArguments:
        pass
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        fail(f"--since {text!r}: give a time (2026-05-01T09:00, local time without a zone) or a duration back "
             "from now (30m, 2h, 1d)", 2)  # fmt: skip
    return when if when.tzinfo is not None else when.astimezone()


def job_filter(
    kind: str | None, queue: str | None, since: str | None, error_like: str | None, search: str | None
) -> JobFilter:
    """The filter of the options, checked; usage errors exit 2."""
    try:
        return JobFilter(kind=kind, queue=queue, since=_since(since), error_like=error_like, search=search)
    except ValidationError as exc:
        fail(f"invalid filter: {format_validation_error(exc)}", 2)


def _described(match: JobFilter) -> str:
    return " ".join(f"{k}={v.isoformat() if isinstance(v, datetime) else v}" for k, v in match.params().items() if v)


def _ids(ids: list[int], shown: int = 20) -> str:
    text = ", ".join(str(i) for i in ids[:shown])
    return text + (f", … ({len(ids) - shown} more)" if len(ids) > shown else "")


def bulk(action: str, match: JobFilter, reason: str | None, dry_run: bool) -> None:
    """Run a bulk `replay` or `cancel` and report it; exit 1 when some job was refused."""
    if reason is None or not reason.strip():
        fail(f"--reason: a bulk {action} needs a reason; it is recorded in every event", 2)
    with store() as s:
        result = s.jobs_bulk(action, match, reason=reason, actor=operator(), via="cli", dry_run=dry_run)
    _report(result, match)


def _report(result: BulkResult, match: JobFilter) -> None:
    what = "dead letter(s)" if result.action == "replay" else "unfinished job(s)"
    past = {"replay": "replayed", "cancel": "cancelled"}[result.action]
    if not result.done and not result.refused and not result.changed:
        typer.echo(f"no {what} match {_described(match)}")
        return
    if result.dry_run:
        typer.echo(f"would {result.action} {len(result.done)} {what} matching {_described(match)}: "
                   f"{_ids(result.done)}; dry run, nothing changed")  # fmt: skip
    else:
        typer.echo(f"{past} {len(result.done)} job(s) matching {_described(match)} in batch {result.batch}")
    lines: list[dict[str, Any]] = result.refused
    for r in lines:
        typer.echo(f"{'would refuse' if result.dry_run else 'refused'} job {r['id']}: {r['reason']}")
    for r in result.changed:
        typer.echo(f"skipped job {r['id']}: {r['reason']}")
    if result.refused and not result.dry_run:
        fail(f"{len(result.refused)} matching job(s) were refused (listed above); the others were {past}")
