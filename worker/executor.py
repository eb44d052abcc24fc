"""The executor: run one claimed job's handler and turn what happened into an Outcome.

Async handlers run on the event loop; sync ones in a worker thread. A
per-kind timeout cancels an attempt that runs too long and counts it as a
failure. A sync handler cannot be interrupted: on timeout the worker stops
waiting for its thread and records the failure, and the thread finishes on
its own. Nothing here touches the database.

With OpenTelemetry configured, each attempt runs in a span that is the child
of the enqueue's (ledger/tracing.py); the caller passes the trace context the
enqueue recorded.
"""

from __future__ import annotations

import asyncio
import inspect
import random
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import anyio
import anyio.to_thread
from pydantic import BaseModel, ValidationError

from ledger import tracing
from ledger.defaults import RESULT_MAX_BYTES
from ledger.errors import InvalidArguments, UnknownKind
from ledger.jsoncheck import dump_json
from ledger.kinds import CancelFlag, JobCancel, JobContext, JobDiscard, JobSnooze, Registry, format_validation_error
from ledger.models import Job
from ledger.retry_policy import retry_at

__all__ = ["Outcome", "execute"]

OutcomeKind = Literal["succeeded", "failed", "discarded", "snoozed", "cancelled", "stopped"]
"""What an attempt came to. `cancelled`: the job cancelled itself (JobCancel); `stopped`: an
operator cancelled it while it ran and the async body was stopped (ledger.job_stop records it)."""


@dataclass(frozen=True)
class Outcome:
    """What an attempt came to, ready for the completer to record."""

    job: Job
    kind: OutcomeKind
    duration: float
    error: str | None = None
    traceback: str | None = None
    retry_at: datetime | None = None
    """For a failure: when to retry, if attempts remain (ledger/retry_policy.py)."""
    run_at: datetime | None = None
    """For a snooze: when to run again."""
    result: str | None = None
    """For a success: what the handler returned, as JSON text (None when it returned None)."""
    exception: BaseException | None = field(default=None, compare=False)


def _ignore(value: dict[str, Any]) -> None:
    del value


def result_json(value: Any) -> str:
    """A handler's return value as the JSON text its `succeeded` event keeps; InvalidArguments
    naming `result` when it is not JSON or is larger than RESULT_MAX_BYTES."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    try:
        text = dump_json(value, "result")
    except TypeError:
        raise InvalidArguments(
            f"result: a {type(value).__name__} is not JSON; return a dict, list, str, number or pydantic model",
            ["result"],
        ) from None
    size = len(text.encode("utf-8"))
    if size > RESULT_MAX_BYTES:
        raise InvalidArguments(f"result: {size:,} bytes of JSON; the limit is {RESULT_MAX_BYTES:,}", ["result"])
    return text


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _now() -> datetime:
    return datetime.now(UTC)


async def execute(
    job: Job,
    registry: Registry,
    worker: str,
    database_url: str,
    *,
    clock: Callable[[], datetime] = _now,
    jitter: Callable[[], float] = random.random,
    cancelled: CancelFlag | None = None,
    trace: Mapping[str, str] | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> Outcome:
    """Run `job` to an Outcome; never raises for anything the handler does.

    `clock` and `jitter` feed the retry policy of a failed attempt; tests pass fixed ones.
    `cancelled` is the handler's ctx.cancelled: the producer sets it (and cancels this
    task, for an async handler) when an operator cancels the job. `trace` is the
    trace context the job's enqueue recorded: the attempt's span is its child. `progress`
    takes what the handler reports with ctx.progress(...).
    """
    if not tracing.enabled():  # the hot path pays one check
        return await _execute(job, registry, worker, database_url, clock, jitter, cancelled, progress)
    with tracing.attempt_span(job, trace) as attempt:
        outcome = await _execute(job, registry, worker, database_url, clock, jitter, cancelled, progress)
        attempt.outcome(outcome.kind, outcome.error, outcome.exception)
        return outcome


async def _execute(
    job: Job,
    registry: Registry,
    worker: str,
    database_url: str,
    clock: Callable[[], datetime],
    jitter: Callable[[], float],
    cancelled: CancelFlag | None,
    progress: Callable[[dict[str, Any]], None] | None,
) -> Outcome:
    cancelled = cancelled or CancelFlag()
    started = time.monotonic()

    def done(kind: OutcomeKind, **kw: Any) -> Outcome:
        return Outcome(job=job, kind=kind, duration=time.monotonic() - started, **kw)

    def failure(exc: BaseException, message: str | None = None, *, discard: bool = False) -> Outcome:
        kind = registry.kinds.get(job.kind)
        return done(
            "discarded" if discard else "failed",
            error=message or _error_text(exc),
            traceback="".join(traceback.format_exception(exc)),
            retry_at=None if discard else retry_at(job.attempt, clock(), jitter(), kind.backoff if kind else None),
            exception=exc,
        )

    try:
        kind = registry.get(job.kind)
        try:
            args = kind.args_model.model_validate(job.args)
        except ValidationError as exc:
            return failure(exc, f"invalid args for job kind {job.kind!r}: {format_validation_error(exc)}")
        if kind.handler is None:
            raise UnknownKind(f"job kind {job.kind!r} has no handler in this worker")
        ctx = JobContext(
            args=args, job=job, worker=worker, database_url=database_url, cancelled=cancelled,
            report=progress or _ignore,
        )  # fmt: skip
        handler = kind.handler
        if inspect.iscoroutinefunction(handler):
            # asyncio.timeout, not anyio.fail_after: this is the per-job hot path and
            # anyio's cancel scopes cost several times more; the worker runs on asyncio.
            async with asyncio.timeout(kind.timeout):
                value = await handler(ctx)
        else:
            with anyio.fail_after(kind.timeout):
                value = await anyio.to_thread.run_sync(handler, ctx, abandon_on_cancel=True)
                if inspect.isawaitable(value):
                    value = await value
        if value is None:
            return done("succeeded")
        try:
            return done("succeeded", result=result_json(value))
        except InvalidArguments as exc:
            # Retrying cannot shrink what the code returns: discarded, saying why.
            return failure(exc, str(exc), discard=True)
    except JobSnooze as s:
        return done("snoozed", run_at=s.run_at)
    except JobCancel as c:
        return done("cancelled", error=c.reason)
    except JobDiscard as d:
        return failure(d, d.reason, discard=True)
    except TimeoutError as exc:
        seconds = registry.kinds[job.kind].timeout if job.kind in registry.kinds else 0
        return failure(exc, f"timed out after {seconds:g}s")
    except asyncio.CancelledError:
        if not cancelled.is_set():
            raise  # the worker is abandoning this attempt; the rescue will return it to work
        # An operator's cancel: this attempt ends here, and that is its outcome.
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        return done("stopped", error="stopped on the cancel")
    except Exception as exc:
        return failure(exc)
