"""The client: validate and enqueue jobs, sync or async, alone or in the caller's transaction.

An *insert-only* client (`Client(insert_only=True)`, River's insert-only
client) also enqueues kinds whose code it does not have, by name: for a web
tier or a script that must not import the worker's code. Options and the
JSON of the args are still checked before anything is written; the args
themselves are validated by the worker that runs the job (a bad field is a
failed attempt naming it), and an unregistered kind takes the defaults of
ledger/defaults.py (queue `default`, priority 5, 25 attempts), not its
registration's: pass `queue=` and friends when they differ.

The caller's transaction may be a psycopg connection's, a SQLAlchemy
session's or Django's (ledger/orm.py finds the psycopg connection under
them). With OpenTelemetry configured, an enqueue is a span and records its
trace context in the job's history (ledger/tracing.py).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple, Protocol

import psycopg
from pydantic import BaseModel, TypeAdapter, ValidationError

from . import tracing
from .db import connect, connect_async, connection_problem, database_url
from .errors import DatabaseUnavailable, InvalidArguments, JobFailed, JobNotFound, UnknownKind
from .jsoncheck import check_json, dump_json
from .kinds import Kind, Registry, default_registry, error_fields, format_validation_error
from .models import JobId, JobRequest, QueueState, Unique
from .orm import AsyncTransactional, Transactional, async_psycopg_connection, psycopg_connection
from .statements import EnqueueRow, UniqueRow
from .store import Store
from .store_async import AsyncStore

__all__ = ["AsyncClient", "Client", "InlineRunner", "JobRequest", "set_inline_runner"]

_REQUESTS = TypeAdapter(list[JobRequest])


def _requests(items: Sequence[Mapping[str, Any]]) -> list[JobRequest]:
    """The jobs validated in one pydantic call."""
    try:
        return _REQUESTS.validate_python(items)
    except ValidationError as exc:
        where = format_validation_error(exc, positions=range(len(items)))
        raise InvalidArguments(f"invalid job: {where}", error_fields(exc, batch=True)) from None


class Prepared(NamedTuple):
    """Jobs ready for AsyncStore.enqueue_many: their rows, and their uniqueness (None when no job has a rule)."""

    rows: list[EnqueueRow]
    unique: list[UniqueRow | None] | None


def prepare(registry: Registry, items: Iterable[Mapping[str, Any]], *, insert_only: bool = False) -> Prepared:
    """Validate every job before anything is written: a bad one refuses the whole batch.

    insert_only: a kind the registry does not know is enqueued with its args
    unvalidated (JSON-checked only) and the default options (see the module).

    Each job's args come back as the JSON text that goes to the database:
    dump_json checks them on the one dump that is sent. The requests, and the
    args of each kind, are validated one list per pydantic call. Together
    these took the client from ~12 to ~3 ms per 1,000 jobs (measured here).
    """
    items = list(items)
    for item in items:
        if isinstance(item, Mapping) and (raw := item.get("args")):
            # Before pydantic sees them: it would turn NaN into null without a word.
            check_json(raw)
    reqs = _requests(items)
    by_kind: dict[str, list[int]] = {}
    for i, req in enumerate(reqs):
        by_kind.setdefault(req["kind"], []).append(i)
        run_at = req.get("run_at")
        if run_at is not None and run_at.tzinfo is None:
            raise InvalidArguments(
                "field 'run_at': must carry a time zone (e.g. 2026-01-01T09:00:00+00:00)", ["run_at"]
            )
    rows: list[EnqueueRow] = [None] * len(reqs)  # type: ignore[list-item]  # each filled below, in input order
    unique: list[UniqueRow | None] | None = None
    for name, where in by_kind.items():
        kind = _kind(registry, name, insert_only)
        given = [reqs[i].get("args") or {} for i in where]
        validated = given if kind is UNREGISTERED else registry.validate_args_many(name, given, where)
        for i, value in zip(where, validated, strict=True):
            req = reqs[i]
            priority = req.get("priority")
            queue = req.get("queue") or kind.queue
            rows[i] = (
                name,
                # After validation too: defaults and validators may add to the args.
                dump_json(value),
                queue,
                kind.priority if priority is None else priority,
                req.get("max_attempts") or kind.max_attempts,
                _utc(req.get("run_at")),
            )
            rule = req.get("unique") or kind.unique
            if rule is not None:
                unique = unique or [None] * len(reqs)
                unique[i] = (unique_key(name, queue, value, rule), rule.period, sorted(rule.states))
    return Prepared(rows, unique)


def _utc(run_at: datetime | None) -> datetime | None:
    """The same instant in UTC: PostgreSQL refuses offsets past ±15:59 that RFC 3339 allows
    (schemathesis found +17:42 ending in a 500), and year 1 with a positive offset is no date at all."""
    if run_at is None:
        return None
    try:
        return run_at.astimezone(UTC)
    except OverflowError:
        message = f"field 'run_at': {run_at.isoformat()} is before the first date there is"
        raise InvalidArguments(message, ["run_at"]) from None


def unique_key(kind: str, queue: str, args: Mapping[str, Any], rule: Unique) -> str:
    """The key a job's uniqueness rule gives it: `kind|key:<key>`, or the kind, the queue when `by_queue`,
    and a digest of its args (all, or the fields the rule names) in a canonical form."""
    parts = [kind]
    if rule.key is not None:
        return f"{kind}|key:" + rule.key.encode("utf-8", "backslashreplace").decode()  # a lone surrogate, escaped
    if rule.by_queue:
        parts.append(f"queue:{queue}")
    if rule.args:
        chosen = dict(args) if rule.args is True else {k: args.get(k) for k in sorted(rule.args)}
        canonical = json.dumps(chosen, sort_keys=True, separators=(",", ":"))  # ASCII: lone surrogates escaped
        parts.append("args:" + hashlib.sha256(canonical.encode()).hexdigest()[:32])
    return "|".join(parts)


UNREGISTERED: Kind[Any] = Kind("(unregistered)", BaseModel)
"""What an insert-only client knows of a kind it has no code for: the defaults of ledger/defaults.py."""


def _kind(registry: Registry, name: str, insert_only: bool) -> Kind[Any]:
    try:
        return registry.get(name)
    except UnknownKind:
        if insert_only:
            return UNREGISTERED
        raise


class InlineRunner(Protocol):
    """Runs jobs the moment they are enqueued, on the connection (and in the transaction) that enqueued
    them: the pytest plugin's inline mode (ledger/worker/testing.py). None outside tests."""

    def run(self, conn: psycopg.Connection[Any], ids: Sequence[int]) -> None: ...

    async def run_async(self, conn: psycopg.AsyncConnection[Any], ids: Sequence[int]) -> None: ...


_inline: InlineRunner | None = None


def set_inline_runner(runner: InlineRunner | None) -> InlineRunner | None:
    """Install (or, with None, remove) the runner every enqueue of this process hands its jobs to;
    returns the one it replaces. The core has no runner: the test plugin brings one."""
    global _inline
    before, _inline = _inline, runner
    return before


def _one(kind: str, args: Mapping[str, Any] | BaseModel | None, options: dict[str, Any]) -> dict[str, Any]:
    data = args.model_dump(mode="json") if isinstance(args, BaseModel) else dict(args or {})
    return {"kind": kind, "args": data, **{k: v for k, v in options.items() if v is not None}}


DONE = "ledger:done"
"""Where a job someone waits for announces its end (schema.sql: ledger._append, ledger.job_succeed_many)."""

_RUNNING = object()


def _ended(job_id: int, outcome: Mapping[str, Any] | None) -> Any:
    """The result of a job that succeeded; JobFailed or JobNotFound; _RUNNING while it has not ended."""
    if outcome is None:
        raise JobNotFound(f"job {job_id} not found")
    state = str(outcome["state"])
    if state == "succeeded":
        return outcome["result"]  # jsonb, decoded by psycopg (the waiter's own connection)
    if state in ("discarded", "cancelled"):
        raise JobFailed(job_id, state, outcome["last_error"])
    return _RUNNING


class Client:
    """Enqueue jobs. `conn=` joins the caller's connection and transaction; else its own connection.

    insert_only=True: also enqueue kinds this process has no code for (see the module's docstring).
    """

    def __init__(
        self, url: str | None = None, *, registry: Registry = default_registry, insert_only: bool = False
    ) -> None:
        self.url = url
        self.registry = registry
        self.insert_only = insert_only
        self._conn: psycopg.Connection[Any] | None = None

    def _connection(self) -> psycopg.Connection[Any]:
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
        unique: Unique | None = None,
        conn: Transactional | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> JobId:
        """Enqueue one job; returns its id. `conn`: a psycopg connection, SQLAlchemy Session or
        Connection, or Django's connection, whose transaction the job joins."""
        opts = {"queue": queue, "priority": priority, "max_attempts": max_attempts, "run_at": run_at, "unique": unique}
        return self.enqueue_many([_one(kind, args, opts)], conn=conn, metadata=metadata)[0]

    def enqueue_many(
        self,
        jobs: Iterable[Mapping[str, Any]],
        *,
        conn: Transactional | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> list[JobId]:
        """Enqueue many jobs in one statement; returns their ids in order."""
        rows, unique = prepare(self.registry, jobs, insert_only=self.insert_only)
        if not rows:
            return []
        target = psycopg_connection(conn) if conn is not None else self._connection()
        with tracing.enqueue_span([r[0] for r in rows], [r[2] for r in rows], metadata) as (span, meta):
            ids = Store(target).enqueue_many(rows, meta, unique=unique)
            tracing.enqueued(span, ids)
        if _inline is not None:
            _inline.run(target, ids)
        return ids

    def wait(self, job_id: int, timeout: float | None = None) -> Any:
        """Wait until job `job_id` ends and return its result (what its handler returned; None if nothing).

        Raises JobFailed with the job's last error when it was discarded or cancelled,
        JobNotFound for no such job, TimeoutError after `timeout` seconds. Woken by
        the job's end (NOTIFY `ledger:done`, sent only for jobs someone waits for), not
        by polling; on a connection of its own, so it works inside or outside a transaction.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with connect(self.url or database_url()) as conn:
            store = Store(conn)
            store.listen([DONE])
            store.wait_begin(job_id)
            try:
                while True:
                    found = _ended(job_id, store.job_outcome(job_id))
                    if found is not _RUNNING:
                        return found
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise TimeoutError(f"job {job_id} did not end within {timeout:g}s")
                    # Any job's end wakes this waiter; it looks again, whichever ended.
                    for _ in conn.notifies(timeout=min(left, 5.0) if left is not None else 5.0, stop_after=1):
                        pass
            finally:
                store.wait_end(job_id)

    def pause(self, queue: str, *, reason: str | None = None, by: str | None = None) -> QueueState:
        """Stop every worker of the fleet from claiming `queue` (running jobs finish; enqueues still work),
        recorded with who and why; `ledger queue pause` from code."""
        return Store(self._connection()).queue_set_paused(queue, True, actor=by, reason=reason)

    def resume(self, queue: str, *, reason: str | None = None, by: str | None = None) -> QueueState:
        """Let workers claim a paused `queue` again (LedgerError if it is not paused)."""
        return Store(self._connection()).queue_set_paused(queue, False, actor=by, reason=reason)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient:
    """The async twin of Client, on psycopg's AsyncConnection."""

    def __init__(
        self, url: str | None = None, *, registry: Registry = default_registry, insert_only: bool = False
    ) -> None:
        self.url = url
        self.registry = registry
        self.insert_only = insert_only
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
        unique: Unique | None = None,
        conn: AsyncTransactional | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> JobId:
        """Enqueue one job; returns its id. `conn`: a psycopg AsyncConnection, or a SQLAlchemy
        AsyncSession or AsyncConnection, whose transaction the job joins."""
        opts = {"queue": queue, "priority": priority, "max_attempts": max_attempts, "run_at": run_at, "unique": unique}
        return (await self.enqueue_many([_one(kind, args, opts)], conn=conn, metadata=metadata))[0]

    async def enqueue_many(
        self,
        jobs: Sequence[Mapping[str, Any]],
        *,
        conn: AsyncTransactional | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> list[JobId]:
        rows, unique = prepare(self.registry, jobs, insert_only=self.insert_only)
        if not rows:
            return []
        target = await async_psycopg_connection(conn) if conn is not None else await self.connect()
        with tracing.enqueue_span([r[0] for r in rows], [r[2] for r in rows], metadata) as (span, meta):
            ids = await AsyncStore(target).enqueue_many(rows, meta, unique=unique)
            tracing.enqueued(span, ids)
        if _inline is not None:
            await _inline.run_async(target, ids)
        return ids

    async def connect(self) -> psycopg.AsyncConnection[Any]:
        """The client's own connection (autocommit), opened now if it is not open yet."""
        if self._conn is None or self._conn.closed:
            url = self.url or database_url()
            try:
                self._conn = await connect_async(url)
            except psycopg.OperationalError as exc:
                raise DatabaseUnavailable(connection_problem(url, exc)) from exc
        return self._conn

    async def wait(self, job_id: int, timeout: float | None = None) -> Any:
        """The async twin of Client.wait: the job's result, JobFailed, JobNotFound or TimeoutError."""
        deadline = None if timeout is None else time.monotonic() + timeout
        url = self.url or database_url()
        try:
            conn = await connect_async(url)
        except psycopg.OperationalError as exc:
            raise DatabaseUnavailable(connection_problem(url, exc)) from exc
        async with conn:
            store = AsyncStore(conn)
            await store.listen([DONE])
            await store.wait_begin(job_id)
            try:
                while True:
                    found = _ended(job_id, await store.job_outcome(job_id))
                    if found is not _RUNNING:
                        return found
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise TimeoutError(f"job {job_id} did not end within {timeout:g}s")
                    async for _ in conn.notifies(timeout=min(left, 5.0) if left is not None else 5.0, stop_after=1):
                        pass
            finally:
                await store.wait_end(job_id)

    async def pause(self, queue: str, *, reason: str | None = None, by: str | None = None) -> QueueState:
        """The async twin of Client.pause."""
        return await AsyncStore(await self.connect()).queue_set_paused(queue, True, actor=by, reason=reason)

    async def resume(self, queue: str, *, reason: str | None = None, by: str | None = None) -> QueueState:
        """The async twin of Client.resume."""
        return await AsyncStore(await self.connect()).queue_set_paused(queue, False, actor=by, reason=reason)

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()

    async def __aenter__(self) -> AsyncClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
