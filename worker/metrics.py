"""The worker's own Prometheus endpoint (`ledger worker --metrics-port N`): jobs running, claim latency, outcomes.

The web app's /metrics (web/ops.py) reports the ledger as the database sees
it, whichever worker did the work; this endpoint reports one worker process
from the inside: what it runs now, how long its claims take, and how its
attempts ended. Counted where it is cheap: the producer keeps plain counters
on its hot path (a dict increment per job) and a collector reads them at
scrape time; only the claim latency is a prometheus_client Histogram,
observed once per claim. The registry is the worker's own, not the process-wide
default, so two workers in one process (the tests) do not collide.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ledger.errors import ConfigError

if TYPE_CHECKING:
    from .producer import Producer

__all__ = ["CLAIM_BUCKETS", "WorkerMetrics"]

log = logging.getLogger("worker")

# A claim is one round trip: ~1 ms idle on a laptop, tens of ms under load or across a network.
CLAIM_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class _ProducerCollector(Collector):
    """Reads the producer's counters at scrape time (from the HTTP server's thread)."""

    def __init__(self, producer: Producer) -> None:
        self.producer = producer

    def collect(self) -> Iterator[Metric]:
        p = self.producer
        # dict(...) copies under the GIL in one step: the event loop's thread goes on counting.
        active, claimed, outcomes = dict(p.active), dict(p.claimed), dict(p.outcomes)
        running = GaugeMetricFamily(
            "ledger_worker_jobs_running", "Job bodies running in this worker now, per queue.", labels=["queue"]
        )
        slots = GaugeMetricFamily(
            "ledger_worker_slots", "This worker's concurrency per queue (--queues).", labels=["queue"]
        )
        taken = CounterMetricFamily(
            "ledger_worker_jobs_claimed", "Jobs this worker has claimed, per queue.", labels=["queue"]
        )
        for queue, limit in p.limits.items():
            running.add_metric([queue], active.get(queue, 0))
            slots.add_metric([queue], limit)
            taken.add_metric([queue], claimed.get(queue, 0))
        attempts = CounterMetricFamily(
            "ledger_worker_attempts",
            "Attempts this worker ran, by kind and how they ended "
            "(succeeded, failed, discarded, snoozed, cancelled, stopped).",
            labels=["kind", "outcome"],
        )
        for (kind, outcome), n in sorted(outcomes.items()):
            attempts.add_metric([kind, outcome], n)
        yield from (running, slots, taken, attempts)


class WorkerMetrics:
    """One worker's metrics and the HTTP server that exposes them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.claim_seconds = Histogram(
            "ledger_worker_claim_seconds",
            "Time one claim took, from sending it to having the jobs (a cycle that also recorded successes included).",
            buckets=CLAIM_BUCKETS,
            registry=self.registry,
        )
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def watch(self, producer: Producer) -> None:
        """Report this producer's jobs and outcomes; its claims report themselves through claim_seconds."""
        self.registry.register(_ProducerCollector(producer))
        producer.claim_seconds = self.claim_seconds

    def serve(self, host: str, port: int) -> int:
        """Serve /metrics on host:port in a thread; the port (0 picks a free one)."""
        try:
            self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise ConfigError(
                f"cannot serve the worker's metrics on {host}:{port}: {exc.strerror or exc}; "
                "choose another --metrics-port (LEDGER_WORKER_METRICS_PORT)"
            ) from exc
        bound: int = self._server.server_port
        log.info("worker metrics on http://%s:%d/metrics", host, bound)
        return bound

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
