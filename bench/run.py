"""`just bench`: ledger beside Procrastinate and PgQueuer, interleaved, on one PostgreSQL.

    python -m bench.run            # the full run (15-25 minutes on 2 cores)
    python -m bench.run --quick    # about two and a half minutes, for day-to-day use

DATABASE_URL picks the server (else the embedded one). Every scenario runs
each system in turn (A, B, C, A, B, C, ...) so drift on a noisy machine hits
all alike; each system gets a fresh database per run. Results: a table on
stdout, JSON lines in bench/results/, and a chart (PNG) beside them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import psycopg

from bench import ceiling, history
from bench.harness import FLOOR, SYSTEMS, System, as_url, drain, latency
from ledger.db import database_url

RESULTS = Path(__file__).with_name("results")


@dataclass(frozen=True)
class Plan:
    reps: int
    single: int
    batch: int
    drain_jobs: int
    drain_processes: tuple[int, ...]
    latency_jobs: int
    history_events: tuple[int, ...]
    pgbench_seconds: int


QUICK = Plan(reps=2, single=300, batch=10_000, drain_jobs=3_000, drain_processes=(1,), latency_jobs=50,
             history_events=(0, 150_000), pgbench_seconds=3)  # fmt: skip
FULL = Plan(reps=3, single=2_000, batch=100_000, drain_jobs=20_000, drain_processes=(1, 4), latency_jobs=200,
            history_events=(0, 1_000_000, 5_000_000), pgbench_seconds=10)  # fmt: skip


class Recorder:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: list[dict[str, Any]] = []

    def add(self, **row: Any) -> None:
        row["ts"] = datetime.now(UTC).isoformat()
        self.rows.append(row)
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print("  ", json.dumps(row), file=sys.stderr, flush=True)


def interleaved(plan: Plan, rec: Recorder, scenario: str, run: Any, systems: list[System] = SYSTEMS) -> None:
    for rep in range(plan.reps):
        for system in systems:
            result = run(system)
            rec.add(scenario=scenario, system=system.name, rep=rep, **result)


def run_peers(plan: Plan, server: str, rec: Recorder) -> None:
    # The enqueue runs take seconds and swing ±15% with the machine's moment:
    # more repetitions for them, so the median means something.
    enqueue_plan = dataclasses.replace(plan, reps=plan.reps + 2)
    print(f"enqueue: one job per transaction x {plan.single}", file=sys.stderr)
    interleaved(enqueue_plan, rec, "enqueue_single",
                lambda s: s.call(s.fresh(server), "enqueue-single", str(plan.single)))  # fmt: skip
    print(f"enqueue: batches of 1,000, {plan.batch} jobs", file=sys.stderr)
    interleaved(enqueue_plan, rec, "enqueue_batch",
                lambda s: s.call(s.fresh(server), "enqueue-batch", str(plan.batch), "1000"))  # fmt: skip
    for procs in plan.drain_processes:
        print(f"drain: {plan.drain_jobs} no-op jobs, {procs} worker process(es)", file=sys.stderr)
        interleaved(plan, rec, f"drain_{procs}p", lambda s, p=procs: drain(s, server, plan.drain_jobs, p))
    print(f"pickup latency: {plan.latency_jobs} jobs 20 ms apart to an idle worker", file=sys.stderr)
    interleaved(plan, rec, "latency", lambda s: latency(s, server, plan.latency_jobs, 20), [*SYSTEMS, FLOOR])


def run_history(plan: Plan, server: str, rec: Recorder) -> None:
    ledger_sys = next(s for s in SYSTEMS if s.name == "ledger")
    url = ledger_sys.fresh(server)
    loaded = 0
    for target in plan.history_events:
        if target > loaded:
            seconds = history.build_history(url, target - loaded)
            print(f"history: built {target - loaded:,} events in {seconds:.1f}s", file=sys.stderr)
            loaded = target
        for rep in range(plan.reps):
            probe = f"probe-{target}-{rep}"
            rec.add(scenario="history", system="ledger", rep=rep, target_events=target,
                    **history.measure_present(url, probe))  # fmt: skip
    rec.add(scenario="rebuild", system="ledger", rep=0, **history.measure_rebuild(url))


def run_ceiling(plan: Plan, server: str, rec: Recorder) -> None:
    for row in ceiling.pgbench(server, plan.pgbench_seconds, queue_rows=400_000):
        rec.add(scenario="pgbench", system="postgres", rep=0, **row)


# ------------------------------------------------------------------ report


def _stats(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def _fmt(values: list[float], unit: str = "") -> str:
    med, lo, hi = _stats(values)
    if med >= 100:
        return f"{med:,.0f}{unit} [{lo:,.0f}-{hi:,.0f}]"
    return f"{med:.2f}{unit} [{lo:.2f}-{hi:.2f}]"


def report(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    by: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by[(r["scenario"], r["system"])].append(r)
    names = [s.name for s in SYSTEMS]
    lines = [
        f"ledger benchmark — {meta['date']} — {meta['machine']} — PostgreSQL {meta['postgres']}",
        "versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()),
        "settings: " + "; ".join(f"{s.name}: {s.settings}" for s in SYSTEMS),
        "median [min-max] over the repetitions",
        "",
        f"{'scenario':<34}" + "".join(f"{n:>26}" for n in names),
    ]

    def row(label: str, scenario: str, key: str, unit: str = "") -> None:
        cells = [_fmt([r[key] for r in by[(scenario, n)]], unit) if by.get((scenario, n)) else "-" for n in names]
        lines.append(f"{label:<34}" + "".join(f"{c:>26}" for c in cells))

    row("enqueue, 1 per txn (jobs/s)", "enqueue_single", "rate")
    row("enqueue, batches of 1000 (jobs/s)", "enqueue_batch", "rate")
    for scenario in sorted({r["scenario"] for r in rows if r["scenario"].startswith("drain_")}):
        row(f"drain, {scenario[6:-1]} process(es) (jobs/s)", scenario, "rate")
    row("pickup latency p50 (ms)", "latency", "p50")
    row("pickup latency p95 (ms)", "latency", "p95")
    row("pickup latency p99 (ms)", "latency", "p99")
    floor = by.get(("latency", FLOOR.name))
    if floor:
        lines.append(
            "pickup floor, no library (LISTEN + one committed SKIP LOCKED claim), ms: "
            + ", ".join(f"{k} {_fmt([r[k] for r in floor])}" for k in ("p50", "p95", "p99"))
        )
    drains = [r for r in rows if r["scenario"] == "drain_1p"]
    if drains:
        best_peer = max(
            (statistics.median([r["rate"] for r in by[("drain_1p", n)]]), n)
            for n in names[1:]
            if by.get(("drain_1p", n))
        )
        ours = statistics.median([r["rate"] for r in by[("drain_1p", "ledger")]])
        lines.append(f"drain (1 process): ledger / fastest peer ({best_peer[1]}) = {ours / best_peer[0]:.2f}x")
    hist = [r for r in rows if r["scenario"] == "history"]
    if hist:
        lines += [
            "",
            "history does not slow the present (ledger)",
            f"{'events':>12}{'claim ms':>14}{'enqueue/s':>14}{'failed ms':>14}",
        ]
        for target in sorted({r["target_events"] for r in hist}):
            rs = [r for r in hist if r["target_events"] == target]
            lines.append(
                f"{rs[0]['events']:>12,}{statistics.median(r['claim_ms'] for r in rs):>14.3f}"
                f"{statistics.median(r['enqueue_per_s'] for r in rs):>14,.0f}"
                f"{statistics.median(r['failed_ms'] for r in rs):>14.3f}"
            )
    for r in rows:
        if r["scenario"] == "rebuild":
            lines.append(
                f"rebuild: {r['events']:,} events re-folded in {r['seconds']:.1f}s = {r['rate']:,.0f} events/s"
            )
    pg = [r for r in rows if r["scenario"] == "pgbench"]
    if pg:
        lines += ["", "this PostgreSQL's ceiling (pgbench, one statement per transaction)"]
        lines += [f"  {r['script']:<7} {r['clients']} client(s): {r['tps']:,.0f} tx/s" for r in pg]
    return "\n".join(lines)


def chart(rows: list[dict[str, Any]], meta: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [s.name for s in SYSTEMS]
    labels = [s.label for s in SYSTEMS]

    def med(scenario: str, key: str, name: str) -> float:
        vals = [r[key] for r in rows if r["scenario"] == scenario and r["system"] == name]
        return statistics.median(vals) if vals else 0.0

    panels = [("drain_1p", "rate", "drain, 1 worker process (jobs/s)"),
              ("enqueue_batch", "rate", "enqueue, batches of 1000 (jobs/s)"),
              ("latency", "p50", "pickup latency p50 (ms, lower is better)"),
              ("latency", "p99", "pickup latency p99 (ms, lower is better)")]  # fmt: skip
    fig, axes = plt.subplots(1, len(panels), figsize=(18, 4.4))
    colors = ["#2952cc", "#8a8fa3", "#c9a227", "#e0c463"]
    ceiling_claim = max((r["tps"] for r in rows if r["scenario"] == "pgbench" and r["script"] == "claim"), default=0)
    for ax, (scenario, key, title) in zip(axes, panels, strict=True):
        values = [med(scenario, key, n) for n in names]
        bars = ax.bar(labels, values, color=colors)
        ax.bar_label(bars, labels=[f"{v:,.0f}" if v >= 100 else f"{v:.2f}" for v in values], fontsize=9)
        ax.set_title(title, fontsize=10)
        ax.tick_params(axis="x", labelsize=8, labelrotation=15)
        if scenario == "drain_1p" and ceiling_claim:
            ax.axhline(ceiling_claim, color="#b3261e", linestyle="--", linewidth=1,
                       label="pgbench: 1 claim per commit, 8 clients")  # fmt: skip
            ax.legend(fontsize=7, loc="upper right")
        if scenario == "latency" and (floor := med(scenario, key, FLOOR.name)):
            ax.axhline(floor, color="#b3261e", linestyle="--", linewidth=1,
                       label="no library: LISTEN + one committed claim")  # fmt: skip
            ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(f"ledger vs peers — {meta['date']} — {meta['machine']} — PostgreSQL {meta['postgres']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small numbers, about two and a half minutes")
    parser.add_argument("--only", choices=["peers", "history", "ceiling"], action="append")
    parser.add_argument("--from", dest="source", type=Path, help="redraw the table and chart of a saved .jsonl run")
    args = parser.parse_args()
    if args.source:
        saved = [json.loads(line) for line in args.source.read_text().splitlines()]
        meta = next(r for r in saved if r["scenario"] == "meta")
        rows = [r for r in saved if r["scenario"] != "meta"]
        print(report(rows, meta))
        chart(rows, meta, args.source.with_suffix(".png"))
        return
    plan = QUICK if args.quick else FULL
    server = database_url()
    with psycopg.connect(server, autocommit=True) as conn:
        pg_version = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
        if conn.execute("SHOW synchronous_commit").fetchone()[0] != "on":  # type: ignore[index]
            print("warning: synchronous_commit is not on: commits are not durable", file=sys.stderr)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + ("-quick" if args.quick else "")
    RESULTS.mkdir(exist_ok=True)
    rec = Recorder(RESULTS / f"{stamp}.jsonl")
    meta = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}",
        "postgres": pg_version.split()[0],
        "versions": {p: version(p) for p in ("ledger", "procrastinate", "pgqueuer", "asyncpg", "psycopg")},
        "quick": args.quick,
        "server": as_url(server),
    }
    rec.add(scenario="meta", system="-", rep=0, **meta)
    only = set(args.only or ["peers", "history", "ceiling"])
    started = time.perf_counter()
    if "peers" in only:
        run_peers(plan, server, rec)
    if "history" in only:
        run_history(plan, server, rec)
    if "ceiling" in only:
        run_ceiling(plan, server, rec)
    rows = [r for r in rec.rows if r["scenario"] != "meta"]
    text = report(rows, meta)
    print(text)
    (RESULTS / f"{stamp}.txt").write_text(text + "\n")
    chart(rows, meta, RESULTS / f"{stamp}.png")
    print(f"\n{time.perf_counter() - started:.0f}s; results in {rec.path} and {RESULTS / (stamp + '.png')}")


if __name__ == "__main__":
    main()
