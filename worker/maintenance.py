"""The built-in maintenance jobs — heartbeat, rescue, prune — and the registry view the worker runs on.

ledger/kinds.py defines these kinds (any client may enqueue them); their
handlers live here because they do I/O. `worker_registry` returns a view of
the application's registry with the handlers attached and the schedule the
worker was configured with, so the process-wide registry is never changed.

The rescue (`ledger.rescue`) is where a dead worker's jobs come back: every
`rescue_every` seconds one worker of the fleet runs it, and ledger.job_rescue
returns the running jobs whose worker's lease expired to `retryable` (or
discards them when no attempt is left), each with a `rescued` event.
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import timedelta

from ledger.db import connect
from ledger.defaults import QUEUE
from ledger.kinds import HEARTBEAT, PRUNE, RESCUE, Handler, JobContext, NoArgs, Periodic, PruneArgs, Registry
from ledger.retention import prune
from ledger.store import Store

from .config import WorkerConfig

__all__ = ["worker_registry"]

log = logging.getLogger("ledger.jobs")


def _heartbeat(ctx: JobContext[NoArgs]) -> None:
    log.info("worker heartbeat", extra={"job_id": ctx.id, "worker": ctx.worker})


def _rescue(ctx: JobContext[NoArgs]) -> None:
    with connect(ctx.database_url) as conn:
        rescued = Store(conn).rescue()
    if rescued:
        log.info("rescued %d job(s) of vanished workers: %s", len(rescued), [j.id for j in rescued])


def _prune(ctx: JobContext[PruneArgs]) -> None:
    with connect(ctx.database_url) as conn:
        report = prune(
            Store(conn), timedelta(seconds=ctx.args.older_than_seconds), purge_discarded=ctx.args.purge_discarded
        )
    log.info("retention: %s", report)


_HANDLERS: dict[str, Handler] = {HEARTBEAT: _heartbeat, RESCUE: _rescue, PRUNE: _prune}


def worker_registry(app: Registry, config: WorkerConfig) -> Registry:
    """The application's kinds plus the maintenance jobs, with their handlers and this worker's schedule."""
    queues = config.queue_limits
    # Maintenance runs on a queue this worker serves: a worker of `mail` alone
    # would otherwise enqueue its rescue and prune into `default`, where no one
    # takes them, and a dead worker's jobs would never come back.
    home = QUEUE if QUEUE in queues else next(iter(queues))
    kinds = [
        dataclasses.replace(app.get(name), handler=handler, queue=home)
        for name, handler in _HANDLERS.items()
        if name in app.kinds
    ]
    periodic = [
        Periodic(HEARTBEAT, HEARTBEAT, timedelta(seconds=config.heartbeat_every)),
        Periodic(RESCUE, RESCUE, timedelta(seconds=config.rescue_every)),
    ]
    if config.retention_period is not None:
        args = {"older_than_seconds": config.retention_period.total_seconds(), "purge_discarded": False}
        periodic.append(Periodic(PRUNE, PRUNE, timedelta(seconds=config.prune_every), args))
    # The app's own periodic jobs stay beside the worker's schedule of the built-ins.
    return app.extended(kinds, [p for p in periodic if p.kind in app.kinds])
