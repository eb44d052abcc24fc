"""The store on a connection of the web app's pool: how every resource reaches the database."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from psycopg_pool import ConnectionPool

from ledger.store import Store

__all__ = ["store"]


@contextmanager
def store(pool: ConnectionPool[Any], *, timeout: float | None = None) -> Iterator[Store]:
    """A Store on a pooled connection for the length of the block (`timeout`: how long to wait for one)."""
    with pool.connection(timeout=timeout) as conn:
        yield Store(conn)
