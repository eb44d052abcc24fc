"""Finding the database and connecting to it, with errors a person can act on."""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import DictRow, dict_row

from .errors import ConfigError, DatabaseUnavailable
from .settings import Settings, get_settings

__all__ = ["connect", "database_url", "describe"]

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


def database_url(settings: Settings | None = None) -> str:
    """DATABASE_URL when set; in development, the embedded server; in production, an error.

    Logs one line, once per process, saying which database is in use.
    """
    settings = settings or get_settings()
    key = (settings.database_url, settings.env, str(settings.data_dir))
    if key in _resolved:
        return _resolved[key]
    if settings.database_url:
        url = settings.database_url
        log.info("database: %s (from DATABASE_URL)", describe(url))
    elif settings.production:
        raise ConfigError(
            "DATABASE_URL is required but unset (LEDGER_ENV=production); set it to a postgresql:// URL of your database"
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
        log.info("database: embedded PostgreSQL in %s (DATABASE_URL unset)", settings.data_dir / "pgdata")
    _resolved[key] = url
    return url


def connect(url: str | None = None, *, autocommit: bool = True, **kwargs: Any) -> psycopg.Connection[DictRow]:
    """A connection returning dict rows; DatabaseUnavailable with the reason when it fails."""
    url = url or database_url()
    try:
        return psycopg.connect(url, autocommit=autocommit, row_factory=dict_row, **kwargs)
    except psycopg.OperationalError as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise DatabaseUnavailable(
            f"cannot connect to {describe(url)}: {reason}; is the server running and DATABASE_URL right?"
        ) from exc
