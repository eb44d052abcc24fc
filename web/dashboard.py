"""The operator dashboard: server-rendered pages over the same store the API uses."""

from __future__ import annotations

from collections import defaultdict
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

import falcon
from psycopg_pool import ConnectionPool

from ledger.errors import LedgerError
from ledger.models import JobFilter
from ledger.states import JobState

from .api import JOB_ID, form_reason, list_params
from .forms import form_post
from .operator_pages import install as install_operator_pages
from .operator_pages import throughput_charts
from .pages import Page
from .stores import store
from .timeline import timeline

__all__ = ["Dashboard"]


class _Page(Page):
    def __init__(self, pool: ConnectionPool[Any]) -> None:
        self.pool = pool


class Overview(_Page):
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        with store(self.pool) as s:
            counts = s.job_counts()
            recent_failed = s.discarded(limit=5)
            activity = throughput_charts(s, timedelta(hours=1), per_kind=0)
        table: dict[str, dict[str, int]] = defaultdict(dict)
        for c in counts:
            table[c.queue][c.state.value] = c.count
        self.render(req, resp, "overview.html", table=dict(sorted(table.items())), states=list(JobState),
                    recent_failed=recent_failed, chart=activity[0])  # fmt: skip


FILTERS = ("state", "kind", "queue", "since", "error_like", "search")
"""The filters of the jobs and failed pages, as their forms send them (`since` also 1h, 1d: that long ago)."""


def _raw_filters(req: falcon.Request) -> dict[str, str]:
    return {k: v for k in FILTERS if (v := req.get_param(k))}


class Jobs(_Page):
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        try:
            params = list_params(req, durations=True)
        except LedgerError as exc:
            raise falcon.HTTPSeeOther("/jobs?" + urlencode({"error": str(exc)})) from None
        with store(self.pool) as s:
            jobs = s.jobs(**params)
        older = None
        if len(jobs) == params["limit"]:
            older = "/jobs?" + urlencode({**_raw_filters(req), "before": jobs[-1].id})
        self.render(req, resp, "jobs.html", jobs=jobs, f=_raw_filters(req), states=list(JobState), older=older)


class Failed(_Page):
    """Dead letters, filtered and searched; with a filter, a form to replay all that match at once."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        try:
            params = list_params(req, durations=True)
            match = JobFilter(**{k: params[k] for k in ("kind", "queue", "since", "error_like", "search")})
        except LedgerError as exc:
            raise falcon.HTTPSeeOther("/failed?" + urlencode({"error": str(exc)})) from None
        with store(self.pool) as s:
            rows = s.discarded(**match.params(), limit=200)
            matching = None if match.empty else s.discarded_count(match)
        filters = _raw_filters(req)
        filters.pop("state", None)
        self.render(req, resp, "failed.html", rows=rows, f=filters, matching=matching,
                    here="/failed?" + urlencode(filters) if filters else "/failed")  # fmt: skip


class JobPage(_Page):
    def on_get(self, req: falcon.Request, resp: falcon.Response, job_id: int) -> None:
        with store(self.pool) as s:
            view = s.job_view(job_id)
        if view is None:
            resp.status = falcon.HTTP_404
            self.render(req, resp, "missing.html", job_id=job_id)
            return
        self.render(req, resp, "job.html", job=view.job, entries=timeline(view.events), events=view.events,
                    progress=view.progress, result=view.result)  # fmt: skip


class JobAction(_Page):
    """POST /jobs/{id}/replay|cancel from a form; redirects back with a notice or the refusal."""

    def __init__(self, pool: ConnectionPool[Any], action: str) -> None:
        super().__init__(pool)
        self.action = action

    def on_post(self, req: falcon.Request, resp: falcon.Response, job_id: int) -> None:
        def act(form: dict[str, str]) -> str:
            reason = form_reason(form)
            with store(self.pool) as s:
                if self.action == "replay":
                    s.replay(job_id, actor="dashboard", reason=reason, metadata={"via": "dashboard"})
                else:
                    s.cancel(job_id, reason, metadata={"via": "dashboard", "by": "dashboard"})
            return f"job {job_id} {'replayed' if self.action == 'replay' else 'cancelled'}"

        form_post(req, f"/jobs/{job_id}", act)


class Dashboard:
    """Adds the dashboard's routes to an app (sign-in and sign-out are web/signin.py's)."""

    def __init__(self, pool: ConnectionPool[Any]) -> None:
        self.pool = pool

    def install(self, app: falcon.App[Any, Any]) -> None:
        app.add_route("/", Overview(self.pool))
        app.add_route("/jobs", Jobs(self.pool))
        app.add_route("/failed", Failed(self.pool))
        # Ids beyond bigint match no route (404) rather than reach the database.
        app.add_route(f"/jobs/{JOB_ID}", JobPage(self.pool))
        app.add_route(f"/jobs/{JOB_ID}/replay", JobAction(self.pool, "replay"))
        app.add_route(f"/jobs/{JOB_ID}/cancel", JobAction(self.pool, "cancel"))
        install_operator_pages(app, self.pool)
