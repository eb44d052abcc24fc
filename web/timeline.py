"""A job's events grouped for people: each attempt (worker, start, end, duration, error, traceback)
and every other event (enqueue, replay, cancel, rescue) with who and why. Pure; no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ledger.models import Event

__all__ = ["Entry", "timeline"]

OUTCOMES = {"succeeded", "failed", "discarded", "snoozed", "cancelled", "rescued"}


@dataclass
class Entry:
    type: str
    at: datetime
    version: int
    attempt: int | None = None
    worker: str | None = None
    ended_at: datetime | None = None
    outcome: str | None = None
    duration_ms: float | None = None
    error: str | None = None
    traceback: str | None = None
    who: str | None = None
    why: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def is_attempt(self) -> bool:
        return self.type == "started"


def _who(e: Event) -> str | None:
    by = e.data.get("by") or e.metadata.get("by") or e.metadata.get("worker")
    via = e.metadata.get("via")
    if by and via:
        return f"{by} (via {via})"
    return by or via


def timeline(events: list[Event]) -> list[Entry]:
    entries: list[Entry] = []
    current: Entry | None = None
    for e in events:
        t = e.type.value
        if t == "started":
            current = Entry(t, e.at, e.version, attempt=e.data.get("attempt"), worker=e.data.get("worker"))
            entries.append(current)
        elif t in OUTCOMES and current is not None:
            current.ended_at = e.at
            current.outcome = t
            current.duration_ms = e.metadata.get("duration_ms") or (e.at - current.at).total_seconds() * 1000
            current.error = e.data.get("error") or e.data.get("reason")
            current.traceback = e.metadata.get("traceback")
            if t in ("failed", "snoozed"):
                current.details = {"run again at": e.data.get("run_at")}
            if t == "rescued":
                current.who = "rescue"
            current = None
        else:
            entries.append(
                Entry(t, e.at, e.version, who=_who(e), why=e.data.get("reason"),
                      details={k: v for k, v in e.data.items() if k not in {"by", "reason", "args"}})
            )  # fmt: skip
    return entries
