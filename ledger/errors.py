"""Errors a person can act on, and the mapping from the database's refusals."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

__all__ = [
    "ConfigError",
    "DatabaseUnavailable",
    "IllegalTransition",
    "InvalidArguments",
    "JobFailed",
    "JobNotFound",
    "LedgerError",
    "NotFound",
    "PermissionDenied",
    "UnknownKind",
    "VersionConflict",
    "from_database",
    "refusals",
]


class LedgerError(Exception):
    """Base of every refusal; str() is the message to show a person."""


class ConfigError(LedgerError):
    """Configuration is missing or wrong."""


class DatabaseUnavailable(LedgerError):
    """The database cannot be reached."""


class UnknownKind(LedgerError):
    """A job kind that no one registered."""


class InvalidArguments(LedgerError):
    """Arguments or options that do not validate; the message names the field(s)."""

    def __init__(self, message: str, fields: list[str] | None = None) -> None:
        super().__init__(message)
        self.fields = fields if fields is not None else _leading_field(message)


def _leading_field(message: str) -> list[str]:
    """schema.sql's LG004 messages start with the field: `priority 12: must be ...`."""
    match = re.match(r"(?:field )?'?([A-Za-z_][\w.]*)'?[ :]", message)
    return [match.group(1)] if match else []


class IllegalTransition(LedgerError):
    """The job's state does not allow the change (SQLSTATE LG001)."""


class VersionConflict(LedgerError):
    """The job changed since it was read (SQLSTATE LG002)."""


class NotFound(LedgerError):
    """Nothing has that name or id: a schedule, a limit (SQLSTATE LG006), or a job (JobNotFound)."""


class JobNotFound(NotFound):
    """No job has that id (SQLSTATE LG003)."""


class JobFailed(LedgerError):
    """A job waited for (client.wait) ended without succeeding: discarded or cancelled, with its last error."""

    def __init__(self, job_id: int, state: str, last_error: str | None) -> None:
        why = f": {last_error}" if last_error else ""
        super().__init__(f"job {job_id} was {state}{why}")
        self.job_id, self.state, self.last_error = job_id, state, last_error


class PermissionDenied(LedgerError):
    """The database role may not do this (SQLSTATE 42501): a read-only role writing, or a role
    the ledger does not know (`ledger roles` grants them)."""


_BY_SQLSTATE: dict[str, type[LedgerError]] = {
    "LG001": IllegalTransition,
    "LG002": VersionConflict,
    "LG003": JobNotFound,
    "LG004": InvalidArguments,
    "LG005": IllegalTransition,
    "LG006": NotFound,
    "23505": VersionConflict,  # unique (job_id, version): a racing writer appended first
    "42501": PermissionDenied,
}


def from_database(exc: psycopg.Error) -> LedgerError | None:
    """The LedgerError for a refusal raised by schema.sql, or None if it is not one."""
    cls = _BY_SQLSTATE.get(exc.sqlstate or "")
    if cls is None:
        return None
    diag = exc.diag.message_primary or str(exc)
    return cls(diag)


@contextmanager
def refusals() -> Iterator[None]:
    """Re-raise the database's refusals (schema.sql's LG codes) as LedgerErrors."""
    try:
        yield
    except psycopg.Error as exc:
        mapped = from_database(exc)
        if mapped is None:
            raise
        raise mapped from None
