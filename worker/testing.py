"""Testing an application's own jobs: a fresh ledger per test, inline mode, drain() and enqueue assertions.

The pytest fixtures (ledger/worker/pytest_plugin.py, registered as the `ledger`
pytest plugin) hand a test a `LedgerTesting` over a database of its own; it
can be used without pytest too, over any database with the ledger's schema.

- **Manual** (the default): an enqueue writes the job and nothing runs it.
  `assert_enqueued` / `refute_enqueued` / `enqueued` look at the waiting jobs
  (kind, partial args, queue, priority); `drain()` runs everything due, as a
  worker would, and returns the outcomes.
- **Inline** (`with ledger.inline():`, or the `ledger_inline` fixture): every
  enqueue of this process runs its jobs at once, before it returns, like
  Celery's eager mode. The job is still written, claimed and recorded on the
  connection that enqueued it, inside the caller's transaction when there is
  one, so its history is the real one, and a rollback takes it away. Its
  handler runs before the caller commits: a handler that reads the caller's
  new rows through a connection of its own does not see them yet (test that
  path in manual mode with drain() after the commit). A failed attempt is
  recorded and its exception raised from the enqueue (`raise_errors=False`
  to only record it). A job enqueued for later stays scheduled.

Both run jobs with the worker's own executor (worker/executor.py) and record
outcomes with the statements the worker uses (worker/completer.py), under the
worker name `ledger.testing`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import psycopg
from psycopg.conninfo import make_conninfo

from ledger import tracing
from ledger.client import AsyncClient, Client, set_inline_runner
from ledger.db import connect
from ledger.kinds import JobDiscard, Registry, default_registry
from ledger.migrate import migrate
from ledger.models import Event, Job
from ledger.store import Store
from ledger.store_async import AsyncStore

from .completer import outcome_metadata, record_outcome, run_error_hooks, success_of
from .config import WorkerConfig
from .executor import Outcome, execute
from .maintenance import worker_registry

__all__ = ["ENQUEUED", "WORKER", "LedgerTesting", "Outcomes", "TemplateDatabases"]

WORKER = "ledger.testing"
"""The worker name the jobs run under, in their `started` events."""
ENQUEUED = ("available", "scheduled")
"""The states of a job that is waiting to run: what "enqueued" means to the assertions."""
_CLAIMABLE = {"available", "scheduled", "retryable"}

T = TypeVar("T")


class Outcomes(list[Outcome]):
    """The outcomes of the attempts a drain (or inline mode) ran, in the order they ran."""

    @property
    def counts(self) -> dict[str, int]:
        """{outcome: how many}, e.g. {"succeeded": 2, "failed": 1}."""
        return dict(Counter(o.kind for o in self))

    def of(self, kind: str) -> Outcomes:
        """The outcomes of the jobs of one kind."""
        return Outcomes(o for o in self if o.job.kind == kind)


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to its end from sync code: here, or in a thread of its own when this
    thread already runs an event loop (a sync enqueue called from async code)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with ThreadPoolExecutor(1, thread_name_prefix="ledger-testing") as pool:
        return pool.submit(asyncio.run, coro).result()


def _matches(
    job: Job, kind: str | None, args: Mapping[str, Any] | None, queue: str | None, priority: int | None
) -> bool:
    return (
        (kind is None or job.kind == kind)
        and (queue is None or job.queue == queue)
        and (priority is None or job.priority == priority)
        and (args is None or all(k in job.args and job.args[k] == v for k, v in args.items()))
    )


def _wanted(
    kind: str | None, args: Mapping[str, Any] | None, queue: str | None, priority: int | None
) -> dict[str, Any]:
    given = {"kind": kind, "args": args, "queue": queue, "priority": priority}
    return {k: v for k, v in given.items() if v is not None}


def _describe(jobs: Sequence[Job]) -> str:
    if not jobs:
        return "  (none)"
    return "\n".join(f"  id={j.id} kind={j.kind} queue={j.queue} state={j.state} args={j.args}" for j in jobs)


def _raises(o: Outcome) -> bool:
    # A job that gave up on purpose (JobDiscard) did what it meant to; any other failure is an error.
    return o.kind in ("failed", "discarded") and o.exception is not None and not isinstance(o.exception, JobDiscard)


class LedgerTesting:
    """A ledger for one test: an enqueue client, assertions on what is enqueued, drain() and inline mode."""

    def __init__(self, url: str, registry: Registry = default_registry) -> None:
        self.url = url
        self.app_registry = registry
        # The worker's view of the registry: the app's kinds and the built-ins' handlers.
        self.registry = worker_registry(registry, WorkerConfig(queues="default=1", retention="off"))
        self.kinds = sorted(name for name, kind in self.registry.kinds.items() if kind.handler is not None)
        self.outcomes = Outcomes()
        """Every attempt this ledger ran, by drain() or inline."""
        self._conn: psycopg.Connection[Any] | None = None
        self._client: Client | None = None

    # ------------------------------------------------------------ the database

    @property
    def store(self) -> Store:
        """A store on this ledger's own connection (autocommit)."""
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.url)
        return Store(self._conn)

    @property
    def client(self) -> Client:
        """A Client of this ledger (the application's registry validates what it enqueues)."""
        if self._client is None:
            self._client = Client(self.url, registry=self.app_registry)
        return self._client

    def async_client(self) -> AsyncClient:
        """A new AsyncClient of this ledger; close it (or use it with `async with`)."""
        return AsyncClient(self.url, registry=self.app_registry)

    def job(self, job_id: int) -> Job:
        job = self.store.job(job_id)
        assert job is not None, f"no job {job_id} in this ledger"
        return job

    def history(self, job_id: int) -> list[Event]:
        """The job's events, oldest first."""
        return self.store.events_for_job(job_id)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
        if self._conn is not None:
            self._conn.close()

    # ------------------------------------------------------------ assertions

    def enqueued(
        self,
        kind: str | None = None,
        *,
        args: Mapping[str, Any] | None = None,
        queue: str | None = None,
        priority: int | None = None,
        states: Sequence[str] = ENQUEUED,
    ) -> list[Job]:
        """The jobs waiting to run (newest first) that match: `args` matches when the job's args
        hold each of its keys with that value (a job may have more)."""
        jobs = [
            job
            for state in states
            for job in self.store.jobs(state=state, kind=kind, queue=queue, limit=10_000)
            if _matches(job, kind, args, queue, priority)
        ]
        return sorted(jobs, key=lambda j: j.id, reverse=True)

    def assert_enqueued(
        self,
        kind: str | None = None,
        *,
        args: Mapping[str, Any] | None = None,
        queue: str | None = None,
        priority: int | None = None,
        count: int | None = None,
    ) -> Job:
        """Assert a matching job waits to run (exactly `count` of them, if given); the newest match."""
        found = self.enqueued(kind, args=args, queue=queue, priority=priority)
        if not found or (count is not None and len(found) != count):
            wanted = {
                k: v
                for k, v in {"kind": kind, "args": args, "queue": queue, "priority": priority}.items()
                if v is not None
            }
            many = f"{count} job(s)" if count is not None else "a job"
            raise AssertionError(
                f"expected {many} matching {wanted} to be enqueued, found {len(found)}; "
                f"waiting to run:\n{_describe(self.enqueued())}"
            )
        return found[0]

    def refute_enqueued(
        self,
        kind: str | None = None,
        *,
        args: Mapping[str, Any] | None = None,
        queue: str | None = None,
        priority: int | None = None,
    ) -> None:
        """Assert no matching job waits to run."""
        found = self.enqueued(kind, args=args, queue=queue, priority=priority)
        if found:
            wanted = {
                k: v
                for k, v in {"kind": kind, "args": args, "queue": queue, "priority": priority}.items()
                if v is not None
            }
            raise AssertionError(f"expected no job matching {wanted} to be enqueued; found:\n{_describe(found)}")

    # ------------------------------------------------------------ running jobs

    def drain(
        self, *, queues: Sequence[str] | None = None, raise_errors: bool = False, max_jobs: int = 10_000
    ) -> Outcomes:
        """Run every job that is due, one at a time in claim order per queue, until none is left
        (jobs that the jobs enqueue included); their outcomes. A failed attempt is retryable at
        its backoff time, so it is not due again within the drain; a job scheduled for later
        stays scheduled. `raise_errors`: stop at the first failed attempt (once recorded) and
        raise its exception."""
        ran = Outcomes()
        store = self.store
        while True:
            progressed = False
            for queue in queues or self._queues(store):
                claimed = store.claim(queue, 1, WORKER, kinds=self.kinds)
                progressed = progressed or bool(claimed)
                ran += self._run_sync(store, claimed, raise_errors)
                if len(ran) > max_jobs:
                    raise RuntimeError(
                        f"drain ran {max_jobs} jobs and more are due: a job that snoozes to now or enqueues itself?"
                    )
            if not progressed:
                return ran

    async def adrain(
        self, *, queues: Sequence[str] | None = None, raise_errors: bool = False, max_jobs: int = 10_000
    ) -> Outcomes:
        """drain() for async tests: the same, on an async connection of its own."""
        ran = Outcomes()
        async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as conn:
            store = AsyncStore(conn)
            while True:
                progressed = False
                for queue in queues or sorted({c.queue for c in await store.job_counts() if self._due(c)}):
                    claimed = await store.claim(queue, 1, WORKER, kinds=self.kinds)
                    progressed = progressed or bool(claimed)
                    ran += await self._run_async(store, claimed, raise_errors)
                    if len(ran) > max_jobs:
                        raise RuntimeError(f"drain ran {max_jobs} jobs and more are due")
                if not progressed:
                    return ran

    @contextlib.contextmanager
    def inline(self, *, raise_errors: bool = True) -> Iterator[LedgerTesting]:
        """Inside the block, every enqueue of this process runs its jobs before it returns
        (see the module's docstring for what that means inside a transaction)."""
        before = set_inline_runner(_Inline(self, raise_errors))
        try:
            yield self
        finally:
            set_inline_runner(before)

    # ------------------------------------------------------------ the runner's parts

    @staticmethod
    def _due(count: Any) -> bool:
        return count.state in _CLAIMABLE and count.count > 0

    def _queues(self, store: Store) -> list[str]:
        """The queues holding jobs that may be due (job_counts is exact below 100k jobs)."""
        return sorted({c.queue for c in store.job_counts() if self._due(c)})

    def _run_sync(self, store: Store, jobs: Sequence[Job], raise_errors: bool) -> Outcomes:
        carriers = store.trace_carriers([j.id for j in jobs]) if jobs and tracing.enabled() else {}
        ran = Outcomes()
        for job in jobs:
            o = _run(execute(job, self.registry, WORKER, self.url, trace=carriers.get(job.id)))
            self._record_sync(store, o)
            ran.append(o)
            self.outcomes.append(o)
            if raise_errors and _raises(o):
                assert o.exception is not None
                raise o.exception
        return ran

    async def _run_async(self, store: AsyncStore, jobs: Sequence[Job], raise_errors: bool) -> Outcomes:
        carriers = await store.trace_carriers([j.id for j in jobs]) if jobs and tracing.enabled() else {}
        ran = Outcomes()
        for job in jobs:
            o = await execute(job, self.registry, WORKER, self.url, trace=carriers.get(job.id))
            if o.kind == "succeeded":
                await store.succeed_many([success_of(o)], WORKER)
            else:
                recorded = await record_outcome(store, o, WORKER)
                if o.kind in ("failed", "discarded"):
                    run_error_hooks(self.registry, o, recorded)
            ran.append(o)
            self.outcomes.append(o)
            if raise_errors and _raises(o):
                assert o.exception is not None
                raise o.exception
        return ran

    def _record_sync(self, store: Store, o: Outcome) -> None:
        """The sync twin of worker/completer.py's record_outcome (the completer itself is async only)."""
        if o.kind == "succeeded":
            store.succeed_many([success_of(o)], WORKER)
            return
        meta, version = outcome_metadata(o, WORKER), o.job.version
        if o.kind in ("failed", "discarded"):
            recorded = store.fail(
                o.job.id, o.error or "", retry_at=o.retry_at, discard=o.kind == "discarded",
                expected_version=version, metadata=meta,
            )  # fmt: skip
            run_error_hooks(self.registry, o, recorded)
        elif o.kind == "snoozed":
            assert o.run_at is not None
            store.snooze(o.job.id, o.run_at, expected_version=version, metadata=meta)
        else:  # cancelled (nothing cancels a job from outside while it runs here)
            store.cancel(o.job.id, o.error, expected_version=version, metadata=meta)


class _Inline:
    """The client's inline runner (ledger.client.InlineRunner): claim the jobs just enqueued on the
    enqueuing connection, run them, record their outcomes there."""

    def __init__(self, ledger: LedgerTesting, raise_errors: bool) -> None:
        self.ledger = ledger
        self.raise_errors = raise_errors

    @staticmethod
    def _groups(jobs: Sequence[Job | None]) -> dict[str, list[str]]:
        """queue -> the kinds enqueued there."""
        groups: dict[str, list[str]] = {}
        for job in jobs:
            if job is not None:
                groups.setdefault(job.queue, []).append(job.kind)
        return groups

    def run(self, conn: psycopg.Connection[Any], ids: Sequence[int]) -> None:
        store = Store(conn)
        for queue, kinds in self._groups([store.job(i) for i in ids]).items():
            # Claimed as a worker would (due, in claim order), among the kinds just enqueued.
            claimed = store.claim(queue, len(kinds), WORKER, kinds=sorted(set(kinds)))
            self.ledger._run_sync(store, claimed, self.raise_errors)

    async def run_async(self, conn: psycopg.AsyncConnection[Any], ids: Sequence[int]) -> None:
        store = AsyncStore(conn)
        for queue, kinds in self._groups([await store.job(i) for i in ids]).items():
            claimed = await store.claim(queue, len(kinds), WORKER, kinds=sorted(set(kinds)))
            await self.ledger._run_async(store, claimed, self.raise_errors)


class TemplateDatabases:
    """A template database with the ledger's schema, and a fresh copy of it per test (CREATE DATABASE
    ... TEMPLATE: milliseconds, and no test sees another's jobs or needs to clean up the ledger).

    `prepare(url)`, if given, runs once on the template after the schema: the application's own
    tables go there. It must close its connections (a template must have none open to be copied).
    """

    def __init__(self, server_url: str, prepare: Callable[[str], None] | None = None) -> None:
        self.server_url = server_url
        # Names of their own: the project's own tests (tests/conftest.py) use ledger_tpl_*/ledger_t_*.
        self.template = f"ledger_plugin_tpl_{os.getpid()}"
        self._counter = itertools.count()
        with connect(server_url) as admin:
            Store(admin).database_drop(self.template)
            Store(admin).database_ensure(self.template)
        url = make_conninfo(server_url, dbname=self.template)
        with connect(url) as conn:
            migrate(conn)
        if prepare is not None:
            prepare(url)

    @contextlib.contextmanager
    def fresh(self) -> Iterator[str]:
        """The URL of a new copy of the template, dropped afterwards."""
        name = f"ledger_plugin_{os.getpid()}_{next(self._counter)}"
        with connect(self.server_url) as admin:
            Store(admin).database_clone(name, self.template)
        try:
            yield make_conninfo(self.server_url, dbname=name)
        finally:
            with connect(self.server_url) as admin:
                Store(admin).database_drop(name)

    def close(self) -> None:
        with connect(self.server_url) as admin:
            Store(admin).database_drop(self.template)
