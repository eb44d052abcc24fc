"""The caller's transaction from an ORM: the psycopg connection under a SQLAlchemy session or Django's connection.

`Client.enqueue(..., conn=X)` joins X's transaction, so the job commits or
rolls back with the caller's rows. X may be a psycopg connection, or:

- a SQLAlchemy `Session` or `Connection` (sync), an `AsyncSession` or
  `AsyncConnection` (async), on the psycopg 3 dialect (`postgresql+psycopg://`):
  `session.connection()` begins the session's transaction if it has none,
  and the job is written on the very DBAPI connection it runs on;
- Django's `django.db.connection` (or `connections[alias]`) with the psycopg 3
  backend: inside `transaction.atomic()` the job joins that transaction; outside
  one Django is in autocommit, and the enqueue commits at once, as Django's own
  statements do.

Nothing here sends SQL: it only finds the connection and hands it to the store.
The ORMs are imported by the caller, never here: neither is a dependency.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeAlias

import psycopg

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection as SAConnection
    from sqlalchemy.ext.asyncio import AsyncConnection as SAAsyncConnection
    from sqlalchemy.ext.asyncio import AsyncSession
    from sqlalchemy.orm import Session

__all__ = ["AsyncTransactional", "Transactional", "async_psycopg_connection", "psycopg_connection"]

Transactional: TypeAlias = "psycopg.Connection[Any] | Session | SAConnection | Any"
"""What a sync enqueue can join: a psycopg connection, a SQLAlchemy Session or Connection, Django's connection."""

AsyncTransactional: TypeAlias = "psycopg.AsyncConnection[Any] | AsyncSession | SAAsyncConnection"
"""What an async enqueue can join: a psycopg AsyncConnection, a SQLAlchemy AsyncSession or AsyncConnection."""


def _origin(obj: object) -> str:
    return type(obj).__module__.split(".", 1)[0]


def _psycopg3(driver: object, where: str) -> Any:
    if isinstance(driver, psycopg.Connection | psycopg.AsyncConnection):
        return driver
    raise TypeError(
        f"{where} runs on {type(driver).__module__}.{type(driver).__name__}, not psycopg 3: "
        "use the psycopg dialect (postgresql+psycopg://) for SQLAlchemy, or install psycopg 3 for Django"
    )


def psycopg_connection(conn: Transactional) -> psycopg.Connection[Any]:
    """The psycopg connection (and so the transaction) behind `conn`."""
    if isinstance(conn, psycopg.Connection):
        return conn
    origin = _origin(conn)
    if origin == "sqlalchemy":
        from sqlalchemy.orm import Session, scoped_session

        # A Session begins its transaction here if it has none; Connection.connection
        # is the pool's proxy of the DBAPI connection that transaction runs on.
        sa_conn = conn.connection() if isinstance(conn, Session | scoped_session) else conn
        driver: psycopg.Connection[Any] = _psycopg3(sa_conn.connection.driver_connection, "this SQLAlchemy engine")
        return driver
    if origin == "django":
        django: Any = conn  # django.db.connection (a proxy) or connections[alias]; Django ships no types
        if django.vendor != "postgresql":
            raise TypeError(f"Django's connection is to {django.vendor}, not PostgreSQL")
        django.ensure_connection()
        django_driver: psycopg.Connection[Any] = _psycopg3(django.connection, "Django's connection")
        return django_driver
    if isinstance(conn, psycopg.AsyncConnection):
        raise TypeError("an AsyncConnection needs the AsyncClient")
    raise TypeError(
        f"cannot enqueue in a transaction of {type(conn).__name__}: pass a psycopg connection, "
        "a SQLAlchemy Session or Connection, or Django's connection"
    )


async def async_psycopg_connection(conn: AsyncTransactional) -> psycopg.AsyncConnection[Any]:
    """The psycopg AsyncConnection (and so the transaction) behind `conn`."""
    if isinstance(conn, psycopg.AsyncConnection):
        return conn
    if _origin(conn) == "sqlalchemy":
        from sqlalchemy.ext.asyncio import AsyncSession

        sa_conn = await conn.connection() if isinstance(conn, AsyncSession) else conn
        raw = await sa_conn.get_raw_connection()
        driver: psycopg.AsyncConnection[Any] = _psycopg3(raw.driver_connection, "this SQLAlchemy engine")
        return driver
    if isinstance(conn, psycopg.Connection):
        raise TypeError("a sync psycopg Connection needs the Client, not the AsyncClient")
    raise TypeError(
        f"cannot enqueue in a transaction of {type(conn).__name__}: pass a psycopg AsyncConnection, "
        "or a SQLAlchemy AsyncSession or AsyncConnection"
    )
