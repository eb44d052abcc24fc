"""Worker configuration: environment (LEDGER_WORKER_*) first, command-line options over it."""

from __future__ import annotations

import os
import secrets
import socket
from datetime import timedelta

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ledger import defaults
from ledger.durations import parse_duration
from ledger.errors import InvalidArguments

__all__ = ["CONCURRENCY", "WorkerConfig", "parse_queues", "parse_retention"]


def _default_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"


CONCURRENCY = 100
"""A queue's concurrency when none is given. Jobs are mostly I/O (a request, a query, an email) and
an async body costs a task, not a thread: at 10, a worker whose jobs wait 30 ms on I/O did
236-252 jobs/s and a no-op drain spent its time on the per-claim cost of claims of 5 (both
measured: docs/design.md, "The defaults"). A worker of CPU-bound sync handlers wants its cores'
count instead (`--queues default=2`)."""


def parse_queues(spec: str) -> dict[str, int]:
    """`default=100,mail=2` -> {"default": 100, "mail": 2}; a bare name gets CONCURRENCY."""
    queues: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, n = part.partition("=")
        try:
            limit = int(n) if n else CONCURRENCY
        except ValueError:
            raise ValueError(f"queue {name!r}: concurrency {n!r} is not a whole number") from None
        if limit < 1:
            raise ValueError(f"queue {name!r}: concurrency must be at least 1")
        queues[name.strip()] = limit
    if not queues:
        raise ValueError("at least one queue is needed, e.g. default=100")
    return queues


def parse_retention(spec: str) -> timedelta | None:
    """`7d`, `12h`, `2w` -> timedelta; `off` -> None (history kept forever)."""
    if spec.strip().lower() == "off":
        return None
    try:
        return parse_duration(spec)
    except InvalidArguments as exc:
        raise ValueError(f"{exc}, or off") from None


class WorkerConfig(BaseSettings):
    """What a worker serves and how it paces itself."""

    model_config = SettingsConfigDict(env_prefix="LEDGER_WORKER_", extra="ignore")

    queues: str = f"default={CONCURRENCY}"
    """Queues and their concurrency: `default=100,mail=2`."""
    poll_interval: float = Field(1.0, gt=0)
    """Seconds between safety-net polls (jittered ±10%); NOTIFY wakes the worker sooner."""
    cycles: int = Field(2, ge=1, le=8)
    """Cycles (record successes + claim, one transaction each) in flight at once: 2 keeps both of
    PostgreSQL's cores busy while one cycle commits."""
    poll_only: bool = False
    """No LISTEN: for transaction-pooling proxies that cannot hold a listening session."""
    shutdown_timeout: float = Field(30.0, ge=0)
    """Seconds running jobs get to finish after SIGTERM/SIGINT before they are abandoned to the rescue."""
    lease: float = Field(defaults.LEASE.total_seconds(), ge=2)
    """Seconds a worker's jobs stay safe from rescue without a heartbeat; renewed every lease/3."""
    heartbeat_every: float = Field(60.0, ge=1)
    """Period of the `heartbeat` job."""
    rescue_every: float = Field(30.0, ge=1)
    """Period of the orphan rescue job."""
    retention: str = "7d"
    """How long finished (succeeded, cancelled) jobs keep their history: `7d`, `12h`, `2w`; `off` keeps it forever.
    Discarded jobs keep theirs until replayed (or pruned on purpose with `ledger prune --discarded`)."""
    prune_every: float = Field(3600.0, ge=1)
    """Period of the retention job (`ledger.prune`)."""
    metrics_port: int | None = Field(None, ge=0, le=65535)
    """Serve this worker's Prometheus metrics on this port (worker/metrics.py); None: none. 0 picks a free port."""
    metrics_host: str = "127.0.0.1"
    """The address the metrics endpoint binds to: 0.0.0.0 for a Prometheus on another host."""
    id: str = Field(default_factory=_default_id)
    """This worker's name in events and the workers table."""

    @field_validator("queues")
    @classmethod
    def _queues_parse(cls, value: str) -> str:
        parse_queues(value)
        return value

    @field_validator("retention")
    @classmethod
    def _retention_parse(cls, value: str) -> str:
        parse_retention(value)
        return value

    @property
    def retention_period(self) -> timedelta | None:
        """None when retention is off."""
        return parse_retention(self.retention)

    @property
    def queue_limits(self) -> dict[str, int]:
        return parse_queues(self.queues)

    def describe(self) -> str:
        return (
            f"worker {self.id}: queues={self.queues} poll_interval={self.poll_interval}s "
            f"cycles={self.cycles} poll_only={self.poll_only} lease={self.lease}s "
            f"shutdown_timeout={self.shutdown_timeout}s "
            f"heartbeat_every={self.heartbeat_every}s rescue_every={self.rescue_every}s "
            f"retention={self.retention} prune_every={self.prune_every}s"
            + (f" metrics={self.metrics_host}:{self.metrics_port}" if self.metrics_port is not None else "")
        )
