"""Dashboard sessions: a random id in the cookie, only its hash in the database, a TTL and a sign-out.

The id is `secrets.token_urlsafe(32)` (256 random bits), so it says nothing
about the API token and cannot be guessed; the database keeps its SHA-256
(ledger.web_sessions), so a copy of the table opens nothing. Nothing is
signed, so no signing library (itsdangerous) is needed: the database row is
what makes a cookie valid, and deleting it is what sign-out does.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import timedelta
from typing import Any

import falcon
from psycopg_pool import ConnectionPool

from .stores import store

__all__ = ["SESSION_COOKIE", "Sessions", "session_hash"]

SESSION_COOKIE = "ledger_session"
# What token_urlsafe(32) makes: anything else is refused without a query.
_SESSION_ID = re.compile(r"[A-Za-z0-9_-]{43}")


def session_hash(session_id: str) -> bytes:
    """What the database keeps of a session id. A plain hash suffices (no salt, no slow KDF):
    the id is 256 random bits, not a password a dictionary could reach."""
    return hashlib.sha256(session_id.encode()).digest()


class Sessions:
    def __init__(self, pool: ConnectionPool[Any], ttl: timedelta) -> None:
        self.pool = pool
        self.ttl = ttl

    def start(self, req: falcon.Request, resp: falcon.Response) -> None:
        """A new session, its cookie set on `resp` to expire with it."""
        session_id = secrets.token_urlsafe(32)
        with store(self.pool) as s:
            s.web_session_start(session_hash(session_id), self.ttl)
        resp.set_cookie(
            SESSION_COOKIE, session_id, max_age=int(self.ttl.total_seconds()), secure=req.scheme == "https",
            http_only=True, same_site="Strict", path="/",
        )  # fmt: skip

    def live(self, req: falcon.Request) -> bool:
        """Whether the request's cookie names a session that has neither expired nor ended."""
        session_id = req.cookies.get(SESSION_COOKIE, "")
        if not _SESSION_ID.fullmatch(session_id):
            return False
        with store(self.pool) as s:
            return s.web_session_check(session_hash(session_id)) is not None

    def end(self, req: falcon.Request, resp: falcon.Response) -> None:
        """End the request's session (if any) in the database, and tell the browser to drop the cookie."""
        session_id = req.cookies.get(SESSION_COOKIE, "")
        if _SESSION_ID.fullmatch(session_id):
            with store(self.pool) as s:
                s.web_session_end(session_hash(session_id))
        resp.unset_cookie(SESSION_COOKIE, path="/")
