"""The falcon WSGI app: `create_app(settings)` wires routes, middleware and error handlers."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import falcon
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from ledger.db import RECONNECT_TIMEOUT, connect, connection_options, database_url, fit
from ledger.kinds import Registry, default_registry
from ledger.migrate import migrate
from ledger.settings import Settings, get_settings, load_settings

from . import errors
from .api import JOB_ID, CountsResource, JobActionResource, JobResource, JobsResource
from .auth import Access
from .dashboard import Dashboard
from .openapi import document
from .operators import (
    BulkResource,
    LimitResource,
    LimitsResource,
    QueueActionResource,
    QueuesResource,
    ScheduleActionResource,
    SchedulesResource,
    ThroughputResource,
)
from .ops import EnqueueTestResource, HealthResource, MetricsResource
from .security import BodyLimit, SameOrigin, SecurityHeaders
from .sessions import Sessions
from .settings import WebSettings
from .signin import Login, Logout
from .startup import check_settings
from .throttle import Throttle

__all__ = ["create_app"]

log = logging.getLogger(__name__)
STATIC = Path(__file__).with_name("static")


class OpenAPIResource:
    area = "api"  # it names every kind and its arguments: as private as the API

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = document(self.registry)


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def create_app(
    settings: Settings | None = None,
    web: WebSettings | None = None,
    *,
    pool: ConnectionPool[Any] | None = None,
    registry: Registry = default_registry,
) -> falcon.App[Any, Any]:
    """The app, with a connection pool of `web.pool_size` (one per gunicorn thread)."""
    settings = settings or get_settings()
    web = web or load_settings(WebSettings)
    check_settings(settings, web)
    debug_routes = web.debug_routes if web.debug_routes is not None else not settings.production
    if pool is None:
        url = database_url(settings)
        if not settings.production:
            with connect(url) as conn:
                migrate(conn)
        pool = ConnectionPool(
            url,
            min_size=1,
            max_size=web.pool_size,
            kwargs={"autocommit": True, "row_factory": dict_row, **connection_options(url)},
            configure=fit,  # prepared statements unless a pooler sits in between
            reconnect_timeout=RECONNECT_TIMEOUT,
            check=ConnectionPool.check_connection,
            timeout=5.0,
            open=True,
            name="ledger-web",
        )

    sessions = Sessions(pool, web.session_ttl)
    throttle = Throttle(pool, web.auth_max_failures, web.auth_window)
    middleware: list[Any] = [
        SecurityHeaders(),
        BodyLimit(web.max_body),
        SameOrigin(),
        Access(web.api_token, sessions, throttle, public_ops=web.public_ops),
    ]
    app = falcon.App(middleware=middleware)
    app.req_options.strip_url_path_trailing_slash = True
    # A body nested too deeply for the parser is malformed JSON (400), not a server error.
    app.req_options.media_handlers[falcon.MEDIA_JSON] = falcon.media.JSONHandler(loads=_loads)
    errors.install(app)

    app.add_route("/healthz", HealthResource(pool))
    app.add_route("/metrics", MetricsResource(pool))
    app.add_route("/openapi.json", OpenAPIResource(registry))
    if debug_routes:
        app.add_route("/debug/enqueue-test", EnqueueTestResource(pool, registry))
    app.add_route("/api/jobs", JobsResource(pool, registry))
    app.add_route(f"/api/jobs/{JOB_ID}", JobResource(pool, registry))
    app.add_route(f"/api/jobs/{JOB_ID}/replay", JobActionResource(pool, registry, "replay"))
    app.add_route(f"/api/jobs/{JOB_ID}/cancel", JobActionResource(pool, registry, "cancel"))
    app.add_route("/api/counts", CountsResource(pool, registry))
    # Operators (web/operators.py): bulk acts, queues, limits, schedules, throughput.
    app.add_route("/api/jobs/replay", BulkResource(pool, registry, "replay"))
    app.add_route("/api/jobs/cancel", BulkResource(pool, registry, "cancel"))
    app.add_route("/api/queues", QueuesResource(pool, registry))
    app.add_route("/api/queues/{queue}/pause", QueueActionResource(pool, registry, True))
    app.add_route("/api/queues/{queue}/resume", QueueActionResource(pool, registry, False))
    app.add_route("/api/limits", LimitsResource(pool, registry))
    app.add_route("/api/limits/{scope}", LimitResource(pool, registry))
    app.add_route("/api/schedules", SchedulesResource(pool, registry))
    app.add_route("/api/schedules/{name}/pause", ScheduleActionResource(pool, registry, True))
    app.add_route("/api/schedules/{name}/resume", ScheduleActionResource(pool, registry, False))
    app.add_route("/api/throughput", ThroughputResource(pool, registry))
    Dashboard(pool).install(app)
    app.add_route("/login", Login(web.api_token, sessions, throttle))
    app.add_route("/logout", Logout(sessions))
    app.add_static_route("/static", str(STATIC))
    return app
