"""`ledger worker`: the worker's command, plugged into the `ledger` CLI by entry point."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import typer

__all__ = ["worker"]


def worker(
    queues: str | None = typer.Option(None, help="Queues and concurrency, e.g. default=100,mail=2 (a bare name: 100)."),
    poll_interval: float | None = typer.Option(None, help="Seconds between safety-net polls."),
    poll_only: bool | None = typer.Option(None, "--poll-only/--listen", help="Poll without LISTEN/NOTIFY."),
    cycles: int | None = typer.Option(None, help="Claim/complete transactions in flight at once (default 2)."),
    shutdown_timeout: float | None = typer.Option(None, help="Seconds jobs get to finish on SIGTERM."),
    lease: float | None = typer.Option(None, help="Seconds without heartbeat before jobs are rescued."),
    heartbeat_every: float | None = typer.Option(None, help="Period of the heartbeat job, seconds."),
    rescue_every: float | None = typer.Option(None, help="Period of the orphan rescue job, seconds."),
    retention: str | None = typer.Option(None, help="How long finished jobs keep their history (7d, 12h; off)."),
    prune_every: float | None = typer.Option(None, help="Period of the retention job, seconds."),
    app_module: str | None = typer.Option(
        None, "--app", help="Module that registers your job kinds (else LEDGER_APP, else [tool.ledger] app)."
    ),
    metrics_port: int | None = typer.Option(None, help="Serve this worker's Prometheus metrics on this port."),
    metrics_host: str | None = typer.Option(None, help="Address of the metrics endpoint (default 127.0.0.1)."),
) -> None:
    """Run the worker: claim jobs of the queues, run them, record outcomes, until SIGTERM/SIGINT."""
    import anyio
    from pydantic import ValidationError

    from ledger.apps import load_app
    from ledger.console import fail
    from ledger.db import database_url
    from ledger.errors import LedgerError
    from ledger.kinds import default_registry, format_validation_error
    from ledger.settings import get_settings

    from .config import WorkerConfig
    from .runtime import Worker

    try:
        app = load_app(app_module)
    except LedgerError as exc:
        fail(str(exc))
    given: dict[str, Any] = {
        "queues": queues, "poll_interval": poll_interval, "poll_only": poll_only, "cycles": cycles,
        "shutdown_timeout": shutdown_timeout, "lease": lease,
        "heartbeat_every": heartbeat_every, "rescue_every": rescue_every,
        "retention": retention, "prune_every": prune_every,
        "metrics_port": metrics_port, "metrics_host": metrics_host,
    }  # fmt: skip
    try:
        config = WorkerConfig(**{k: v for k, v in given.items() if v is not None})
    except ValidationError as exc:
        fail(f"invalid worker configuration: {format_validation_error(exc)}", 2)
    logging.getLogger().setLevel(logging.INFO)
    try:
        url = database_url()
        code = anyio.run(Worker(config, default_registry, url, app=app, listen_url=get_settings().listen_url).run)
    except LedgerError as exc:
        fail(str(exc))
    sys.stdout.flush()
    sys.stderr.flush()
    # Threads of abandoned sync jobs must not hold the process open.
    os._exit(code)
