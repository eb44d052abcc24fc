"""The client: validate and enqueue jobs, sync or async, alone or in the caller's transaction."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any

import psycopg
from psycopg.rows import DictRow, dict_row
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from .db import connect, database_url
from .errors import InvalidArguments, refusals
from .jsoncheck import check_json
from .kinds import Registry, default_registry, error_fields, format_validation_error
from .queries import query
from .store import EnqueueRow, enqueue_params

__all__ = ["AsyncClient", "Client", "JobRequest"]


def _time_not_number(value: Any) -> Any:
    # Lax pydantic would read 0.0 or "1700000000" as a Unix time; a job's time is ISO 8601.
    if value is None or isinstance(value, datetime):
        return value
    if isinstance(value, str) and not value.strip().lstrip("-").replace(".", "", 1).isdigit():
        return value
    raise ValueError("must be an ISO 8601 date-time with a zone, e.g. 2030-01-01T09:00:00+00:00")


class JobRequest(BaseModel):
    """One job to enqueue. Unset options take the kind's defaults. Strict: "5" is not a priority."""

    model_config = ConfigDict(extra="forbid")

    kind: StrictStr
    args: dict[str, Any] = Field(default_factory=dict)
    queue: StrictStr | None = Field(default=None, pattern=r"^[A-Za-z0-9_.:-]{1,50}$")
    priority: StrictInt | None = Field(default=None, ge=0, le=9)
    max_attempts: StrictInt | None = Field(default=None, ge=1, le=1000)
    run_at: Annotated[datetime | None, BeforeValidator(_time_not_number)] = None


def _request(item: JobRequest | Mapping[str, Any]) -> JobRequest:
    if isinstance(item, JobRequest):
        return item
    try:
        return JobRequest.model_validate(item)
    except ValidationError as exc:
        raise InvalidArguments(f"invalid job: {format_validation_error(exc)}", error_fields(exc)) from None


def prepare(registry: Registry, items: Iterable[JobRequest | Mapping[str, Any]]) -> list[EnqueueRow]:
    """Validate every job before anything is written: a bad one refuses the whole batch."""
    rows: list[EnqueueRow] = []
    for item in items:
        walked = isinstance(item, Mapping)
        if isinstance(item, Mapping):
            # Before pydantic sees them: it would turn NaN into null without a word.
            check_json(item.get("args") or {}, walk=True)
        req = _request(item)
        kind = registry.get(req.kind)
        if req.run_at is not None and req.run_at.tzinfo is None:
            raise InvalidArguments(
                "field 'run_at': must carry a time zone (e.g. 2026-01-01T09:00:00+00:00)", ["run_at"]
            )
        args = registry.validate_args(req.kind, req.args)
        # After validation, the size (defaults may add to it), and the whole walk for a
        # JobRequest, which was not walked above.
        check_json(args, walk=not walked)
        # run_at as the same instant in UTC: PostgreSQL refuses offsets past ±15:59 that
        # RFC 3339 allows (schemathesis found +17:42 ending in a 500).
        run_at = req.run_at.astimezone(UTC) if req.run_at is not None else None
        rows.append((
            req.kind,
            args,
            req.queue or kind.queue,
            kind.priority if req.priority is None else req.priority,
            req.max_attempts or kind.max_attempts,
            run_at,
        ))  # fmt: skip
    return rows


def _one(kind: str, args: Mapping[str, Any] | BaseModel | None, options: dict[str, Any]) -> JobRequest | dict[str, Any]:
    data = args.model_dump(mode="json") if isinstance(args, BaseModel) else dict(args or {})
    return {"kind": kind, "args": data, **{k: v for k, v in options.items() if v is not None}}


class Client:
    """Enqueue jobs. `conn=` joins the caller's connection and transaction; else its own connection."""

    def __init__(self, url: str | None = None, *, registry: Registry = default_registry) -> None:
        self.url = url
        self.registry = registry
        self._conn: psycopg.Connection[DictRow] | None = None

    def _connection(self) -> psycopg.Connection[DictRow]:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.url or database_url())
        return self._conn

    def enqueue(
        self,
        kind: str,
        args: Mapping[str, Any] | BaseModel | None = None,
        *,
        queue: str | None = None,
        priority: int | None = None,
        max_attempts: int | None = None,
        run_at: datetime | None = None,
        conn: psycopg.Connection[Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> int:
        """Enqueue one job; returns its id."""
        opts = {"queue": queue, "priority": priority, "max_attempts": max_attempts, "run_at": run_at}
        return self.enqueue_many([_one(kind, args, opts)], conn=conn, metadata=metadata)[0]

    def enqueue_many(
        self,
        jobs: Iterable[JobRequest | Mapping[str, Any]],
        *,
        conn: psycopg.Connection[Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> list[int]:
        """Enqueue many jobs in one statement; returns their ids in order."""
        rows = prepare(self.registry, jobs)
        conn = conn or self._connection()
        # The caller's connection may have any row factory; use our own cursor.
        with conn.cursor(row_factory=dict_row) as cur, refusals():
            cur.execute(query("job_enqueue_many"), enqueue_params(rows, metadata))
            return [r["id"] for r in cur.fetchall()]

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient:
    """The async twin of Client, on psycopg's AsyncConnection."""

    def __init__(self, url: str | None = None, *, registry: Registry = default_registry) -> None:
        self.url = url
        self.registry = registry
        self._conn: psycopg.AsyncConnection[Any] | None = None

    async def enqueue(
        self,
        kind: str,
        args: Mapping[str, Any] | BaseModel | None = None,
        *,
        queue: str | None = None,
        priority: int | None = None,
        max_attempts: int | None = None,
        run_at: datetime | None = None,
        conn: psycopg.AsyncConnection[Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> int:
        opts = {"queue": queue, "priority": priority, "max_attempts": max_attempts, "run_at": run_at}
        return (await self.enqueue_many([_one(kind, args, opts)], conn=conn, metadata=metadata))[0]

    async def enqueue_many(
        self,
        jobs: Sequence[JobRequest | Mapping[str, Any]],
        *,
        conn: psycopg.AsyncConnection[Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> list[int]:
        rows = prepare(self.registry, jobs)
        if conn is None:
            if self._conn is None or self._conn.closed:
                self._conn = await psycopg.AsyncConnection.connect(self.url or database_url(), autocommit=True)
            conn = self._conn
        async with conn.cursor(row_factory=dict_row) as cur:
            with refusals():
                await cur.execute(query("job_enqueue_many"), enqueue_params(rows, metadata))
            return [r["id"] for r in await cur.fetchall()]

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
