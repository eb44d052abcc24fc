"""Job kinds: a registry from kind name to its args model, options and handler.

No I/O here, but for one import: the process-wide registry imports the
configured application module (ledger/apps.py) on a kind it does not know.

The built-in kinds (heartbeat, ledger.rescue, ledger.prune) are defined here
so that any client can enqueue them; their handlers and schedules belong to
the worker (worker/maintenance.py), which attaches them to its own view of
the registry.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StrictBool, TypeAdapter, ValidationError

from . import cron as cronspec
from . import defaults
from .errors import InvalidArguments, UnknownKind
from .models import Job, Limit, Unique
from .retry_policy import Backoff

__all__ = [
    "HEARTBEAT",
    "PRUNE",
    "RESCUE",
    "SCHEDULE_NAME",
    "CancelFlag",
    "Handler",
    "JobCancel",
    "JobContext",
    "JobDiscard",
    "JobSnooze",
    "Kind",
    "Limit",
    "NoArgs",
    "Periodic",
    "PruneArgs",
    "Registry",
    "Schedule",
    "Unique",
    "builtin_registry",
    "default_registry",
    "error_fields",
    "format_validation_error",
]

SCHEDULE_NAME = r"[A-Za-z0-9_.:-]{1,100}"
"""A schedule's name: what `ledger schedules pause NAME` and the URLs of the API take as they are."""

HEARTBEAT = "heartbeat"
RESCUE = "ledger.rescue"
PRUNE = "ledger.prune"

A = TypeVar("A", bound=BaseModel)


class NoArgs(BaseModel):
    """Args of a kind that takes none; anything extra is refused."""

    model_config = ConfigDict(extra="forbid")


class CancelFlag:
    """Set when an operator cancels a running job: `is_set()`, `set()` and `wait(timeout)`, as a
    threading.Event. The Event itself is made only when a body waits on it: one per job cost the
    worker a tenth of its CPU in a no-op drain (py-spy), and most bodies never look."""

    __slots__ = ("_event", "_set")

    def __init__(self) -> None:
        self._set = False
        self._event: threading.Event | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True  # before reading _event; wait() writes _event before reading _set
        if (event := self._event) is not None:
            event.set()

    def wait(self, timeout: float | None = None) -> bool:
        if self._event is None:
            self._event = threading.Event()
        if self._set:
            self._event.set()
        return self._event.wait(timeout)


@dataclass(frozen=True)
class JobContext(Generic[A]):
    """What a handler receives: its validated args, the job row, and where the ledger is.

    `cancelled` is set when an operator cancels the job while it runs. An
    async handler is cancelled outright (CancelledError at its next await);
    a sync one runs in a thread that cannot be interrupted, so it should look
    at `ctx.cancelled.is_set()` between steps of long work and return early.
    """

    args: A
    job: Job
    worker: str
    database_url: str
    cancelled: CancelFlag = field(default_factory=CancelFlag, compare=False)
    report: Callable[[dict[str, Any]], None] = field(default=lambda value: None, compare=False, repr=False)

    def progress(self, **fields: Any) -> None:
        """Report how far this attempt has come (`ctx.progress(done=3, total=10, message="...")`).

        The latest report is kept beside the job while it runs and shown by
        `ledger show`, the API and the dashboard. Cheap to call often: the
        worker writes at most one report per job every half second (the
        latest wins). The fields must be JSON (InvalidArguments otherwise).
        """
        self.report(fields)

    @property
    def id(self) -> int:
        return self.job.id

    @property
    def attempt(self) -> int:
        return self.job.attempt


class JobSnooze(Exception):
    """Raise from a handler to run the job again at `run_at` without spending an attempt."""

    def __init__(self, run_at: datetime) -> None:
        super().__init__(f"snoozed until {run_at.isoformat()}")
        self.run_at = run_at


class JobCancel(Exception):
    """Raise from a handler to cancel the job (no more attempts)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class JobDiscard(Exception):
    """Raise from a handler for a permanent failure: discard now, without retrying."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


Handler = Callable[[JobContext[Any]], Any | Awaitable[Any]]


@dataclass(frozen=True)
class Kind(Generic[A]):
    """A registered job kind. Options are defaults an enqueue may override."""

    name: str
    args_model: type[A]
    handler: Handler | None = None
    queue: str = defaults.QUEUE
    priority: int = defaults.PRIORITY
    max_attempts: int = defaults.MAX_ATTEMPTS
    timeout: float = defaults.TIMEOUT
    """Seconds an attempt may run before it is cancelled and counted as failed."""
    backoff: Backoff | None = None
    """Seconds to wait after failed attempt n; None uses ledger/retry_policy.py's default."""
    limit: Limit | None = None
    """At most so many running at once / starting per period, across the fleet (declared by its workers)."""
    unique: Unique | None = None
    """Its uniqueness rule, for every enqueue of it that does not give its own."""


@dataclass(frozen=True)
class Periodic:
    """A job enqueued once per period across all workers (see ledger.periodic_enqueue)."""

    name: str
    kind: str
    every: timedelta
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Schedule:
    """A job enqueued at each slot of a cron expression, read as wall-clock time in `timezone`,
    once per slot across all workers (ledger/cron.py says what a slot is across DST changes;
    ledger.schedule_fire admits one enqueue per slot). `missed`: what becomes of slots that passed
    while no worker ran — `skip` them (the latest still runs when at most `grace` late) or run
    `once` for all of them."""

    name: str
    kind: str
    cron: str
    timezone: str
    args: dict[str, Any] = field(default_factory=dict)
    missed: cronspec.Missed = "skip"
    grace: timedelta = timedelta(minutes=1)


ErrorHook = Callable[[Job, BaseException, bool], Any]
"""Called after every failed attempt with (job, error, will_retry)."""


def error_fields(exc: ValidationError, *, batch: bool = False) -> list[str]:
    """The dotted names of the fields a pydantic error is about; batch=True drops the list index."""
    return [".".join(str(p) for p in err["loc"][batch:]) or "(root)" for err in exc.errors()]


def format_validation_error(exc: ValidationError, *, positions: Sequence[int] | None = None) -> str:
    """`field 'to': Field required; field 'n': ...` from a pydantic error.

    For a list validated in one call, `positions` gives each item's place in
    the caller's batch: `jobs[3] field 'to': ...`. With more than one job,
    the first three errors are named and the rest counted.
    """
    errors = exc.errors()
    fields = error_fields(exc, batch=positions is not None)
    if positions is None or len(positions) == 1:
        return "; ".join(f"field {f!r}: {err['msg']}" for f, err in zip(fields, errors, strict=True))
    shown = [
        f"jobs[{positions[int(err['loc'][0])]}] field {f!r}: {err['msg']}"
        for f, err in zip(fields[:3], errors[:3], strict=True)
    ]
    more = f"; and {len(errors) - 3} more" if len(errors) > 3 else ""
    return "; ".join(shown) + more


_LISTS: dict[type[BaseModel], TypeAdapter[list[Any]]] = {}


def _list_of(model: type[BaseModel]) -> TypeAdapter[list[Any]]:
    # Validating a list in one pydantic call costs about a third of one call per item.
    if model not in _LISTS:
        _LISTS[model] = TypeAdapter(list[model])  # type: ignore[valid-type]
    return _LISTS[model]


@dataclass
class Registry:
    """Kind name -> Kind. Applications register theirs with `@registry.kind(...)`."""

    kinds: dict[str, Kind[Any]] = field(default_factory=dict)
    periodic_jobs: dict[str, Periodic] = field(default_factory=dict)
    error_hooks: list[ErrorHook] = field(default_factory=list)
    queue_limits: dict[str, Limit] = field(default_factory=dict)
    schedules: dict[str, Schedule] = field(default_factory=dict)
    autoload: bool = False
    """On a kind it does not know, import the configured application module once
    (ledger/apps.py: LEDGER_APP or [tool.ledger] app) and look again. The
    process-wide default_registry does, so `Client()` in a web tier finds the
    kinds without importing the worker's code by hand."""

    def add(self, kind: Kind[Any]) -> Kind[Any]:
        if kind.name in self.kinds and self.kinds[kind.name] != kind:
            raise ValueError(f"job kind {kind.name!r} is already registered")
        self.kinds[kind.name] = kind
        return kind

    def kind(
        self,
        name: str,
        *,
        args: type[BaseModel] = NoArgs,
        queue: str = defaults.QUEUE,
        priority: int = defaults.PRIORITY,
        max_attempts: int = defaults.MAX_ATTEMPTS,
        timeout: float = defaults.TIMEOUT,
        backoff: Backoff | None = None,
        limit: Limit | None = None,
        unique: Unique | None = None,
    ) -> Callable[[Handler], Handler]:
        """Decorator registering a handler as the work of kind `name`."""

        def register(handler: Handler) -> Handler:
            self.add(Kind(name, args, handler, queue, priority, max_attempts, timeout, backoff, limit, unique))
            return handler

        return register

    def queue_limit(self, queue: str, limit: Limit) -> None:
        """A limit on every job of `queue` (a kind's own limit applies before it); declared by workers."""
        self.queue_limits[queue] = limit

    def limits(self) -> dict[str, Limit]:
        """Every limit this registry declares, by scope (`kind:<kind>`, `queue:<queue>`)."""
        declared = {f"kind:{k.name}": k.limit for k in self.kinds.values() if k.limit is not None}
        return {**declared, **{f"queue:{q}": limit for q, limit in self.queue_limits.items()}}

    def periodic(
        self, kind: str, every: timedelta, *, args: dict[str, Any] | None = None, name: str | None = None
    ) -> None:
        """Enqueue `kind` once every `every`, however many workers run. Re-registering a name replaces it."""
        self.get(kind)
        if every < timedelta(seconds=1):
            raise ValueError("a periodic job needs a period of at least one second")
        self.periodic_jobs[name or kind] = Periodic(name or kind, kind, every, self.validate_args(kind, args))

    def schedule(
        self,
        name: str,
        kind: str,
        *,
        cron: str,
        timezone: str = "UTC",
        missed: cronspec.Missed = "skip",
        args: dict[str, Any] | BaseModel | None = None,
        grace: timedelta = timedelta(minutes=1),
    ) -> Schedule:
        """Enqueue `kind` at each slot of `cron` (5 fields, or 6 with seconds first) in `timezone`,
        once per slot however many workers run. Re-registering a name replaces it.

        `registry.schedule("nightly", "report", cron="0 3 * * *", timezone="Europe/Paris")`
        """
        self.get(kind)
        if not isinstance(name, str) or not re.fullmatch(SCHEDULE_NAME, name):
            raise InvalidArguments(f"name {name!r}: must be 1-100 letters, digits, or _ . : -", ["name"])
        if missed not in ("skip", "once"):
            raise InvalidArguments(f"missed {missed!r}: must be 'skip' or 'once'", ["missed"])
        if grace < timedelta(0):
            raise InvalidArguments("grace: must not be negative", ["grace"])
        cronspec.check(cron, timezone)
        schedule = Schedule(name, kind, cron, timezone, self.validate_args(kind, args), missed, grace)
        self.schedules[name] = schedule
        return schedule

    def on_error(self, hook: ErrorHook) -> ErrorHook:
        """Decorator: `hook(job, error, will_retry)` runs after every failed attempt (alerting, say)."""
        self.error_hooks.append(hook)
        return hook

    def get(self, name: str) -> Kind[Any]:
        kind = self.kinds.get(name)
        if kind is None and self.autoload:
            # Imported here: apps imports the user's module, which imports this one.
            from .apps import load_app

            load_app()
            kind = self.kinds.get(name)
        if kind is None:
            known = ", ".join(sorted(self.kinds)) or "none"
            raise UnknownKind(
                f"unknown job kind {name!r}; known kinds: {known}; register it with @default_registry.kind "
                "in your app module and name the module with --app, LEDGER_APP or [tool.ledger] app"
            )
        return kind

    def validate_args(self, name: str, args: Mapping[str, Any] | BaseModel | None) -> dict[str, Any]:
        """Validated args of kind `name` as JSON-ready data, or InvalidArguments naming the field."""
        return self.validate_args_many(name, [args])[0]

    def validate_args_many(
        self,
        name: str,
        many: Sequence[Mapping[str, Any] | BaseModel | None],
        positions: Sequence[int] | None = None,
    ) -> list[dict[str, Any]]:
        """validate_args for many jobs of kind `name`, in one pydantic call.

        `positions` (default 0, 1, ...) are the jobs' places in the caller's
        batch, for the error message.
        """
        kind = self.get(name)
        values = [a.model_dump(mode="json") if isinstance(a, BaseModel) else {} if a is None else a for a in many]
        adapter = _list_of(kind.args_model)
        try:
            models = adapter.validate_python(values)
        except ValidationError as exc:
            where = positions if positions is not None else range(len(values))
            raise InvalidArguments(
                f"invalid args for job kind {name!r}: {format_validation_error(exc, positions=where)}",
                [f"args.{f}" for f in error_fields(exc, batch=True)],
            ) from None
        dumped: list[dict[str, Any]] = adapter.dump_python(models, mode="json")
        return dumped

    def extended(self, kinds: Iterable[Kind[Any]] = (), periodic: Iterable[Periodic] = ()) -> Registry:
        """A new registry: these kinds and periodic jobs over this one's (which stays as it is).

        The worker runs on such a view, with the built-in kinds' handlers and
        its own schedule, so it never changes the process-wide registry.
        """
        return Registry(
            {**self.kinds, **{k.name: k for k in kinds}},
            {**self.periodic_jobs, **{p.name: p for p in periodic}},
            self.error_hooks,
            self.queue_limits,
            self.schedules,
        )


class PruneArgs(BaseModel):
    """Args of the retention job: how old a finished job's history may get."""

    model_config = ConfigDict(extra="forbid")

    older_than_seconds: float = Field(ge=0)
    purge_discarded: StrictBool = False


def builtin_registry() -> Registry:
    """A registry holding only the built-in kinds (definitions; the worker brings their handlers)."""
    registry = Registry()
    registry.add(Kind(HEARTBEAT, NoArgs, max_attempts=1, timeout=30.0))
    registry.add(Kind(RESCUE, NoArgs, priority=0, max_attempts=1, timeout=60.0))
    # One attempt: the next period's prune is the retry. An hour to walk every partition.
    registry.add(Kind(PRUNE, PruneArgs, priority=9, max_attempts=1, timeout=3600.0))
    return registry


default_registry = builtin_registry()
default_registry.autoload = True
"""The process-wide registry: applications add their kinds here (`@default_registry.kind`)."""
