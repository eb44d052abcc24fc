"""Sign-in and sign-out of the dashboard: the API token in, a session cookie out (web/sessions.py)."""

from __future__ import annotations

import falcon

from .auth import token_matches
from .forms import local_path, read_form
from .pages import Page
from .sessions import Sessions
from .throttle import Throttle, client_of

__all__ = ["Login", "Logout"]


class Login(Page):
    """GET shows the form; POST compares the token (throttled per client) and starts a session."""

    area = "signin"

    def __init__(self, token: str | None, sessions: Sessions, throttle: Throttle) -> None:
        self.token = token
        self.sessions = sessions
        self.throttle = throttle

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        target = local_path(req.get_param("next"), "/")
        if not self.token:  # development: there is nothing to sign in to
            raise falcon.HTTPSeeOther(target)
        self.render(req, resp, "login.html", next=target, problem=None)

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        form = read_form(req)  # the CSRF token is checked already (auth.Access)
        target = local_path(form.get("next"), "/")
        if not self.token:
            raise falcon.HTTPSeeOther(target)
        client = client_of(req)
        wait = self.throttle.wait(client)
        if wait is not None:  # past the limit: no token is compared, the right one included
            resp.status = falcon.HTTP_429
            resp.retry_after = wait
            problem = f"Too many wrong tokens from your address: try again in {_minutes(wait)}."
        elif token_matches(form.get("token", ""), self.token):
            self.throttle.forgive(client)
            self.sessions.start(req, resp)
            raise falcon.HTTPSeeOther(target)
        else:
            resp.status = falcon.HTTP_401
            problem = "That token is not right."
            self.throttle.fail(client)
        self.render(req, resp, "login.html", next=target, problem=problem)


def _minutes(seconds: int) -> str:
    return f"{seconds} seconds" if seconds < 120 else f"{round(seconds / 60)} minutes"


class Logout(Page):
    """POST /logout (a form with the CSRF token): ends the session in the database and drops the cookie."""

    area = "signin"

    def __init__(self, sessions: Sessions) -> None:
        self.sessions = sessions

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        self.sessions.end(req, resp)
        raise falcon.HTTPSeeOther("/login?notice=signed+out")
