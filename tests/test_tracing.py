"""OpenTelemetry: the enqueue is a span, its trace context rides in the job's history, each attempt is its child.

Spans go to the SDK's in-memory exporter through ledger.tracing.use_tracer_provider,
so the rest of the suite keeps the API's default (no tracing, no metadata).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from ledger import tracing
from ledger.client import Client
from ledger.kinds import JobContext, NoArgs, Registry, builtin_registry
from ledger.store import Store
from ledger.worker.config import WorkerConfig
from ledger.worker.testing import LedgerTesting
from tests.workers import ROOT, run_worker_in_process, wait_until


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with tracing.use_tracer_provider(provider):
        yield exporter


def registry() -> Registry:
    registry = builtin_registry()
    tries: dict[int, int] = {}

    # Fails its first attempt; retries at once (backoff 0), so one drain runs both attempts.
    @registry.kind("flaky", backoff=lambda attempt: 0.0)
    def flaky(ctx: JobContext[NoArgs]) -> None:
        tries[ctx.id] = tries.get(ctx.id, 0) + 1
        if tries[ctx.id] == 1:
            raise ConnectionError("the mail server hung up")

    return registry


def one(spans: InMemorySpanExporter, name: str) -> ReadableSpan:
    [span] = [s for s in spans.get_finished_spans() if s.name == name]
    return span


def children(spans: InMemorySpanExporter, parent: ReadableSpan) -> list[ReadableSpan]:
    assert parent.context is not None
    return [s for s in spans.get_finished_spans() if s.parent and s.parent.span_id == parent.context.span_id]


def test_a_span_tree_runs_from_the_request_through_the_enqueue_to_every_attempt(
    db_url: str, store: Store, spans: InMemorySpanExporter
) -> None:
    ledger = LedgerTesting(db_url, registry())
    request_tracer = trace.get_tracer("the app", tracer_provider=tracing._provider)
    with request_tracer.start_as_current_span("POST /orders"):
        job_id = Client(db_url, registry=ledger.app_registry).enqueue("flaky")
    assert ledger.drain().counts == {"failed": 1, "succeeded": 1}
    ledger.close()

    request = one(spans, "POST /orders")
    enqueue = one(spans, "enqueue flaky")
    assert [s.name for s in children(spans, request)] == ["enqueue flaky"]
    assert enqueue.kind == SpanKind.PRODUCER
    assert enqueue.attributes is not None and enqueue.attributes["ledger.job.id"] == job_id
    first, second = sorted(children(spans, enqueue), key=lambda s: s.attributes["ledger.job.attempt"])  # type: ignore[index]
    for attempt, span in enumerate((first, second), start=1):
        assert span.name == "run flaky" and span.kind == SpanKind.CONSUMER
        assert span.context is not None and request.context is not None
        assert span.context.trace_id == request.context.trace_id, "one trace from the request to the job"
        assert dict(span.attributes or {}) == {
            "messaging.system": "ledger", "messaging.operation.name": "process",
            "messaging.destination.name": "default", "ledger.job.id": job_id, "ledger.job.kind": "flaky",
            "ledger.job.queue": "default", "ledger.job.attempt": attempt,
            "ledger.job.outcome": "failed" if attempt == 1 else "succeeded",
        }  # fmt: skip
    assert first.status.status_code == StatusCode.ERROR
    assert first.status.description == "ConnectionError: the mail server hung up"
    assert [e.attributes["exception.type"] for e in first.events] == ["ConnectionError"]  # type: ignore[index]
    assert second.status.status_code == StatusCode.UNSET
    # The context the attempts were parented on is the one written into the job's history.
    [enqueued, *_] = store.events_for_job(job_id)
    assert enqueue.context is not None
    version, trace_id, span_id, _flags = enqueued.metadata["trace"]["traceparent"].split("-")
    assert (version, trace_id, span_id) == ("00", f"{enqueue.context.trace_id:032x}", f"{enqueue.context.span_id:016x}")


def test_the_workers_attempt_is_the_child_of_the_enqueue(db_url: str, spans: InMemorySpanExporter) -> None:
    app = builtin_registry()

    @app.kind("traced", queue="q")
    async def traced(ctx: JobContext[NoArgs]) -> None:
        return None

    job_id = Client(db_url, registry=app).enqueue("traced")

    def finished(worker: Any) -> None:
        with Client(db_url) as client:
            wait_until(lambda: Store(client._connection()).job(job_id).state == "succeeded", what="the job's success")  # type: ignore[union-attr]

    run_worker_in_process(db_url, app, WorkerConfig(queues="q=2", poll_interval=0.05), finished)
    enqueue, attempt = one(spans, "enqueue traced"), one(spans, "run traced")
    assert attempt.parent is not None and enqueue.context is not None
    assert (attempt.parent.trace_id, attempt.parent.span_id) == (enqueue.context.trace_id, enqueue.context.span_id)
    assert attempt.attributes is not None and attempt.attributes["ledger.job.id"] == job_id


def test_without_a_tracer_provider_nothing_is_traced_or_recorded(db_url: str, store: Store) -> None:
    assert not tracing.enabled(), "the API's default provider records nothing"
    job_id = Client(db_url).enqueue("heartbeat", metadata={"via": "test"})
    assert store.events_for_job(job_id)[0].metadata == {"via": "test"}


def test_without_opentelemetry_installed_the_client_enqueues_as_before(db_url: str, store: Store) -> None:
    # A fresh interpreter in which `import opentelemetry` fails, as it does without the otel extra.
    script = (
        "import sys; sys.modules['opentelemetry'] = None\n"
        "from ledger import tracing; assert tracing.trace is None and not tracing.enabled()\n"
        "from ledger.client import Client\n"
        f"print(Client({db_url!r}).enqueue('heartbeat', metadata={{'via': 'no otel'}}))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)
    job_id = int(out.stdout.strip().splitlines()[-1])
    assert store.events_for_job(job_id)[0].metadata == {"via": "no otel"}
