"""The store: the one door to the database. Every statement the project sends is a named method here.

The worker, the web app, the CLI and the client call these methods and never
execute SQL themselves (tests/test_structure.py keeps it so), so the tests
that drive the store specify what production runs. Commands call the
schema's functions (schema.sql), which append events and update the
projections in one transaction; the store adds types and turns the
database's refusals into LedgerErrors.

This file is the source: ledger/store.py, the sync Store, is generated from
it by `python scripts/async_to_sync.py` (psycopg generates its own sync code
from its async code the same way), and a test fails when the two drift.

With an autocommit connection each command is its own transaction; inside
the caller's transaction (`conn.transaction()`, or a connection that is not
autocommit) it joins it. Every method opens its own cursor, a plain
server-binding one with its own row factory, so a store works on a connection
of any row factory and any cursor factory: an ORM's connection (Django's sets
client-side binding, which cannot read the binary results of a claim) is
used as it is, inside the ORM's transaction (ledger/orm.py).
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus
from psycopg.rows import DictRow, dict_row, tuple_row
from psycopg.types.json import Jsonb

from .defaults import LEASE
from .errors import refusals
from .models import (
    BulkResult,
    DiscardedJob,
    Event,
    Job,
    JobCount,
    JobFilter,
    JobId,
    JobView,
    Limit,
    LimitRow,
    Partition,
    QueueState,
    QueueWait,
    ScheduleEvent,
    ScheduleRow,
    ThroughputRow,
    job_rows,
)
from .queries import query
from .statements import (
    Cycle,
    EnqueueRow,
    Success,
    UniqueRow,
    claim_params,
    command_params,
    enqueue_one_params,
    enqueue_params,
    succeed_params,
)

__all__ = ["AsyncStore"]


class AsyncStore:
    """Reads and commands on one psycopg connection."""

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.conn = conn

    def _cursor(self, row_factory: Any) -> psycopg.AsyncCursor[Any]:
        # Not conn.cursor(): that follows the connection's cursor_factory, which an ORM may have set.
        return psycopg.AsyncCursor(self.conn, row_factory=row_factory)

    async def _rows(self, name: str, params: Mapping[str, Any] | None = None) -> list[DictRow]:
        async with self._cursor(dict_row) as cur:
            with refusals():
                await cur.execute(query(name), params or {})
            return await cur.fetchall()

    async def _run(self, name: str, params: Mapping[str, Any] | None = None) -> None:
        """A statement whose rows, if any, nobody reads."""
        async with self._cursor(tuple_row) as cur:
            with refusals():
                await cur.execute(query(name), params or {})

    async def _tuples(self, name: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        """Rows as tuples: no dict per row (a batch enqueue returns a thousand)."""
        async with self._cursor(tuple_row) as cur:
            with refusals():
                await cur.execute(query(name), params)
            return await cur.fetchall()

    async def _one(self, name: str, params: Mapping[str, Any] | None = None) -> DictRow:
        rows = await self._rows(name, params)
        return rows[0]

    async def _job(self, name: str, params: Mapping[str, Any]) -> Job:
        return Job.model_validate(await self._one(name, params))

    # ------------------------------------------------------------ reads

    async def job(self, job_id: int) -> Job | None:
        rows = await self._rows("job_get", {"id": job_id})
        return Job.model_validate(rows[0]) if rows else None

    async def events_for_job(self, job_id: int) -> list[Event]:
        return [Event.model_validate(r) for r in await self._rows("events_for_job", {"id": job_id})]

    async def job_view(self, job_id: int) -> JobView | None:
        """The job with its history, latest progress and result; None when there is no such job."""
        job = await self.job(job_id)
        if job is None:
            return None
        return JobView.of(job, await self.events_for_job(job_id), await self.progress(job_id))

    async def discarded(
        self,
        *,
        kind: str | None = None,
        queue: str | None = None,
        limit: int = 50,
        since: datetime | None = None,
        error_like: str | None = None,
        search: str | None = None,
    ) -> list[DiscardedJob]:
        """Dead letters newest first, filtered (see JobFilter: `search` looks in args and errors)."""
        params = {"kind": kind, "queue": queue, "limit": limit, "since": since, "error_like": error_like,
                  "search": search}  # fmt: skip
        return [DiscardedJob.model_validate(r) for r in await self._rows("discarded_list", params)]

    async def jobs(
        self,
        *,
        state: str | None = None,
        kind: str | None = None,
        queue: str | None = None,
        before: int | None = None,
        limit: int = 50,
        since: datetime | None = None,
        error_like: str | None = None,
        search: str | None = None,
    ) -> list[Job]:
        """Jobs newest first, filtered (see JobFilter); pass the last id of a page as `before` for the next."""
        params = {
            "state": state, "kind": kind, "queue": queue, "before": before, "limit": limit, "since": since,
            "error_like": error_like, "search": search,
        }  # fmt: skip
        return [Job.model_validate(r) for r in await self._rows("jobs_list", params)]

    async def job_counts(self) -> list[JobCount]:
        """Jobs per state and queue, cheaply: see ledger.job_counts() in schema.sql."""
        return [JobCount.model_validate(r) for r in await self._rows("job_counts")]

    async def jobs_running_for_worker(self, worker: str) -> set[int]:
        return {r["id"] for r in await self._rows("jobs_running_for_worker", {"worker": worker})}

    async def projections_diff(self) -> list[DictRow]:
        """(projection, job_id, live, rebuilt) for every row a projection differs from the fold of the events."""
        return await self._rows("projections_diff")

    async def events_partitions(self) -> list[Partition]:
        return [Partition.model_validate(r) for r in await self._rows("events_partitions")]

    async def events_appended(self) -> int:
        total: int = (await self._one("events_appended"))["total"]
        return total

    async def metrics_histogram(self) -> list[DictRow]:
        """(metric, kind, le, count, sum) of every histogram bucket, after metrics_refresh()."""
        return await self._rows("metrics_histogram")

    async def trace_carriers(self, job_ids: Sequence[int]) -> dict[int, dict[str, str]]:
        """job id -> the trace context its enqueue recorded (the `trace` of its `enqueued` event's
        metadata, ledger/tracing.py), for the jobs that have one."""
        rows = await self._rows("trace_carriers", {"ids": list(job_ids)})
        # json.loads: a connection may load jsonb as text (Django's does; see models._json_text).
        return {r["job_id"]: json.loads(t) if isinstance(t := r["trace"], str) else t for r in rows}

    async def backend_pid(self) -> int:
        """The server process serving this statement (ledger/db.py compares it with the one the startup named)."""
        pid: int = (await self._one("backend_pid"))["pid"]
        return pid

    async def db_now_minus(self, period: timedelta) -> datetime:
        """now() - period on the database's clock, which every event's time is written with."""
        at: datetime = (await self._one("db_now_minus", {"period": period}))["at"]
        return at

    # ------------------------------------------------------------ commands

    async def enqueue_many(
        self,
        rows: Sequence[EnqueueRow],
        metadata: dict[str, Any] | None = None,
        *,
        unique: Sequence[UniqueRow | None] | None = None,
    ) -> list[JobId]:
        """Enqueue jobs in one statement; their ids in order. One bad row refuses all of them.

        `unique` (one entry per row, None for a job without a rule) makes the matching
        ones come back as the existing job's id with `duplicate` set.
        """
        if not rows:
            return []
        if len(rows) == 1 and not (unique and unique[0]):
            # One job without a rule: ledger.job_enqueue, scalar statements (docs/design.md, "One job").
            (job_id,) = (await self._tuples("job_enqueue", enqueue_one_params(rows[0], metadata)))[0]
            return [JobId(job_id, False)]
        found = await self._tuples("job_enqueue_many", enqueue_params(rows, metadata, unique))
        return [JobId(job_id, duplicate) for job_id, duplicate in found]

    async def claim(
        self, queue: str, n: int, worker: str, *, lease: timedelta = LEASE, kinds: Sequence[str] | None = None
    ) -> list[Job]:
        """Claim up to n due jobs of one queue (see ledger.job_claim for why one), as one statement;
        only of `kinds` when given (the kinds the worker can run).

        Binary results and a row factory that builds Jobs without validating
        them (models.job_rows): this is the worker's hot path.
        """
        cur = self._cursor(job_rows)
        await cur.execute(query("job_claim"), claim_params(queue, n, worker, lease, kinds), binary=True)
        return await cur.fetchall()

    async def cycle(
        self,
        successes: Sequence[Success],
        claims: Mapping[str, int],
        worker: str,
        *,
        lease: timedelta = LEASE,
        kinds: Sequence[str] | None = None,
    ) -> Cycle:
        """The worker's cycle: record `successes` and claim `claims` (queue -> n) in one transaction.

        Pipeline mode, and BEGIN and COMMIT sent as statements: everything,
        COMMIT included, goes out before the first result is read, so the
        cycle costs one round trip and one commit. (With `conn.transaction()`
        the COMMIT went out only after the results had been read, a second
        round trip per cycle: pickup latency p50 2.2 ms -> 1.5 ms without it.)
        If a statement fails, the pipeline skips the rest, COMMIT too, and the
        pool rolls the connection back. Inside the caller's transaction the
        statements join it instead (the tests' stateful machine drives it so).
        """
        own = self.conn.autocommit and self.conn.info.transaction_status == TransactionStatus.IDLE
        claimed: dict[str, list[Job]] = {}
        recorded: dict[int, bool] = {}
        async with self.conn.pipeline():
            if own:
                await self.conn.execute("BEGIN")
            done = self.conn.cursor(row_factory=dict_row)
            if successes:
                await done.execute(query("job_succeed_many"), succeed_params(successes, worker), binary=True)
            curs = {q: self.conn.cursor(row_factory=job_rows) for q in claims}
            for queue, n in claims.items():
                # Binary results: timestamps and arrays parse several times faster than text.
                params = claim_params(queue, n, worker, lease, kinds)
                await curs[queue].execute(query("job_claim"), params, binary=True)
            if own:
                await self.conn.execute("COMMIT")
            if successes:
                recorded = {r["job_id"]: r["recorded"] for r in await done.fetchall()}
            for queue, cur in curs.items():
                claimed[queue] = await cur.fetchall()
        return Cycle(claimed, recorded)

    async def succeed(
        self,
        job_id: int,
        *,
        expected_version: int | None = None,
        metadata: dict[str, Any] | None = None,
        result: str | None = None,
    ) -> Job:
        """The attempt succeeded; `result` (JSON text) is kept in the `succeeded` event."""
        return await self._job("job_succeed", command_params(job_id, expected_version, metadata, result=result))

    async def succeed_many(
        self, successes: Sequence[Success | tuple[int, int]], worker: str | None = None
    ) -> dict[int, bool]:
        """Record many successes at once, each only if the job is still running at its version:
        job id -> recorded? (the cycle's first statement, alone)."""
        rows = await self._rows("job_succeed_many", succeed_params(successes, worker))
        return {r["job_id"]: r["recorded"] for r in rows}

    async def fail(
        self,
        job_id: int,
        error: str,
        *,
        retry_at: datetime | None = None,
        discard: bool = False,
        expected_version: int | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Job:
        """A failed attempt: retryable at retry_at (None: now) while attempts remain, else discarded."""
        params = command_params(job_id, expected_version, metadata, error=error, retry_at=retry_at, discard=discard)
        return await self._job("job_fail", params)

    async def cancel(
        self,
        job_id: int,
        reason: str | None = None,
        *,
        expected_version: int | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Job:
        return await self._job("job_cancel", command_params(job_id, expected_version, metadata, reason=reason))

    async def stop(
        self, job_id: int, how: str, *, expected_version: int | None = None, metadata: dict[str, Any] | None = None
    ) -> Job:
        """The body of a job cancelled while it ran has ended: `how` (ledger.job_stop)."""
        return await self._job("job_stop", command_params(job_id, expected_version, metadata, how=how))

    async def snooze(
        self,
        job_id: int,
        run_at: datetime,
        *,
        expected_version: int | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Job:
        return await self._job("job_snooze", command_params(job_id, expected_version, metadata, run_at=run_at))

    async def replay(
        self,
        job_id: int,
        *,
        actor: str | None = None,
        reason: str | None = None,
        expected_version: int | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Job:
        params = command_params(job_id, expected_version, metadata, actor=actor, reason=reason)
        return await self._job("job_replay", params)

    async def rescue(self, *, as_of: datetime | None = None, job_ids: Sequence[int] | None = None) -> list[Job]:
        """Return to work the running jobs whose worker's lease expired before as_of (default now)."""
        params = {"as_of": as_of, "ids": list(job_ids) if job_ids is not None else None, "metadata": Jsonb({})}
        return [Job.model_validate(r) for r in await self._rows("job_rescue", params)]

    async def rescue_orphans(self, job_ids: Sequence[int], reason: str, metadata: dict[str, Any]) -> list[int]:
        """Rescue these running jobs whatever their worker's lease says (a claim whose answer was lost),
        `reason` being what the rescued events say happened."""
        params = {"ids": list(job_ids), "reason": reason, "metadata": Jsonb(metadata)}
        return [r["id"] for r in await self._rows("job_rescue_orphans", params)]

    async def periodic_enqueue(
        self,
        name: str,
        every: timedelta,
        kind: str,
        args: dict[str, Any],
        *,
        queue: str,
        priority: int,
        max_attempts: int,
    ) -> int | None:
        """Enqueue periodic job `name` if its period has come; None when this period's job exists already."""
        params = {
            "name": name, "every": every, "kind": kind, "args": Jsonb(args),
            "queue": queue, "priority": priority, "max_attempts": max_attempts,
        }  # fmt: skip
        job_id: int | None = (await self._one("periodic_enqueue", params))["id"]
        return job_id

    async def worker_heartbeat(
        self,
        worker: str,
        lease: timedelta = LEASE,
        *,
        queues: Sequence[str] | None = None,
        kinds: Sequence[str] | None = None,
    ) -> datetime:
        """Renew `worker`'s lease, saying which queues and kinds it serves; when the lease now expires."""
        params = {
            "worker": worker, "lease": lease,
            "queues": list(queues) if queues is not None else None, "kinds": list(kinds) if kinds is not None else None,
        }  # fmt: skip
        expires: datetime = (await self._one("worker_heartbeat", params))["expires_at"]
        return expires

    async def kinds_unserved(self) -> list[DictRow]:
        """(queue, kind, jobs, oldest): due jobs no live worker can run (ledger.kinds_unserved)."""
        return await self._rows("kinds_unserved")

    async def worker_stop(self, worker: str) -> None:
        """Drop `worker`'s heartbeat, so the jobs it abandoned are rescued at the next pass."""
        await self._run("worker_stop", {"worker": worker})

    async def projections_rebuild(self) -> int:
        """Replace both projections with the fold of the events; the number of jobs rebuilt."""
        jobs: int = (await self._one("projections_rebuild"))["jobs"]
        return jobs

    async def metrics_refresh(self) -> int:
        """Fold the completion events since the last refresh into the histograms; how many events were read."""
        events: int = (await self._one("metrics_refresh"))["events"]
        return events

    async def events_prune_partition(
        self, lo: int, cutoff: datetime, *, purge_discarded: bool, lock_timeout: timedelta
    ) -> DictRow | None:
        """Prune one partition in its own transaction (ledger.events_prune_partition);
        None when its locks were not granted within lock_timeout (a long transaction holds them)."""
        timeout = f"{max(1, int(lock_timeout.total_seconds() * 1000))}ms"
        try:
            async with self.conn.transaction():
                await self._run("lock_timeout_local", {"timeout": timeout})
                return await self._one(
                    "events_prune_partition", {"lo": lo, "cutoff": cutoff, "purge_discarded": purge_discarded}
                )
        except (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected):
            return None

    async def listen(self, channels: Sequence[str]) -> None:
        """LISTEN on each channel (the worker's listener; notifications arrive on conn.notifies())."""
        for channel in channels:
            await self.conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))

    async def events_verify(self) -> list[DictRow]:
        """(job_id, version, problem) wherever a history disagrees with its hash chain; empty when untouched."""
        return await self._rows("events_verify")

    # ------------------------------------------------------------ results, progress and waiting

    async def progress_set(self, job_id: int, attempt: int, value: dict[str, Any]) -> bool:
        """Keep a running attempt's latest progress; False when that attempt no longer runs."""
        params = {"id": job_id, "attempt": attempt, "value": Jsonb(value)}
        kept: bool = (await self._one("job_progress_set", params))["kept"]
        return kept

    async def progress(self, job_id: int) -> DictRow | None:
        """(attempt, at, value) of the latest progress of the job's running (or last) attempt, if any."""
        rows = await self._rows("job_progress_get", {"id": job_id})
        return rows[0] if rows else None

    async def job_outcome(self, job_id: int) -> DictRow | None:
        """(state, last_error, result) of a job; None when there is no such job."""
        rows = await self._rows("job_outcome", {"id": job_id})
        return rows[0] if rows else None

    async def wait_begin(self, job_id: int) -> None:
        """Register a waiter: the job's end NOTIFYs `ledger:done` (LISTEN to it first)."""
        await self._run("job_wait_begin", {"id": job_id})

    async def wait_end(self, job_id: int) -> None:
        await self._run("job_wait_end", {"id": job_id})

    # ------------------------------------------------------------ flow control

    async def queue_set_paused(
        self, queue: str, paused: bool, *, actor: str | None = None, reason: str | None = None
    ) -> QueueState:
        """Pause or resume a queue for the whole fleet (ledger.queue_set_paused), recorded with who and why."""
        params = {"queue": queue, "paused": paused, "actor": actor, "reason": reason}
        return QueueState.model_validate(await self._one("queue_set_paused", params))

    async def queue_states(self) -> list[QueueState]:
        """Every queue that was ever paused, and whether it is now."""
        return [QueueState.model_validate(r) for r in await self._rows("queue_states")]

    async def limit_set(self, scope: str, limit: Limit) -> LimitRow:
        """Declare the limit of `kind:<kind>` or `queue:<queue>` (ledger.limit_set)."""
        params = {
            "scope": scope, "concurrency": limit.concurrency, "rate": limit.rate, "per": limit.per,
            "key_path": limit.key_path,
        }  # fmt: skip
        return LimitRow.model_validate(await self._one("limit_set", params))

    async def limit_clear(self, scope: str) -> bool:
        cleared: bool = (await self._one("limit_clear", {"scope": scope}))["cleared"]
        return cleared

    async def limits(self) -> list[LimitRow]:
        return [LimitRow.model_validate(r) for r in await self._rows("limits_list")]

    # ------------------------------------------------------------ roles (`ledger roles`)

    async def roles_grant(self, name: str, access: str) -> bool:
        """Record `name` as a role of the ledger with `access` (app or readonly), creating it (LOGIN, no
        password) if it does not exist, and apply the privileges; True if the role was created."""
        created = not (await self._one("role_exists", {"name": name}))["present"]
        if created:
            await self.conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
        await self._run("roles_record", {"name": name, "access": access})
        await self._run("grants_apply")
        return created

    # ------------------------------------------------------------ schema (ledger/migrate.py)

    async def schema_version(self) -> int | None:
        """The ledger schema's version in this database; None when it has none."""
        found = await self._one("schema_present")
        if not found["present"]:
            return None
        version: int | None = (await self._one("schema_version_read" if found["readable"] else "schema_version"))[
            "version"
        ]
        return version

    async def migrate_lock(self, key: int) -> None:
        """Serialise migrations: held until the caller's transaction ends."""
        await self._run("migrate_lock", {"key": key})

    async def run_script(self, script: str) -> None:
        """Run a whole DDL script (schema.sql or an upgrade) as it is written: the one place raw SQL text runs."""
        await self.conn.execute(script.encode())

    async def schema_version_record(self, version: int) -> None:
        await self._run("schema_version_record", {"version": version})

    # ------------------------------------------------------------ the server (ledger/embedded.py)

    async def database_ensure(self, name: str) -> None:
        """Create database `name` unless it exists (on a connection to the server's `postgres` database)."""
        if (await self._one("database_exists", {"name": name}))["present"]:
            return
        # Another process may create it at the same moment (seen with two gunicorn
        # workers: a UniqueViolation on pg_database); either way it exists after.
        with contextlib.suppress(psycopg.errors.DuplicateDatabase, psycopg.errors.UniqueViolation):
            await self.conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    async def database_clone(self, name: str, template: str) -> None:
        """Create database `name` as a copy of `template` (the pytest plugin's fresh database per test)."""
        stmt = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template))
        await self.conn.execute(stmt)

    async def database_drop(self, name: str) -> None:
        """Drop database `name` if it exists, ending the sessions still connected to it."""
        await self.conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    # ---- web sessions
    # The web app's sessions and sign-in throttle: web/sessions.py and
    # web/throttle.py. Only a session id's hash and a client's address travel.

    async def web_session_start(self, id_hash: bytes, ttl: timedelta) -> datetime:
        """Store a new dashboard session under the hash of its cookie; when it expires."""
        expires: datetime = (await self._one("web_session_start", {"hash": id_hash, "ttl": ttl}))["expires_at"]
        return expires

    async def web_session_check(self, id_hash: bytes) -> datetime | None:
        """When the session with this hash expires; None when it is unknown, expired or ended."""
        expires: datetime | None = (await self._one("web_session_check", {"hash": id_hash}))["expires_at"]
        return expires

    async def web_session_end(self, id_hash: bytes) -> bool:
        """End the session with this hash (sign-out); True when a live one was ended."""
        ended: bool = (await self._one("web_session_end", {"hash": id_hash}))["ended"]
        return ended

    async def web_auth_wait(self, client: str, max_failures: int) -> timedelta | None:
        """How long `client` must wait before its next token is compared; None when it may try now."""
        params = {"who": client, "max_failures": max_failures}
        wait: timedelta | None = (await self._one("web_auth_wait", params))["wait"]
        return wait

    async def web_auth_fail(self, client: str, max_failures: int, per: timedelta) -> timedelta | None:
        """Count a failed token from `client` in its window of `per`; the wait now in force, if any."""
        params = {"who": client, "max_failures": max_failures, "per": per}
        wait: timedelta | None = (await self._one("web_auth_fail", params))["wait"]
        return wait

    async def web_auth_forgive(self, client: str) -> None:
        """Forget `client`'s failed tokens (it has just signed in)."""
        await self._rows("web_auth_forgive", {"who": client})

    # ------------------------------------------------------------ operators (ledger stats, ledger db stop)

    async def queue_waits(self) -> list[QueueWait]:
        """Per queue: jobs due and unclaimed, and the age of the oldest (what an operator looks at first)."""
        return [QueueWait.model_validate(r) for r in await self._rows("queue_waits")]

    async def server_connections_other(self) -> DictRow:
        """`sessions` other than this one on the whole server, and the `databases` they use."""
        return await self._one("server_connections_other")

    # ---- schedules
    # Cron schedules (ledger/cron.py computes the slots; the database admits one enqueue per slot).

    async def schedule_declare(
        self,
        name: str,
        cron: str,
        timezone: str,
        kind: str,
        args: dict[str, Any],
        *,
        queue: str,
        priority: int,
        max_attempts: int,
        missed: str,
        grace: timedelta,
    ) -> ScheduleRow:
        """Declare (or change) schedule `name` (ledger.schedule_declare): what a worker does at start."""
        params = {
            "name": name, "cron": cron, "timezone": timezone, "kind": kind, "args": Jsonb(args), "queue": queue,
            "priority": priority, "max_attempts": max_attempts, "missed": missed, "grace": grace,
        }  # fmt: skip
        return ScheduleRow.model_validate(await self._one("schedule_declare", params))

    async def schedule_fire(
        self,
        name: str,
        cron: str,
        timezone: str,
        *,
        expected: datetime,
        following: datetime | None,
        slot: datetime | None,
        missed: int = 0,
        first_missed: datetime | None = None,
        last_missed: datetime | None = None,
    ) -> tuple[bool, int | None]:
        """The compare-and-set of one slot (ledger.schedule_fire): (taken, job id). taken is False when
        another worker moved the schedule on first (or it is paused, or declared differently)."""
        params = {
            "name": name, "cron": cron, "timezone": timezone, "expected": expected, "following": following,
            "slot": slot, "missed": missed, "first_missed": first_missed, "last_missed": last_missed,
        }  # fmt: skip
        row = await self._one("schedule_fire", params)
        return bool(row["taken"]), row["job_id"]

    async def schedule_set_paused(
        self, name: str, paused: bool, *, actor: str | None = None, reason: str | None = None
    ) -> ScheduleRow:
        """Pause or resume schedule `name` for the whole fleet, recorded with who and why."""
        params = {"name": name, "paused": paused, "actor": actor, "reason": reason}
        return ScheduleRow.model_validate(await self._one("schedule_set_paused", params))

    async def schedules(self) -> tuple[list[ScheduleRow], datetime]:
        """Every declared schedule, and the database's clock they are due against."""
        rows = await self._rows("schedules_list")
        now: datetime = rows[0]["now"] if rows else await self.db_now_minus(timedelta(0))
        return [ScheduleRow.model_validate(r) for r in rows], now

    async def schedule_events(self, name: str | None = None, *, limit: int = 50) -> list[ScheduleEvent]:
        """What happened to the schedules (or to one), newest first."""
        rows = await self._rows("schedule_events_list", {"name": name, "limit": limit})
        return [ScheduleEvent.model_validate(r) for r in rows]

    # ---- bulk actions
    # Replay or cancel every job matching a filter, in chunks of short transactions under one batch id.

    async def jobs_bulk(
        self,
        action: str,
        match: JobFilter,
        *,
        reason: str,
        actor: str | None = None,
        via: str | None = None,
        dry_run: bool = False,
        batch: uuid.UUID | None = None,
        chunk: int = 1000,
    ) -> BulkResult:
        """`replay` every dead letter, or `cancel` every unfinished job, that `match`es, up to the
        newest job when the act starts (ledger.jobs_replay_bulk, jobs_cancel_bulk).

        One statement per chunk of `chunk` jobs in id order: with an autocommit connection each is
        its own short transaction, and the events of all of them carry the one batch id.
        """
        if action not in ("replay", "cancel"):
            raise ValueError(f"action {action!r}: replay or cancel")
        batch = batch or uuid.uuid4()
        upto: int = (await self._one("jobs_last_id"))["id"]
        params = {
            **match.params(), "batch": batch, "actor": actor, "via": via, "reason": reason, "upto_id": upto,
            "max_jobs": chunk, "dry_run": dry_run,
        }  # fmt: skip
        after, done, refused, changed = 0, [], [], []
        while True:
            rows = await self._rows(f"jobs_{action}_bulk", {**params, "after_id": after})
            for r in rows:
                if r["outcome"] in ("refused", "would refuse"):
                    refused.append({"id": r["job_id"], "reason": r["detail"]})
                elif r["outcome"] == "changed":
                    changed.append({"id": r["job_id"], "reason": r["detail"]})
                else:
                    done.append(r["job_id"])
            if len(rows) < chunk:
                break
            after = max(r["job_id"] for r in rows)
        return BulkResult(batch=str(batch), action=action, dry_run=dry_run, done=sorted(done), refused=refused,
                          changed=changed)  # fmt: skip

    async def discarded_count(self, match: JobFilter) -> int:
        """How many dead letters match (what a bulk replay with this filter would take)."""
        n: int = (await self._one("discarded_count", match.params()))["n"]
        return n

    async def bulk_action(self, batch: str) -> DictRow | None:
        """The record of bulk act `batch`: its filter, who, via, why."""
        rows = await self._rows("bulk_action_get", {"batch": batch})
        return rows[0] if rows else None

    # ---- throughput
    # The dashboard's chart: outcomes per minute and kind, folded from the events after a cursor.

    async def throughput_refresh(self, *, settle: timedelta = timedelta(seconds=2), max_events: int = 1_000_000) -> int:
        """Fold the outcome events since the last refresh (ledger.throughput_refresh); how many were read."""
        events: int = (await self._one("throughput_refresh", {"settle": settle, "max_events": max_events}))["events"]
        return events

    async def throughput(self, since: datetime, kind: str | None = None) -> list[ThroughputRow]:
        """Outcomes per minute and kind from `since` on (after throughput_refresh)."""
        rows = await self._rows("throughput_since", {"since": since, "kind": kind})
        return [ThroughputRow.model_validate(r) for r in rows]
