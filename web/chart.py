"""Throughput charts as shapes for an inline SVG: stacked bars of outcomes per time bucket. Pure; no I/O.

Drawn on the server (templates/chart.html), so the page needs no script, which
its Content-Security-Policy would refuse inline anyway; colours come from
app.css through the bars' classes.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from ledger.models import ThroughputRow

__all__ = ["OUTCOMES", "Bar", "Chart", "charts"]

OUTCOMES = ("succeeded", "failed", "discarded")
"""Bottom to top, as they are stacked."""

WIDTH = 720
HEIGHT = 120
MAX_BARS = 180


@dataclass(frozen=True)
class Bar:
    """One outcome's part of one bucket: where it is drawn and what it says on hover."""

    x: float
    y: float
    width: float
    height: float
    outcome: str
    title: str


@dataclass
class Chart:
    """One chart: a title (a kind, or all kinds), its bars, its scale and its time labels."""

    title: str
    bucket: timedelta
    top: int
    totals: dict[str, int]
    bars: list[Bar] = field(default_factory=list)
    ticks: list[tuple[float, str]] = field(default_factory=list)
    width: int = WIDTH
    height: int = HEIGHT


def _nice(n: int) -> int:
    """The smallest of 1, 2, 5 x 10^k at least n: a scale a person reads at a glance."""
    step = 1
    while True:
        for m in (1, 2, 5):
            if m * step >= n:
                return m * step
        step *= 10


def _bucket(span: timedelta) -> timedelta:
    """Whole minutes per bar, so that a span fits in MAX_BARS bars (a minute each up to three hours)."""
    minutes = max(1, -(-int(span.total_seconds() // 60) // MAX_BARS))
    return timedelta(minutes=minutes)


def _chart(title: str, counts: dict[datetime, dict[str, int]], since: datetime, until: datetime) -> Chart:
    bucket = _bucket(until - since)
    n = max(1, math.ceil((until - since) / bucket))  # the current, unfinished bucket included
    per: list[dict[str, int]] = [dict.fromkeys(OUTCOMES, 0) for _ in range(n)]
    for minute, row in counts.items():
        i = int((minute - since) / bucket)
        if 0 <= i < n:
            for outcome in OUTCOMES:
                per[i][outcome] += row.get(outcome, 0)
    top = _nice(max([sum(b.values()) for b in per] + [1]))
    chart = Chart(title, bucket, top, {o: sum(b[o] for b in per) for o in OUTCOMES})
    step = WIDTH / n
    for i, b in enumerate(per):
        start = since + i * bucket
        base = float(HEIGHT)
        for outcome in OUTCOMES:
            if b[outcome]:
                h = HEIGHT * b[outcome] / top
                base -= h
                label = f"{start:%H:%M} UTC: {b[outcome]} {outcome}"
                chart.bars.append(Bar(round(i * step, 2), round(base, 2), round(max(step - 0.5, 0.5), 2),
                                      round(h, 2), outcome, label))  # fmt: skip
    # Seven times evenly spread from the first bucket to the end, laid out under the bars by the page
    # (text inside the stretched SVG would stretch with it).
    chart.ticks = [(round(k / 6 * WIDTH, 2), f"{since + (until - since) * k / 6:%H:%M}") for k in range(7)]
    return chart


def charts(rows: Iterable[ThroughputRow], since: datetime, until: datetime, *, per_kind: int = 12) -> list[Chart]:
    """The chart of all kinds together, then one per kind (the busiest `per_kind`), over [since, until)."""
    start = since.replace(second=0, microsecond=0)
    total: dict[datetime, dict[str, int]] = defaultdict(lambda: dict.fromkeys(OUTCOMES, 0))
    kinds: dict[str, dict[datetime, dict[str, int]]] = defaultdict(dict)
    volume: dict[str, int] = defaultdict(int)
    for r in rows:
        counts = {"succeeded": r.succeeded, "failed": r.failed, "discarded": r.discarded}
        kinds[r.kind][r.minute] = counts
        volume[r.kind] += sum(counts.values())
        for outcome, n in counts.items():
            total[r.minute][outcome] += n
    busiest = sorted(kinds, key=lambda k: (-volume[k], k))[:per_kind]
    return [_chart("all kinds", total, start, until), *(_chart(k, kinds[k], start, until) for k in busiest)]
