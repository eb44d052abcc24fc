"""Wrong API tokens per client address, counted in the database so that every gunicorn process sees them.

In a process's memory each of gunicorn's processes (and each host) would
keep its own count, and a guesser would get the limit once per process. The
database is already shared by all of them, and one upsert per failure is
cheap next to a wrong token's cost: ledger.web_auth_fail in schema.sql.
"""

from __future__ import annotations

import ipaddress
import math
from datetime import timedelta
from typing import Any

import falcon
from psycopg_pool import ConnectionPool

from .stores import store

__all__ = ["Throttle", "client_of"]


def client_of(req: falcon.Request) -> str:
    """Who is guessing: the peer's address, an IPv6 one as its /64 (one host usually holds a whole /64).

    REMOTE_ADDR, not X-Forwarded-For, which any client can write: behind a
    reverse proxy every client shares the proxy's count.
    """
    address = req.remote_addr
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address[:100]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def _seconds(wait: timedelta | None) -> int | None:
    return None if wait is None else max(1, math.ceil(wait.total_seconds()))


class Throttle:
    """At most `max_failures` wrong tokens per client in a window of `window` from its first failure.

    Callers ask `wait` before they compare a token and report `fail` after a
    wrong one, so a client past the limit has no token compared at all, the
    right one included, until its window closes. Concurrent guesses from one
    client can all pass `wait` before any is counted: at most the server's
    threads beyond the limit, once per window.
    """

    def __init__(self, pool: ConnectionPool[Any], max_failures: int, window: timedelta) -> None:
        self.pool = pool
        self.max_failures = max_failures
        self.window = window

    def wait(self, client: str) -> int | None:
        """Seconds `client` must wait before a token it sends is compared; None when it may try now."""
        with store(self.pool) as s:
            return _seconds(s.web_auth_wait(client, self.max_failures))

    def fail(self, client: str) -> int | None:
        """Count a wrong token from `client`; the seconds it must now wait, None while under the limit."""
        with store(self.pool) as s:
            return _seconds(s.web_auth_fail(client, self.max_failures, self.window))

    def forgive(self, client: str) -> None:
        """Forget `client`'s wrong tokens: it has just signed in with the right one."""
        with store(self.pool) as s:
            s.web_auth_forgive(client)

    @staticmethod
    def refusal(seconds: int) -> falcon.HTTPTooManyRequests:
        return falcon.HTTPTooManyRequests(
            title="too many wrong tokens",
            description=f"too many wrong API tokens from this address; try again in {seconds} s",
            retry_after=seconds,
        )
