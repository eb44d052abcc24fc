"""What the web app checks once before gunicorn forks: settings, the app module, the database.

Without it, a typo in a setting or a database that is down surfaces in every
gunicorn worker as it boots: a hundred lines of tracebacks, workers retried,
then the arbiter gives up. Checked once in the master, the same mistake is
one `error:` line and a non-zero exit (web/gunicorn_conf.py calls `check`).
"""

from __future__ import annotations

import psycopg

from ledger.apps import load_app
from ledger.db import connect, database_url
from ledger.errors import ConfigError, LedgerError
from ledger.migrate import migrate, schema_version
from ledger.settings import Settings, get_settings, load_settings
from ledger.store import Store

from .settings import WebSettings

__all__ = ["check", "check_settings"]


def check_settings(settings: Settings, web: WebSettings) -> None:
    """ConfigError for settings the app must refuse to start with."""
    if settings.production and not web.api_token:
        raise ConfigError("LEDGER_API_TOKEN is required in production (it protects the API and the dashboard)")


def check() -> WebSettings:
    """Settings, the application module and the database, as the workers will find them; LedgerError if not.

    In development the schema is applied here (once, not by each worker); in
    production it must be at this code's version already (`ledger migrate`).
    """
    settings = get_settings()
    web = load_settings(WebSettings)
    check_settings(settings, web)
    load_app()
    url = database_url(settings)
    with connect(url) as conn:
        try:
            if settings.production:
                have, want = Store(conn).schema_version(), schema_version()
                if have != want:
                    raise ConfigError(
                        f"the database's ledger schema is version {have}, not {want}; run `ledger migrate`"
                    )
            else:
                migrate(conn)
        except psycopg.Error as exc:
            raise LedgerError(f"database error: {' '.join(str(exc).split())}") from None
    return web
