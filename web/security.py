"""Middleware: security headers, body size, the API's bearer token, the dashboard's login and CSRF."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Any

import falcon

__all__ = ["BodyLimit", "DashboardAuth", "SecurityHeaders", "csrf_token", "session_value"]

SESSION_COOKIE = "ledger_session"
CSRF_COOKIE = "ledger_csrf"


def session_value(token: str) -> str:
    """What the login cookie holds: a MAC of the token, never the token itself."""
    return hmac.new(token.encode(), b"ledger-dashboard-session", hashlib.sha256).hexdigest()


def csrf_token(req: falcon.Request, resp: falcon.Response) -> str:
    """The double-submit CSRF token: a random cookie that every form must echo."""
    token = req.cookies.get(CSRF_COOKIE)
    if not token or len(token) != 32:
        token = secrets.token_hex(16)
        resp.set_cookie(CSRF_COOKIE, token, secure=req.scheme == "https", http_only=True, same_site="Strict", path="/")
    return token


class SecurityHeaders:
    def process_response(self, req: falcon.Request, resp: falcon.Response, resource: Any, ok: bool) -> None:
        resp.set_header("X-Content-Type-Options", "nosniff")
        resp.set_header("X-Frame-Options", "DENY")
        resp.set_header("Referrer-Policy", "same-origin")
        resp.set_header(
            "Content-Security-Policy",
            "default-src 'self'; style-src 'self'; script-src 'self'; img-src 'self' data:; "
            "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        )
        resp.set_header("Cache-Control", "no-store")


class BodyLimit:
    """413 before reading a body larger than the limit (declared or streamed)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        if req.content_length is not None and req.content_length > self.limit:
            raise falcon.HTTPContentTooLarge(
                title="request body too large",
                description=f"the body is {req.content_length} bytes; the limit is {self.limit}",
            )


class DashboardAuth:
    """With a token set: API writes need `Authorization: Bearer`, dashboard pages a login cookie.

    Every dashboard form POST must carry the CSRF cookie's value, token or not.
    """

    def __init__(self, token: str | None) -> None:
        self.token = token

    def _bearer_ok(self, req: falcon.Request) -> bool:
        given = (req.get_header("Authorization") or "").removeprefix("Bearer ").strip()
        return bool(self.token) and hmac.compare_digest(given.encode(), (self.token or "").encode())

    def process_resource(
        self, req: falcon.Request, resp: falcon.Response, resource: Any, params: dict[str, Any]
    ) -> None:
        area = getattr(resource, "area", "public")
        if (area == "api" and req.method in ("POST", "PUT", "PATCH", "DELETE")) or area == "debug":
            if self.token and not self._bearer_ok(req):
                raise falcon.HTTPUnauthorized(
                    title="authentication required",
                    description="send the API token as 'Authorization: Bearer <LEDGER_API_TOKEN>'",
                    challenges=["Bearer"],
                )
        elif area == "dashboard":
            if self.token:
                cookie = req.cookies.get(SESSION_COOKIE, "")
                if not hmac.compare_digest(cookie.encode(), session_value(self.token).encode()):
                    raise falcon.HTTPSeeOther(f"/login?next={falcon.uri.encode_value(req.relative_uri)}")
            if req.method == "POST":
                form = req.get_media()
                sent = str(form.get("csrf", "")) if isinstance(form, dict) else ""
                expected = req.cookies.get(CSRF_COOKIE, "")
                if not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
                    raise falcon.HTTPForbidden(
                        title="CSRF check failed", description="reload the page and submit the form again"
                    )
