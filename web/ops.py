"""Operational endpoints: /healthz, /debug/enqueue-test and /metrics (Prometheus, by prometheus_client)."""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Iterator
from typing import Any, ClassVar

import falcon
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.utils import floatToGoString
from psycopg_pool import ConnectionPool

from ledger.client import Client
from ledger.kinds import HEARTBEAT, Registry

from .stores import store

__all__ = ["EnqueueTestResource", "HealthResource", "LedgerCollector", "MetricsResource"]

log = logging.getLogger(__name__)


class HealthResource:
    area = "ops"

    def __init__(self, pool: ConnectionPool[Any]) -> None:
        self.pool = pool

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        try:
            with store(self.pool, timeout=2) as s:
                version = s.schema_version()
            resp.media = {"status": "ok", "database": "up", "schema_version": version}
        except Exception as exc:  # any failure to answer is "down" for a health check
            resp.status = falcon.HTTP_503
            resp.media = {"status": "unavailable", "database": "down", "error": type(exc).__name__}


class EnqueueTestResource:
    """GET /debug/enqueue-test: enqueue a heartbeat job, the web -> worker path in one curl."""

    area = "debug"

    def __init__(self, pool: ConnectionPool[Any], registry: Registry) -> None:
        self.pool = pool
        self.registry = registry

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = falcon.MEDIA_TEXT
        try:
            with store(self.pool, timeout=5) as s:
                job_id = Client(registry=self.registry).enqueue(HEARTBEAT, conn=s.conn, metadata={"via": "web"})
        except Exception as exc:  # the route's contract: any refusal is a 500 naming the reason
            log.warning("enqueue-test failed: %s", exc)
            resp.status = falcon.HTTP_500
            reason = " ".join(str(exc).split()) or type(exc).__name__
            resp.text = f"enqueue failed: {reason}\n"
            return
        resp.text = f"enqueued heartbeat job id={job_id}\n"


class LedgerCollector:
    """The ledger's metrics as prometheus_client metric families, read from the store at each scrape.

    Cheap with millions of jobs: see job_counts() and metrics_refresh() in schema.sql. The
    histograms are folded in the database (per kind, cumulative buckets); this hands them over.
    """

    HISTOGRAMS: ClassVar[dict[str, tuple[str, str]]] = {
        "wait": (
            "ledger_job_wait_seconds",
            "Time from a job being due (enqueued, retry time) to its attempt starting.",
        ),
        "run": ("ledger_job_run_seconds", "Time an attempt ran, per kind."),
    }

    def __init__(self, pool: ConnectionPool[Any]) -> None:
        self.pool = pool

    def collect(self) -> Iterator[Metric]:
        with store(self.pool) as s:
            s.metrics_refresh()
            counts = s.job_counts()
            histograms = s.metrics_histogram()
            appended = s.events_appended()
            unserved = s.kinds_unserved()
        jobs = GaugeMetricFamily(
            "ledger_jobs",
            'Jobs by state and queue; past 100k jobs, finished states are estimated (queue="*").',
            labels=["state", "queue"],
        )
        for c in counts:
            jobs.add_metric([c.state, c.queue], c.count)
        yield jobs
        waiting = GaugeMetricFamily(
            "ledger_jobs_unserved",
            "Due jobs no live worker can run (no worker of their queue has code for their kind).",
            labels=["queue", "kind"],
        )
        for u in unserved:
            waiting.add_metric([u["queue"], u["kind"]], u["jobs"])
        yield waiting
        yield CounterMetricFamily("ledger_events_appended", "Events appended to the ledger.", value=appended)
        by_metric: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
        for h in histograms:  # ordered by metric, kind, le
            by_metric[h["metric"]][h["kind"]].append(h)
        for metric, (name, help_text) in self.HISTOGRAMS.items():
            family = HistogramMetricFamily(name, help_text, labels=["kind"])
            for kind, buckets in by_metric.get(metric, {}).items():
                total = next((b["sum"] for b in buckets if math.isinf(b["le"])), 0.0)
                bounds = [(floatToGoString(b["le"]), b["count"]) for b in buckets]  # type: ignore[no-untyped-call]
                family.add_metric([kind], bounds, total)
            yield family


class MetricsResource:
    """GET /metrics: the Prometheus text format (or OpenMetrics, when the scraper asks for it), by prometheus_client."""

    area = "ops"

    def __init__(self, pool: ConnectionPool[Any]) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(LedgerCollector(pool))

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        encode, content_type = choose_encoder(req.get_header("Accept") or "")
        resp.data = encode(self.registry)
        resp.content_type = content_type
