"""The operator dashboard: server-rendered pages over the same store the API uses."""

from __future__ import annotations

import hmac
import json
from collections import defaultdict
from typing import Any
from urllib.parse import urlencode

import falcon
from jinja2 import Environment, PackageLoader, select_autoescape
from psycopg_pool import ConnectionPool

from ledger.errors import LedgerError
from ledger.states import JobState

from .api import list_params, text_param
from .security import SESSION_COOKIE, csrf_token, session_value
from .stores import store
from .timeline import timeline

__all__ = ["Dashboard"]

env = Environment(loader=PackageLoader("ledger.web", "templates"), autoescape=select_autoescape(default=True))
env.filters["ms"] = lambda v: "" if v is None else (f"{v:.0f} ms" if v < 10_000 else f"{v / 1000:.1f} s")
env.filters["when"] = lambda d: "" if d is None else d.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
env.filters["jsonpretty"] = lambda v: json.dumps(v, indent=2, sort_keys=True)


def _safe_next(value: Any, fallback: str) -> str:
    """Only same-site relative paths may be redirected to."""
    return value if isinstance(value, str) and value.startswith("/") and not value.startswith("//") else fallback


class _Page:
    area = "dashboard"

    def __init__(self, pool: ConnectionPool[Any], token: str | None) -> None:
        self.pool = pool
        self.token = token

    def render(self, req: falcon.Request, resp: falcon.Response, template: str, **ctx: Any) -> None:
        resp.content_type = falcon.MEDIA_HTML
        resp.text = env.get_template(template).render(
            csrf=csrf_token(req, resp),
            logged_in=bool(self.token),
            notice=req.get_param("notice"),
            error=req.get_param("error"),
            path=req.path,
            **ctx,
        )


class Overview(_Page):
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        with store(self.pool) as s:
            counts = s.job_counts()
            recent_failed = s.discarded(limit=5)
        table: dict[str, dict[str, int]] = defaultdict(dict)
        for c in counts:
            table[c.queue][c.state.value] = c.count
        self.render(req, resp, "overview.html", table=dict(sorted(table.items())), states=list(JobState),
                    recent_failed=recent_failed)  # fmt: skip


class Jobs(_Page):
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        try:
            params = list_params(req)
        except LedgerError as exc:
            raise falcon.HTTPSeeOther("/jobs?" + urlencode({"error": str(exc)})) from None
        with store(self.pool) as s:
            jobs = s.jobs(**params)
        older = None
        if len(jobs) == params["limit"]:
            keep = {k: v for k, v in params.items() if v is not None and k != "before"}
            older = "/jobs?" + urlencode({**keep, "before": jobs[-1].id})
        self.render(req, resp, "jobs.html", jobs=jobs, f=params, states=list(JobState), older=older)


class Failed(_Page):
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        try:
            kind, queue = text_param(req, "kind"), text_param(req, "queue")
        except LedgerError as exc:
            raise falcon.HTTPSeeOther("/failed?" + urlencode({"error": str(exc)})) from None
        with store(self.pool) as s:
            rows = s.discarded(kind=kind, queue=queue, limit=200)
        self.render(req, resp, "failed.html", rows=rows, f={"kind": kind, "queue": queue})


class JobPage(_Page):
    def on_get(self, req: falcon.Request, resp: falcon.Response, job_id: int) -> None:
        with store(self.pool) as s:
            job = s.job(job_id)
            events = s.events_for_job(job_id) if job else []
        if job is None:
            resp.status = falcon.HTTP_404
            self.render(req, resp, "missing.html", job_id=job_id)
            return
        self.render(req, resp, "job.html", job=job, entries=timeline(events), events=events)


class JobAction(_Page):
    """POST /jobs/{id}/replay|cancel from a form; redirects back with a notice or the refusal."""

    def __init__(self, pool: ConnectionPool[Any], token: str | None, action: str) -> None:
        super().__init__(pool, token)
        self.action = action

    def on_post(self, req: falcon.Request, resp: falcon.Response, job_id: int) -> None:
        form = req.get_media()
        reason = str(form.get("reason") or "")[:1000] or None
        back = _safe_next(form.get("next"), f"/jobs/{job_id}")
        try:
            with store(self.pool) as s:
                if self.action == "replay":
                    s.replay(job_id, actor="dashboard", reason=reason, metadata={"via": "dashboard"})
                else:
                    s.cancel(job_id, reason, metadata={"via": "dashboard", "by": "dashboard"})
            message = {"notice": f"job {job_id} {'replayed' if self.action == 'replay' else 'cancelled'}"}
        except LedgerError as exc:
            message = {"error": str(exc)}
        sep = "&" if "?" in back else "?"
        raise falcon.HTTPSeeOther(back + sep + urlencode(message))


class Login(_Page):
    area = "public"

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        self.render(req, resp, "login.html", next=_safe_next(req.get_param("next"), "/"), failed=False)

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        form = req.get_media()
        given = str(form.get("token", ""))
        target = _safe_next(form.get("next"), "/")
        csrf_ok = hmac.compare_digest(str(form.get("csrf", "")).encode(), req.cookies.get("ledger_csrf", "").encode())
        if self.token and csrf_ok and hmac.compare_digest(given.encode(), self.token.encode()):
            resp.set_cookie(SESSION_COOKIE, session_value(self.token), secure=req.scheme == "https",
                            http_only=True, same_site="Strict", path="/")  # fmt: skip
            raise falcon.HTTPSeeOther(target)
        resp.status = falcon.HTTP_401
        self.render(req, resp, "login.html", next=target, failed=True)


class Dashboard:
    """Adds the dashboard's routes to an app."""

    def __init__(self, pool: ConnectionPool[Any], token: str | None) -> None:
        self.pool = pool
        self.token = token

    def install(self, app: falcon.App[Any, Any]) -> None:
        app.add_route("/", Overview(self.pool, self.token))
        app.add_route("/jobs", Jobs(self.pool, self.token))
        app.add_route("/failed", Failed(self.pool, self.token))
        app.add_route("/jobs/{job_id:int}", JobPage(self.pool, self.token))
        app.add_route("/jobs/{job_id:int}/replay", JobAction(self.pool, self.token, "replay"))
        app.add_route("/jobs/{job_id:int}/cancel", JobAction(self.pool, self.token, "cancel"))
        app.add_route("/login", Login(self.pool, self.token))
