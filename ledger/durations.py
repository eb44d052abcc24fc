"""Durations as a person writes them (`7d`, `12h`, `1w2d`, `90m`), for --older-than, --in and retention."""

from __future__ import annotations

import re
from datetime import timedelta

from .errors import InvalidArguments

__all__ = ["MAX_DURATION", "parse_duration", "parse_rate"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
MAX_DURATION = timedelta(days=36500)
"""A hundred years. Longer durations overflow Python's timedelta (`99999999999999w`)
or, added to or taken from now, PostgreSQL's timestamps (`999999999d`); none means
anything for a job. Retention that never ends is `off`."""


def parse_duration(text: str, field: str = "duration") -> timedelta:
    """`7d`, `12h`, `90m`, `1w2d`, `0s` -> timedelta; InvalidArguments naming `field` for anything else."""
    spec = text.strip().lower()
    parts = _DURATION.findall(spec)
    if not spec or _DURATION.sub("", spec).strip():
        raise InvalidArguments(
            f"duration {text!r} is not understood; write a number and a unit (s, m, h, d, w), e.g. 7d or 12h",
            [field],
        )
    seconds = sum(float(n) * _UNITS[unit] for n, unit in parts)
    if seconds > MAX_DURATION.total_seconds():
        raise InvalidArguments(f"duration {text!r} is longer than {MAX_DURATION.days // 365} years", [field])
    return timedelta(seconds=seconds)


_RATE = re.compile(r"^\s*(\d{1,9})\s*/\s*(\S+)\s*$")


def parse_rate(text: str, field: str = "rate") -> tuple[int, timedelta]:
    """`60/1m` -> (60, one minute): at most 60 starts in any minute; InvalidArguments naming `field` otherwise."""
    match = _RATE.match(text)
    if not match:
        raise InvalidArguments(f"{field} {text[:100]!r}: write starts per period, e.g. 60/1m", [field])
    return int(match.group(1)), parse_duration(match.group(2), field)
