"""What every `ledger` command shares: the typer app, one-line errors, the store, common arguments."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

import psycopg
import typer
from psycopg.conninfo import conninfo_to_dict

from ..console import fail
from ..db import connect, database_url
from ..errors import ConfigError, LedgerError, PermissionDenied
from ..migrate import migrate, schema_version
from ..settings import get_settings
from ..store import Store

__all__ = ["APP_OPTION", "JOB_ID", "MAX_ID", "app", "db_app", "friendly", "operator", "store"]

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,  # help texts name [tool.ledger]: not markup
    help="The job ledger: jobs as an append-only history.",
)
db_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="The embedded development database.")
app.add_typer(db_app, name="db")

P = ParamSpec("P")
R = TypeVar("R")

MAX_ID = 2**63 - 1
"""Job ids are PostgreSQL bigints."""


def _role() -> str:
    try:
        return str(conninfo_to_dict(database_url()).get("user") or os.environ.get("USER") or "?")
    except (LedgerError, psycopg.Error):
        return "?"


def friendly(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn a refusal or a database error into one line on stderr and a non-zero exit (never a traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except (psycopg.errors.InsufficientPrivilege, PermissionDenied) as exc:
            # Raised by the database directly, or mapped by the store (ledger.errors).
            reason = (
                str(exc) if isinstance(exc, PermissionDenied) else exc.diag.message_primary or str(exc).splitlines()[0]
            )
            fail(
                f"the database refused role {_role()!r}: {reason}; connect (DATABASE_URL) as a role "
                "granted the ledger's privileges (`ledger roles`), or as its owner to migrate"
            )
        except LedgerError as exc:
            fail(str(exc))
        except psycopg.Error as exc:
            fail(f"database error: {' '.join(str(exc).split()) or type(exc).__name__}")

    return wrapper


@contextmanager
def store() -> Iterator[Store]:
    """A store on a connection to a database that has the schema.

    In development the schema is applied when missing; in production the
    command refuses and says to run `ledger migrate`, so a read never
    changes a production database's schema behind an operator's back.
    """
    with connect(database_url()) as conn:
        if get_settings().production:
            have, want = Store(conn).schema_version(), schema_version()
            if have != want:
                raise ConfigError(f"the database's ledger schema is version {have}, not {want}; run `ledger migrate`")
        else:
            migrate(conn)
        yield Store(conn)


APP_OPTION = typer.Option(
    None, "--app", help="Module that registers your job kinds (else LEDGER_APP, else [tool.ledger] app)."
)


def _job_id(value: int) -> int:
    if not 1 <= value <= MAX_ID:
        raise typer.BadParameter(f"job ids are whole numbers from 1 to {MAX_ID}, not {value}")
    return value


JOB_ID = typer.Argument(..., help="The job id.", callback=_job_id)
"""Refused when parsed if out of the bigint range, rather than by the database's `function does not exist`."""


def operator() -> str:
    """Who is asking, for the replay and cancel events: LEDGER_OPERATOR, else the login name."""
    return os.environ.get("LEDGER_OPERATOR") or os.environ.get("USER") or "cli"
