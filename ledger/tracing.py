"""OpenTelemetry, when it is installed: a span per enqueue, its trace context in the job's history, a span per attempt.

Optional (`pip install 'jobledger[otel]'`). Without opentelemetry, or with no
tracer provider configured (the API's default proxy), every function here is
a no-op and the enqueue's metadata is unchanged.

- The client's enqueue is a PRODUCER span, `enqueue <kind>`; inside it the
  W3C trace context (the global propagator: `traceparent`, `tracestate`,
  baggage if configured) is written under `trace` in the `enqueued` event's
  metadata. The enqueue that joins the caller's transaction is traced like
  any other: the span ends with the statement, not with the caller's commit.
- A worker's attempt is a CONSUMER span, `run <kind>`, whose parent is that
  recorded context: one trace from the request that enqueued to every attempt
  (retries are siblings under the enqueue span). It carries the job's id, kind,
  queue and attempt, and, for an attempt that failed, the exception and an
  ERROR status.

The spans go to the global tracer provider, or to the one `use_tracer_provider`
names (a test's in-memory exporter, or an application that keeps its own).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

try:
    from opentelemetry import propagate, trace
    from opentelemetry.trace import SpanKind, Status, StatusCode
except ImportError:  # the otel extra is not installed: tracing stays off
    trace = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer, TracerProvider

    from .models import Job

__all__ = ["Attempt", "attempt_span", "enabled", "enqueue_span", "use_tracer_provider"]

SYSTEM = "ledger"
_provider: TracerProvider | None = None


def _provider_in_use() -> TracerProvider | None:
    if trace is None:
        return None
    provider = _provider or trace.get_tracer_provider()
    # The API's defaults record nothing: skip the work (and the metadata) altogether.
    if isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
        return None
    return provider


def _tracer() -> Tracer | None:
    provider = _provider_in_use()
    return provider.get_tracer("ledger") if provider is not None else None


def enabled() -> bool:
    """True when spans would be recorded: opentelemetry is installed and a tracer provider is set."""
    return _provider_in_use() is not None


@contextlib.contextmanager
def use_tracer_provider(provider: TracerProvider | None) -> Iterator[None]:
    """Send ledger's spans to `provider` (instead of the global one) inside the block."""
    global _provider
    before, _provider = _provider, provider
    try:
        yield
    finally:
        _provider = before


@contextlib.contextmanager
def enqueue_span(
    kinds: Sequence[str], queues: Sequence[str], metadata: dict[str, Any] | None
) -> Iterator[tuple[Span | None, dict[str, Any] | None]]:
    """The enqueue of these jobs as a span; yields (span, metadata with the trace context added).

    Without tracing: (None, metadata) unchanged.
    """
    tracer = _tracer()
    if tracer is None:
        yield None, metadata
        return
    names = sorted(set(kinds))
    attributes: dict[str, Any] = {
        "messaging.system": SYSTEM,
        "messaging.operation.name": "enqueue",
        "messaging.batch.message_count": len(kinds),
        "ledger.job.kind": names[0] if len(names) == 1 else names,
    }
    if len(set(queues)) == 1:
        attributes["messaging.destination.name"] = queues[0]
    name = f"enqueue {names[0]}" if len(names) == 1 else "enqueue"
    with tracer.start_as_current_span(name, kind=SpanKind.PRODUCER, attributes=attributes) as span:
        carrier: dict[str, str] = {}
        propagate.inject(carrier)  # the current context: this span
        yield span, {**(metadata or {}), "trace": carrier}


def enqueued(span: Span | None, ids: Sequence[int]) -> None:
    """Name the jobs an enqueue span made, once their ids are known."""
    if span is not None:
        span.set_attribute("ledger.job.id", ids[0] if len(ids) == 1 else list(ids))


class Attempt:
    """The span of one attempt; `outcome` records how it ended."""

    def __init__(self, span: Span | None) -> None:
        self.span = span

    def outcome(self, kind: str, error: str | None = None, exception: BaseException | None = None) -> None:
        if self.span is None:
            return
        self.span.set_attribute("ledger.job.outcome", kind)
        if kind in ("failed", "discarded"):
            if exception is not None:
                self.span.record_exception(exception)
            self.span.set_status(Status(StatusCode.ERROR, error))


@contextlib.contextmanager
def attempt_span(job: Job, carrier: Mapping[str, str] | None) -> Iterator[Attempt]:
    """One attempt of `job` as a span, the child of the enqueue that `carrier` recorded (if any)."""
    tracer = _tracer()
    if tracer is None:
        yield Attempt(None)
        return
    parent = propagate.extract(dict(carrier)) if carrier else None
    attributes: dict[str, Any] = {
        "messaging.system": SYSTEM,
        "messaging.operation.name": "process",
        "messaging.destination.name": job.queue,
        "ledger.job.id": job.id,
        "ledger.job.kind": job.kind,
        "ledger.job.queue": job.queue,
        "ledger.job.attempt": job.attempt,
    }
    # The executor records the outcome itself; an exception escaping here is an
    # abandon (the worker's shutdown), which is not the job's error.
    with tracer.start_as_current_span(
        f"run {job.kind}",
        context=parent,
        kind=SpanKind.CONSUMER,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        yield Attempt(span)
