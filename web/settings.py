"""Web settings from the environment (LEDGER_*), beside the core's Settings."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["WebSettings"]


class WebSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LEDGER_", extra="ignore")

    api_token: str | None = None
    """LEDGER_API_TOKEN: protects API writes (bearer) and the dashboard (login form). Required in production."""
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
