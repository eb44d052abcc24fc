"""Web settings from the environment (LEDGER_*), beside the core's Settings."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from ledger.durations import parse_duration
from ledger.errors import InvalidArguments

__all__ = ["WebSettings"]


def _duration(value: Any) -> Any:
    """`8h`, `30m`, `1d`; anything else (seconds, ISO 8601) is left to pydantic."""
    if isinstance(value, str):
        try:
            return parse_duration(value)
        except InvalidArguments:
            return value
    return value


def _positive(value: timedelta) -> timedelta:
    if value <= timedelta(0):
        raise ValueError("must be longer than zero")
    return value


Duration = Annotated[timedelta, BeforeValidator(_duration), AfterValidator(_positive)]


class WebSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LEDGER_", extra="ignore")

    api_token: str | None = None
    """LEDGER_API_TOKEN: with it set, every page and API call needs it: the API (reads too) as
    `Authorization: Bearer <token>`, the dashboard through its sign-in form. Required in production."""
    public_ops: bool = False
    """LEDGER_PUBLIC_OPS: serve /healthz and /metrics without the token (a load balancer's probe, a
    Prometheus without credentials). Off by default: with a token set they need it like the API,
    since /metrics names every queue and kind."""
    session_ttl: Duration = timedelta(hours=8)
    """LEDGER_SESSION_TTL: how long a dashboard sign-in lasts (`8h`, `30m`, or seconds); sign-out ends it sooner."""
    auth_max_failures: int = Field(10, ge=1)
    """LEDGER_AUTH_MAX_FAILURES: wrong tokens a client address may send (sign-in or bearer) in one window…"""
    auth_window: Duration = timedelta(minutes=15)
    """LEDGER_AUTH_WINDOW: …which opens at its first failure (`15m`); past the limit it gets 429 until the
    window closes, and no token it sends is compared meanwhile."""
    debug_routes: bool | None = None
    """LEDGER_DEBUG_ROUTES: /debug/* routes; on in development, off in production unless set."""
    max_body: int = Field(64 * 1024, ge=1024)
    """LEDGER_MAX_BODY: largest request body in bytes; larger ones get 413."""
    pool_size: int = Field(8, ge=1)
    """LEDGER_POOL_SIZE: connections per gunicorn worker process (match its threads)."""
    web_host: str = "127.0.0.1"
    """LEDGER_WEB_HOST: the address gunicorn binds (web/gunicorn_conf.py)."""
    web_port: int = Field(8000, ge=1, le=65535)
    """LEDGER_WEB_PORT: the port gunicorn binds."""
    web_workers: int = Field(2, ge=1)
    """LEDGER_WEB_WORKERS: gunicorn worker processes."""
    web_threads: int | None = Field(None, ge=1)
    """LEDGER_WEB_THREADS: threads per process; unset, LEDGER_POOL_SIZE (one pool connection per thread)."""
