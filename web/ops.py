"""Operational endpoints: /healthz, /debug/enqueue-test and /metrics (Prometheus text)."""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from typing import Any

import falcon
from psycopg_pool import ConnectionPool

from ledger.client import Client
from ledger.kinds import HEARTBEAT, Registry

from .stores import store

__all__ = ["EnqueueTestResource", "HealthResource", "MetricsResource"]

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


def _fmt(value: float) -> str:
    return "+Inf" if math.isinf(value) else f"{value:g}"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class MetricsResource:
    """Prometheus text format. Cheap with millions of jobs: see job_counts() and metrics_refresh()."""

    area = "ops"

    def __init__(self, pool: ConnectionPool[Any]) -> None:
        self.pool = pool

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        with store(self.pool) as s:
            s.metrics_refresh()
            counts = s.job_counts()
            histograms = s.metrics_histogram()
            appended = s.events_appended()
        lines = [
            '# HELP ledger_jobs Jobs by state and queue; past 100k jobs, finished states are estimated (queue="*").',
            "# TYPE ledger_jobs gauge",
            *(f'ledger_jobs{{state="{c.state}",queue="{_label(c.queue)}"}} {c.count}' for c in counts),
            "# HELP ledger_events_appended_total Events appended to the ledger.",
            "# TYPE ledger_events_appended_total counter",
            f"ledger_events_appended_total {appended}",
        ]
        names = {"wait": "ledger_job_wait_seconds", "run": "ledger_job_run_seconds"}
        helps = {
            "wait": "Time from a job being due (enqueued, retry time) to its attempt starting.",
            "run": "Time an attempt ran, per kind.",
        }
        by_metric: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for h in histograms:
            by_metric[h["metric"]].append(h)
        for metric, name in names.items():
            lines += [f"# HELP {name} {helps[metric]}", f"# TYPE {name} histogram"]
            for h in by_metric.get(metric, []):
                kind = _label(h["kind"])
                lines.append(f'{name}_bucket{{kind="{kind}",le="{_fmt(h["le"])}"}} {h["count"]}')
                if math.isinf(h["le"]):
                    lines.append(f'{name}_sum{{kind="{kind}"}} {h["sum"]:.6f}')
                    lines.append(f'{name}_count{{kind="{kind}"}} {h["count"]}')
        resp.content_type = "text/plain; version=0.0.4; charset=utf-8"
        resp.text = "\n".join(lines) + "\n"
