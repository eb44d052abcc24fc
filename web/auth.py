"""Who may reach what: the API token as a bearer header, dashboard sessions, and the throttle before both.

Every resource names its area. Without a token (development) every area is
open. With LEDGER_API_TOKEN set:

| area      | routes                                | needs                                      |
| --------- | ------------------------------------- | ------------------------------------------ |
| api       | /api/*, /openapi.json (reads too)     | `Authorization: Bearer <token>`            |
| debug     | /debug/*                              | the bearer token                           |
| ops       | /healthz, /metrics                    | the bearer token, unless LEDGER_PUBLIC_OPS |
| dashboard | every page and form                   | a live session (else 303 to /login)        |
| signin    | /login, /logout                       | nothing (they are how one gets a session)  |
| public    | /static                               | nothing                                    |

Form posts of the dashboard and sign-in areas also need the CSRF token,
token or not; cross-origin writes are refused earlier (security.SameOrigin).
"""

from __future__ import annotations

import hmac
from typing import Any

import falcon
from falcon.uri import encode_value

from .security import check_csrf
from .sessions import Sessions
from .throttle import Throttle, client_of

__all__ = ["Access", "bearer", "token_matches"]

BEARER_NEEDED = "send the API token as 'Authorization: Bearer <LEDGER_API_TOKEN>'"


def bearer(req: falcon.Request) -> str | None:
    """The credentials of an `Authorization: Bearer ...` header (scheme in any case, RFC 7235); None otherwise."""
    scheme, _, credentials = (req.get_header("Authorization") or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return None
    return credentials.strip()


def token_matches(given: str, token: str) -> bool:
    """Compared in constant time, so the answer's timing says nothing about how much of a guess was right."""
    return hmac.compare_digest(given.encode(), token.encode())


class Access:
    """The middleware that applies the table above to every routed request (and sets req.context.signed_in)."""

    def __init__(self, token: str | None, sessions: Sessions, throttle: Throttle, *, public_ops: bool) -> None:
        self.token = token
        self.sessions = sessions
        self.throttle = throttle
        self.public_ops = public_ops

    def process_resource(
        self, req: falcon.Request, resp: falcon.Response, resource: Any, params: dict[str, Any]
    ) -> None:
        area = getattr(resource, "area", "public")
        req.context.signed_in = False
        if self.token:
            if area in ("api", "debug") or (area == "ops" and not self.public_ops):
                self._need_bearer(req, self.token)
            elif area == "dashboard":
                req.context.signed_in = self.sessions.live(req)
                if not req.context.signed_in:
                    back = req.relative_uri if req.method in ("GET", "HEAD") else "/"
                    raise falcon.HTTPSeeOther(f"/login?next={encode_value(back)}")
            elif area == "signin":
                req.context.signed_in = self.sessions.live(req)
        if area in ("dashboard", "signin") and req.method == "POST":
            check_csrf(req)

    def _need_bearer(self, req: falcon.Request, token: str) -> None:
        given = bearer(req)
        if given is None:
            raise falcon.HTTPUnauthorized(
                title="authentication required", description=BEARER_NEEDED, challenges=["Bearer"]
            )
        client = client_of(req)
        if (wait := self.throttle.wait(client)) is not None:
            raise Throttle.refusal(wait)
        if not token_matches(given, token):
            self.throttle.fail(client)
            raise falcon.HTTPUnauthorized(
                title="wrong API token", description=BEARER_NEEDED, challenges=['Bearer error="invalid_token"']
            )
