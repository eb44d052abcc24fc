"""Error handlers: every refusal becomes a JSON body with a status a client can act on."""

from __future__ import annotations

from typing import Any

import falcon
import psycopg

from ledger.errors import (
    DatabaseUnavailable,
    IllegalTransition,
    InvalidArguments,
    JobNotFound,
    LedgerError,
    NotFound,
    PermissionDenied,
    UnknownKind,
    VersionConflict,
)

__all__ = ["install"]

_STATUS: list[tuple[type[LedgerError], str, str]] = [
    (UnknownKind, falcon.HTTP_422, "unknown job kind"),
    (InvalidArguments, falcon.HTTP_422, "invalid input"),
    (IllegalTransition, falcon.HTTP_409, "illegal transition"),
    (VersionConflict, falcon.HTTP_409, "version conflict"),
    (JobNotFound, falcon.HTTP_404, "job not found"),
    (NotFound, falcon.HTTP_404, "not found"),
    (DatabaseUnavailable, falcon.HTTP_503, "database unavailable"),
    # The app's database role may not do this (a dashboard served by the read-only role, say).
    (PermissionDenied, falcon.HTTP_403, "not allowed to this database role"),
]


def _ledger_error(req: falcon.Request, resp: falcon.Response, ex: LedgerError, params: dict[str, Any]) -> None:
    status, title = falcon.HTTP_400, "bad request"
    for cls, s, t in _STATUS:
        if isinstance(ex, cls):
            status, title = s, t
            break
    body: dict[str, Any] = {"title": title, "description": str(ex)}
    if isinstance(ex, InvalidArguments):
        body["fields"] = ex.fields
    elif isinstance(ex, UnknownKind):
        body["fields"] = ["kind"]
    resp.status = status
    resp.media = body


def _database_down(req: falcon.Request, resp: falcon.Response, ex: psycopg.OperationalError, params: Any) -> None:
    resp.status = falcon.HTTP_503
    resp.media = {"title": "database unavailable", "description": str(ex).strip().splitlines()[0] if str(ex) else ""}


def install(app: falcon.App[Any, Any]) -> None:
    app.add_error_handler(LedgerError, _ledger_error)
    app.add_error_handler(psycopg.OperationalError, _database_down)
