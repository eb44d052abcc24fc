"""Cron schedules: the slots of a cron expression read as wall-clock time in a time zone. Pure; no I/O.

The expression is parsed and matched by cronsim (the parser Healthchecks
runs; typed, no dependencies), always on *naive* wall-clock times, so the
library's own DST handling (Debian cron's, which runs a job of a skipped
hour after the jump) never applies. This module says what a wall-clock slot
is as an instant, once:

- a slot that does not exist in the zone (the hour skipped when clocks go
  forward) is skipped;
- a slot that exists twice (the hour repeated when clocks go back) is the
  first of the two instants (PEP 495's fold=0), so it runs once.

Mapping each wall-clock time to its fold=0 instant keeps the order of the
times, which is what lets the searches below start from the wall-clock time
of an instant instead of scanning around it.

`plan` is what a worker's scheduler does with a schedule whose slot has
come: which slot to enqueue, how many were missed while no worker ran, and
the next one. The time comes from the caller (the database's clock), so
tests fix it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from .errors import InvalidArguments
from .models import ScheduleRow

__all__ = [
    "MISSED_CAP",
    "Missed",
    "Plan",
    "check",
    "last_slot",
    "next_run",
    "next_slot",
    "plan",
    "slots",
    "zone",
]

Missed = Literal["skip", "once"]
"""What becomes of slots that passed while no worker ran: `skip` them (a slot still within its
grace runs), or run `once` for all of them."""

MISSED_CAP = 10_000
"""Missed slots are counted up to this many (a per-second schedule down for a day would be 86,400)."""

_SECOND = timedelta(seconds=1)


def zone(name: str) -> ZoneInfo:
    """The IANA time zone `name`, or InvalidArguments naming the field."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise InvalidArguments(
            f"timezone {name!r}: not a known IANA time zone such as Europe/Paris", ["timezone"]
        ) from None


def check(cron: str, timezone: str) -> ZoneInfo:
    """Refuse a cron expression cronsim cannot read, or that never matches, and an unknown zone."""
    tz = zone(timezone)
    if not isinstance(cron, str) or not cron.strip() or "\x00" in cron or len(cron) > 200:
        raise InvalidArguments("cron: give an expression of 5 fields (or 6, seconds first), e.g. '0 9 * * MON-FRI'")
    try:
        first = next(CronSim(cron, datetime(2000, 1, 1)), None)
    except CronSimError as exc:
        raise InvalidArguments(f"cron {cron!r}: {exc} (5 fields, or 6 with seconds first)", ["cron"]) from None
    if first is None:
        raise InvalidArguments(f"cron {cron!r}: matches no time at all", ["cron"])
    return tz


def _instant(wall: datetime, tz: ZoneInfo) -> datetime | None:
    """The UTC instant of wall-clock time `wall` in `tz`; None where the zone skips it."""
    aware = wall.replace(tzinfo=tz, fold=0)
    utc = aware.astimezone(UTC)
    if utc.astimezone(tz).replace(tzinfo=None) != wall:
        return None  # clocks jumped over it: the slot does not exist that day
    return utc


def slots(cron: str, tz: ZoneInfo, after: datetime) -> Iterator[datetime]:
    """The slots strictly after instant `after`, in order, as UTC instants.

    A wall-clock time before `after`'s own (read with fold=0) maps to an instant no later than
    `after`, so the search can start at `after`'s wall-clock time; the filter drops the slots of a
    repeated hour that `after`, in its second pass, has already seen.
    """
    after = after.astimezone(UTC)  # an instant in the fold never compares equal across zones (PEP 495)
    wall = after.astimezone(tz).replace(tzinfo=None, microsecond=0, fold=0)
    for candidate in CronSim(cron, wall):
        instant = _instant(candidate, tz)
        if instant is not None and instant > after:
            yield instant


def next_slot(cron: str, tz: ZoneInfo, after: datetime) -> datetime | None:
    """The first slot strictly after `after`; None when none comes within 50 years (cronsim's horizon)."""
    return next(slots(cron, tz, after), None)


def last_slot(cron: str, tz: ZoneInfo, at: datetime) -> datetime | None:
    """The latest slot at or before instant `at`; None when none within 50 years.

    In the second pass of a repeated hour, the first pass's slots of that hour (later wall-clock
    times, earlier instants) are behind `at` already: the search starts that much later.
    """
    at = at.astimezone(UTC)
    local = at.astimezone(tz)
    ahead = (local.replace(fold=0).utcoffset() or timedelta(0)) - (local.utcoffset() or timedelta(0))
    start = local.replace(tzinfo=None, microsecond=0, fold=0) + ahead + _SECOND
    for candidate in CronSim(cron, start, reverse=True):
        instant = _instant(candidate, tz)
        if instant is not None and instant <= at:
            return instant
    return None


@dataclass(frozen=True)
class Plan:
    """What to do with a schedule at `now`.

    fire: the slot to enqueue a job for, or None; missed: how many slots since the schedule's
    next_run_at pass without a job of their own (capped at MISSED_CAP), the first and the last of
    them; following: the first slot after now, the schedule's next_run_at once this plan is done.
    """

    fire: datetime | None
    missed: int
    first_missed: datetime | None
    last_missed: datetime | None
    following: datetime | None


def plan(cron: str, tz: ZoneInfo, next_run_at: datetime, now: datetime, missed: Missed, grace: timedelta) -> Plan:
    """The slots due at `now` of a schedule last planned for `next_run_at`.

    Due: the slots from next_run_at (included) to now. The latest of them is on time when it is
    at most `grace` old. `skip` enqueues it only if on time; `once` enqueues it however late.
    Every other due slot is missed (recorded, no job).
    """
    now, next_run_at = now.astimezone(UTC), next_run_at.astimezone(UTC)
    following = next_slot(cron, tz, now)
    latest = last_slot(cron, tz, now)
    if latest is None or latest < next_run_at:
        return Plan(None, 0, None, None, following)
    fire = latest if missed == "once" or now - latest <= grace else None
    first = next_slot(cron, tz, next_run_at - timedelta(microseconds=1))
    passed = 0
    for slot in slots(cron, tz, next_run_at - timedelta(microseconds=1)):
        if slot > latest or passed >= MISSED_CAP:
            break
        passed += slot != fire
    if passed == 0:
        return Plan(fire, 0, None, None, following)
    last = latest if fire is None else last_slot(cron, tz, latest - timedelta(microseconds=1))
    return Plan(fire, passed, first, last, following)


def next_run(row: ScheduleRow, now: datetime) -> tuple[datetime | None, str]:
    """When `row` runs next and how to say it: `paused`, `due since ...` (no worker has taken the
    slot yet), or the next slot. Computed from its expression when the row holds
    no slot yet (just declared or resumed), so the answer does not wait for a worker."""
    if row.paused:
        return None, "paused"
    if row.next_run_at > now:
        return row.next_run_at, "next"
    try:
        tz = zone(row.timezone)
        due = last_slot(row.cron, tz, now)
        if due is not None and due >= row.next_run_at:
            return due, "due since"
        return next_slot(row.cron, tz, now), "next"
    except (InvalidArguments, CronSimError, ValueError):  # an expression this version cannot read: the row's word
        return row.next_run_at, "due since"
