"""Job states and event types: what each means and what moves a job in or out."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["EventType", "JobState"]


class JobState(StrEnum):
    """States of the current-state projection (`ledger.job_state` in schema.sql)."""

    SCHEDULED = "scheduled"
    """Waiting for run_at: enqueued for later, or snoozed. Claimable once due."""
    AVAILABLE = "available"
    """Ready to run now: enqueued, replayed. Left by a claim (started) or cancel."""
    RUNNING = "running"
    """Claimed by a worker. Left by succeeded, failed, discarded, snoozed, cancelled or rescued."""
    RETRYABLE = "retryable"
    """An attempt failed (or its worker vanished) with attempts left; claimable again from run_at."""
    SUCCEEDED = "succeeded"
    """Terminal: the work completed."""
    CANCELLED = "cancelled"
    """Terminal: stopped on purpose, by an operator or the job itself. Replay revives it."""
    DISCARDED = "discarded"
    """Terminal: the last attempt failed. Listed in the discarded projection; replay revives it."""


class EventType(StrEnum):
    """Event types of the ledger (`ledger.event_type` in schema.sql)."""

    ENQUEUED = "enqueued"
    """A job is created: kind, queue, priority, args, max_attempts, run_at. -> available or scheduled."""
    STARTED = "started"
    """A worker claimed it; attempt + 1. available/scheduled/retryable -> running."""
    SUCCEEDED = "succeeded"
    """running -> succeeded."""
    FAILED = "failed"
    """An attempt failed with attempts left. running -> retryable at a backoff delay."""
    DISCARDED = "discarded"
    """An attempt failed with none left (or the job gave up). running -> discarded."""
    CANCELLED = "cancelled"
    """scheduled/available/retryable/running -> cancelled."""
    SNOOZED = "snoozed"
    """The job asked to run later. running -> scheduled; max_attempts + 1 so it costs no attempt."""
    RESCUED = "rescued"
    """Its worker stopped heart-beating. running -> retryable now, or discarded with no attempts left."""
    REPLAYED = "replayed"
    """An operator put it back. discarded/cancelled -> available, attempt 0; records who and why."""
    STOPPED = "stopped"
    """The body of a job cancelled while it ran has ended: when, on which worker, and how
    (stopped on the cancel, or ran to its end anyway). cancelled -> cancelled."""
