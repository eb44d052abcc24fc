"""The operator's pages of the dashboard: queues (pause, resume, limits), schedules (pause, resume),
activity (throughput charts), and the failed list's replay of all that match a filter.

Forms post urlencoded bodies with the CSRF token (checked by web/auth.py for
every dashboard POST) and answer with a redirect back, carrying a notice or
the refusal; the reasons follow the API's rules (web/api.py ActionBody).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

import falcon
from psycopg_pool import ConnectionPool
from pydantic import ValidationError

from ledger.cron import zone
from ledger.durations import parse_rate
from ledger.errors import InvalidArguments, LedgerError, NotFound
from ledger.kinds import format_validation_error
from ledger.models import JobFilter
from ledger.store import Store

from .api import _int_param, form_reason, parse_time, text_param
from .chart import Chart, charts
from .forms import form_post
from .operators import (
    FOLD_AT_MOST,
    check_queue,
    check_schedule,
    check_scope,
    limit_of,
    queue_views,
    schedule_views,
)
from .pages import Page, env
from .stores import store

__all__ = ["install", "throughput_charts"]

HOURS = (1, 3, 6, 12, 24)


def throughput_charts(s: Store, span: timedelta, kind: str | None = None, *, per_kind: int = 12) -> list[Chart]:
    """Fold the events since the last fold (at most FOLD_AT_MOST), then the charts of the last `span`:
    all kinds, then the busiest."""
    s.throughput_refresh(max_events=FOLD_AT_MOST)
    now = s.db_now_minus(timedelta(0))
    return charts(s.throughput(now - span, kind), now - span, now, per_kind=per_kind)


def _local(when: Any, timezone: str) -> str:
    if when is None:
        return ""
    try:
        local = when.astimezone(zone(timezone))
    except LedgerError:
        local = when
    return f"{local:%Y-%m-%d %H:%M:%S %Z}"


env.filters["inzone"] = _local


class _Page(Page):
    def __init__(self, pool: ConnectionPool[Any]) -> None:
        self.pool = pool


# ---------------------------------------------------------------- the failed list: replay all that match


class FailedReplayAll(_Page):
    """POST /failed/replay: replay every dead letter matching the form's filter, as one act (a batch)."""

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        form_post(req, "/failed", self.replay_all)

    def replay_all(self, form: dict[str, str]) -> str:
        try:
            match = JobFilter(
                kind=form.get("kind") or None, queue=form.get("queue") or None,
                since=parse_time((form.get("since") or "")[:200] or None, "since", durations=True),
                error_like=form.get("error_like") or None, search=form.get("search") or None,
            )  # fmt: skip
        except ValidationError as exc:
            raise InvalidArguments(f"invalid filter: {format_validation_error(exc)}") from None
        if match.empty:
            raise InvalidArguments("choose a filter first: replaying all dead letters at once takes one")
        reason = form_reason(form)
        if not reason:
            raise InvalidArguments("reason: say why (it is recorded in every replayed job's history)")
        dry_run = form.get("dry_run") == "1"
        with store(self.pool) as s:
            result = s.jobs_bulk("replay", match, reason=reason, actor="dashboard", via="dashboard",
                                 dry_run=dry_run)  # fmt: skip
        if dry_run:
            text = f"would replay {len(result.done)} job(s); nothing changed (preview)"
        else:
            text = f"replayed {len(result.done)} job(s) in batch {result.batch}"
        if result.refused:
            refused = "; ".join(f"{r['reason']}" for r in result.refused[:3])
            text += f"; {len(result.refused)} refused: {refused}"
        return text


# ---------------------------------------------------------------- queues


class Queues(_Page):
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        with store(self.pool) as s:
            queues = queue_views(s)
            limits = s.limits()
        self.render(req, resp, "queues.html", queues=queues, limits=limits)


def _whole(form: dict[str, str], field: str) -> int | None:
    text = (form.get(field) or "").strip()
    if not text:
        return None
    if not (text.isascii() and text.isdigit()) or len(text) > 9:  # "²".isdigit() is True
        raise InvalidArguments(f"{field} {text[:100]!r}: write a whole number of at least 1", [field])
    return int(text)


class LimitSet(_Page):
    """POST /limits from the queues page: declare or change a scope's limit (the CLI's `ledger limit set`)."""

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        form_post(req, "/queues", self.set)

    def set(self, form: dict[str, str]) -> str:
        scope = check_scope((form.get("scope") or "").strip())
        rate = (form.get("rate") or "").strip()
        starts, per = parse_rate(rate) if rate else (None, None)
        limit = limit_of(_whole(form, "concurrency"), starts, per, (form.get("key") or "").strip() or None)
        with store(self.pool) as s:
            s.limit_set(scope, limit)
        return f"limit {scope} set; it applies to jobs enqueued from now on"


class LimitClear(_Page):
    """POST /limits/{scope}/clear from the queues page (the CLI's `ledger limit clear`)."""

    def on_post(self, req: falcon.Request, resp: falcon.Response, scope: str) -> None:
        def clear(form: dict[str, str]) -> str:
            check_scope(scope)
            with store(self.pool) as s:
                if not s.limit_clear(scope):
                    raise NotFound(f"no limit on {scope}")
            return f"limit {scope} cleared"

        form_post(req, "/queues", clear)


class PauseAction(_Page):
    """POST /queues/{name}/pause|resume and /schedules/{name}/pause|resume, from their pages."""

    def __init__(self, pool: ConnectionPool[Any], what: str, paused: bool) -> None:
        super().__init__(pool)
        self.what, self.paused = what, paused
        self.check = check_queue if what == "queue" else check_schedule

    def on_post(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        def act(form: dict[str, str]) -> str:
            self.check(name)
            reason = form_reason(form)
            with store(self.pool) as s:
                set_paused = s.queue_set_paused if self.what == "queue" else s.schedule_set_paused
                set_paused(name, self.paused, actor="dashboard", reason=reason)
            return f"{self.what} {name} {'paused' if self.paused else 'resumed'}"

        form_post(req, f"/{self.what}s", act)


# ---------------------------------------------------------------- schedules


class Schedules(_Page):
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        with store(self.pool) as s:
            schedules = schedule_views(s)
            history = s.schedule_events(limit=30)
        self.render(req, resp, "schedules.html", schedules=schedules, history=history)


# ---------------------------------------------------------------- activity


class Activity(_Page):
    """Outcomes per minute over the last hours: all kinds, then one chart per kind (or the one asked for)."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        try:
            hours = _int_param(req, "hours", 3, 1, 24) or 3
            kind = text_param(req, "kind")
        except LedgerError as exc:
            raise falcon.HTTPSeeOther("/activity?" + urlencode({"error": str(exc)})) from None
        with store(self.pool) as s:
            shown = throughput_charts(s, timedelta(hours=hours), kind)
        self.render(req, resp, "activity.html", charts=shown, hours=hours, choices=HOURS, kind=kind or "")


def install(app: falcon.App[Any, Any], pool: ConnectionPool[Any]) -> None:
    """Add these pages' routes (queue names and schedule names are path-safe by their rules)."""
    app.add_route("/failed/replay", FailedReplayAll(pool))
    app.add_route("/queues", Queues(pool))
    app.add_route("/queues/{name}/pause", PauseAction(pool, "queue", True))
    app.add_route("/queues/{name}/resume", PauseAction(pool, "queue", False))
    app.add_route("/limits", LimitSet(pool))
    app.add_route("/limits/{scope}/clear", LimitClear(pool))
    app.add_route("/schedules", Schedules(pool))
    app.add_route("/schedules/{name}/pause", PauseAction(pool, "schedule", True))
    app.add_route("/schedules/{name}/resume", PauseAction(pool, "schedule", False))
    app.add_route("/activity", Activity(pool))
