"""Middleware: security headers, body size, same-origin writes, and the dashboard forms' CSRF token."""

from __future__ import annotations

import hmac
import secrets
from typing import Any
from urllib.parse import urlsplit

import falcon

from .forms import read_form

__all__ = ["CSRF_COOKIE", "BodyLimit", "SameOrigin", "SecurityHeaders", "check_csrf", "csrf_token"]

CSRF_COOKIE = "ledger_csrf"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def csrf_token(req: falcon.Request, resp: falcon.Response) -> str:
    """The double-submit CSRF token: a random cookie that every form must echo."""
    token = req.cookies.get(CSRF_COOKIE)
    if not token or len(token) != 32:
        token = secrets.token_hex(16)
        resp.set_cookie(CSRF_COOKIE, token, secure=req.scheme == "https", http_only=True, same_site="Strict", path="/")
    return token


def check_csrf(req: falcon.Request) -> None:
    """403 unless the form's `csrf` field equals the CSRF cookie."""
    sent = read_form(req).get("csrf", "")
    expected = req.cookies.get(CSRF_COOKIE, "")
    if not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
        raise falcon.HTTPForbidden(title="CSRF check failed", description="reload the page and submit the form again")


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


class SameOrigin:
    """403 for a state-changing request that a browser sent from a page of another origin.

    Browsers say where a request comes from: `Origin` on every POST, and
    `Sec-Fetch-Site` on every request (current Chrome, Firefox, Safari); a
    page cannot forge either. The origin's host must be the one the request
    was sent to (`Host`, or the first proxy's forwarded host). A request with
    neither header is not from a browser page (curl, API clients, scripts)
    and passes; with a token set it still needs the token. This is what keeps
    a cross-site form from enqueueing through /api/jobs in development, where
    there is no token, and from signing a browser in or out (login CSRF).
    """

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        if req.method in SAFE_METHODS:
            return
        origin = req.get_header("Origin")
        if origin is not None:
            own = {req.netloc.lower(), req.forwarded_host.lower()}
            sent = urlsplit(origin.strip()).netloc.lower() if origin.strip() != "null" else ""
            if sent not in own:
                raise self._refusal(f"Origin {origin[:100]!r} is not this site")
        else:
            site = (req.get_header("Sec-Fetch-Site") or "none").strip().lower()
            if site not in ("same-origin", "none"):
                raise self._refusal(f"Sec-Fetch-Site {site[:30]!r}: the request came from another site")

    @staticmethod
    def _refusal(why: str) -> falcon.HTTPForbidden:
        return falcon.HTTPForbidden(
            title="cross-origin request refused",
            description=f"{why}; changes are accepted from this site's own pages or from clients that send no Origin",
        )
