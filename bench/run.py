"""`just bench`: ledger beside Procrastinate, PgQueuer, oban-py and awa, interleaved, on one PostgreSQL.

    python -m bench.run            # the full run (35-60 minutes on 2 cores)
    python -m bench.run --quick    # a few minutes, for day-to-day use
    python -m bench.run --only peers --systems ledger_tuned,awa_tuned   # some rows only

DATABASE_URL picks the server (else the embedded one). Every system has two
rows, its documented defaults and its best documented tuning (bench/README.md).
Every scenario runs each row in turn (A, B, C, A, B, C, ...) so drift on a
noisy machine hits all alike; each run gets a fresh database. Each drain also
reports what it cost the server per job (bench/cost.py): PostgreSQL's CPU
time, WAL bytes and commits. oban-py runs under its own Python >= 3.12
(bench/envs.py makes that environment; without one its rows are skipped, with
the reason in the table). Results: a table on stdout, JSON lines in
bench/results/, and a chart (PNG) beside them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import psycopg

from bench import ceiling, envs, history
from bench.harness import FLOOR, SYSTEMS, System, as_url, drain, latency, system
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
    backlog_jobs: tuple[int, ...]
    pgbench_seconds: int


QUICK = Plan(reps=2, single=300, batch=10_000, drain_jobs=3_000, drain_processes=(1,), latency_jobs=50,
             history_events=(0, 150_000), backlog_jobs=(0, 200_000), pgbench_seconds=3)  # fmt: skip
FULL = Plan(reps=3, single=2_000, batch=100_000, drain_jobs=20_000, drain_processes=(1, 4), latency_jobs=200,
            history_events=(0, 1_000_000, 5_000_000), backlog_jobs=(0, 5_000_000), pgbench_seconds=10)  # fmt: skip


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


def interleaved(plan: Plan, rec: Recorder, scenario: str, run: Any, systems: list[System]) -> None:
    for rep in range(plan.reps):
        for peer in systems:
            result = run(peer)
            rec.add(scenario=scenario, system=peer.name, rep=rep, **result)


def run_peers(plan: Plan, server: str, rec: Recorder, systems: list[System]) -> None:
    # The enqueue runs take seconds and swing ±15% with the machine's moment:
    # more repetitions for them, so the median means something. A tuned row whose
    # client is its default row's (enqueue=False) is not enqueued twice.
    enqueue_plan = dataclasses.replace(plan, reps=plan.reps + 2)
    enqueuers = [s for s in systems if s.enqueue]
    print(f"enqueue: one job per transaction x {plan.single}", file=sys.stderr)
    interleaved(enqueue_plan, rec, "enqueue_single",
                lambda s: s.call(s.fresh(server), "enqueue-single", str(plan.single)), enqueuers)  # fmt: skip
    print(f"enqueue: batches of 1,000, {plan.batch} jobs", file=sys.stderr)
    interleaved(enqueue_plan, rec, "enqueue_batch",
                lambda s: s.call(s.fresh(server), "enqueue-batch", str(plan.batch), "1000"), enqueuers)  # fmt: skip
    for procs in plan.drain_processes:
        print(f"drain: {plan.drain_jobs} no-op jobs, {procs} worker process(es)", file=sys.stderr)
        interleaved(plan, rec, f"drain_{procs}p", lambda s, p=procs: drain(s, server, plan.drain_jobs, p), systems)
    print(f"pickup latency: {plan.latency_jobs} jobs 20 ms apart to an idle worker", file=sys.stderr)
    interleaved(plan, rec, "latency", lambda s: latency(s, server, plan.latency_jobs, 20), [*systems, FLOOR])


def _grown(server: str, sizes: tuple[int, ...], build: Callable[[str, int], float], unit: str,
           measure: Callable[[str, int], None]) -> str:  # fmt: skip
    """A fresh ledger grown to each size in turn (build adds that many `unit`), measured at each; its URL."""
    url = system("ledger").fresh(server)
    loaded = 0
    for target in sizes:
        if target > loaded:
            seconds = build(url, target - loaded)
            print(f"added {target - loaded:,} {unit} in {seconds:.1f}s", file=sys.stderr)
            loaded = target
        measure(url, target)
    return url


def run_history(plan: Plan, server: str, rec: Recorder) -> None:
    def measure(url: str, target: int) -> None:
        for rep in range(plan.reps):
            rec.add(scenario="history", system="ledger", rep=rep, target_events=target,
                    **history.measure_present(url, f"probe-{target}-{rep}"))  # fmt: skip

    url = _grown(server, plan.history_events, history.build_history, "events of history", measure)
    rec.add(scenario="rebuild", system="ledger", rep=0, **history.measure_rebuild(url))


def run_backlog(plan: Plan, server: str, rec: Recorder) -> None:
    """Millions of jobs waiting in one queue: its claims, and the enqueue and dead-letter list, should
    not notice them (a generic plan costed for them once JIT-compiled every claim: docs/design.md)."""

    def measure(url: str, target: int) -> None:
        for rep in range(plan.reps):
            # The claims come from the backlog's own queue, as a worker draining it would: the
            # planner's estimate for a queue is the backlog over the queues it knows.
            rec.add(scenario="backlog", system="ledger", rep=rep, backlog=target,
                    **history.measure_present(url, "backlog"), **history.measure_stats(url))  # fmt: skip

    _grown(server, plan.backlog_jobs, history.build_backlog, "jobs of backlog", measure)


def run_ceiling(plan: Plan, server: str, rec: Recorder) -> None:
    for row in ceiling.pgbench(server, plan.pgbench_seconds, queue_rows=400_000):
        rec.add(scenario="pgbench", system="postgres", rep=0, **row)


# ------------------------------------------------------------------ report

COST_KEYS = ("pg_cpu_s", "worker_cpu_s", "wal_bytes", "xact_commit")


def _stats(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def _fmt(values: list[float], unit: str = "") -> str:
    med, lo, hi = _stats(values)
    if med >= 100:
        return f"{med:,.0f}{unit} [{lo:,.0f}-{hi:,.0f}]"
    return f"{med:.2f}{unit} [{lo:.2f}-{hi:.2f}]"


def _known() -> dict[str, System]:
    return {s.name: s for s in SYSTEMS}


def _names(rows: list[dict[str, Any]]) -> list[str]:
    """The rows' systems: this bench's in their order, then any others a saved run has (older names)."""
    seen = list(
        dict.fromkeys(r["system"] for r in rows if r["scenario"] not in ("history", "backlog", "rebuild", "pgbench"))
    )
    seen = [n for n in seen if n != FLOOR.name]
    return [s.name for s in SYSTEMS if s.name in seen] + [n for n in seen if n not in _known()]


def _label(name: str) -> str:
    return _known()[name].label if name in _known() else name


def per_job(row: dict[str, Any], key: str) -> float | None:
    """A drain's cost per job: CPU in microseconds, WAL in bytes, commits as a count."""
    value = row.get(key)
    if value is None:
        return None
    scale = 1e6 if key.endswith("_cpu_s") else 1.0
    return float(value) * scale / float(row["jobs"])


def _cost(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [v for r in rows if (v := per_job(r, key)) is not None]
    return statistics.median(values) if values else None


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _enqueue_source(name: str, by: dict[tuple[str, str], list[dict[str, Any]]]) -> tuple[str, str]:
    """Whose enqueue rows stand for this row: its own, or its family's default row's (same client)."""
    peer = _known().get(name)
    if peer is None or peer.enqueue or by.get(("enqueue_single", name)):
        return name, ""
    return f"{peer.family}_default", " (=)"


def _present(rows: list[dict[str, Any]], scenario: str, title: str, size: str, shown: str, label: str,
             stats: bool = False) -> list[str]:  # fmt: skip
    """A "does this slow the present" table: claim, enqueue and dead-letter list medians per `size`,
    each line headed by its first row's `shown`."""
    found = [r for r in rows if r["scenario"] == scenario]
    if not found:
        return []
    columns = ["claim ms", "enqueue/s", "failed ms"] + (["stats ms"] if stats else [])
    lines = ["", title, f"{label:>12}" + "".join(f"{c:>14}" for c in columns)]
    for target in sorted({r[size] for r in found}):
        rs = [r for r in found if r[size] == target]
        cells = [f"{statistics.median(r['claim_ms'] for r in rs):>14.3f}",
                 f"{statistics.median(r['enqueue_per_s'] for r in rs):>14,.0f}",
                 f"{statistics.median(r['failed_ms'] for r in rs):>14.3f}"]  # fmt: skip
        if stats:
            cells.append(f"{statistics.median(r['stats_ms'] for r in rs):>14.1f}")
        lines.append(f"{rs[0][shown]:>12,}" + "".join(cells))
    if stats:
        lines.append("stats: what `ledger stats` reads (counts, waits, unserved kinds); it counts the backlog")
    return lines


def report(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    by: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by[(r["scenario"], r["system"])].append(r)
    names = _names(rows)
    # What the run recorded, else (a run from before it recorded them) what the rows are now.
    settings = meta.get("settings") or {n: s.settings for n, s in _known().items() if n in names}
    width = max([len(n) for n in names] + [24]) + 2
    lines = [
        f"ledger benchmark — {meta['date']} — {meta['machine']} — PostgreSQL {meta['postgres']}",
        "versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()),
        "settings (default: as its documentation starts a worker; tuned: its best documented tuning):",
        *[f"  {n:<{width}}{settings[n]}" for n in names if n in settings],
        *[f"  skipped: {skip}" for skip in meta.get("skipped", [])],
        "median [min-max] over the repetitions",
    ]

    def cell(scenario: str, name: str, key: str) -> str:
        rs = by.get((scenario, name))
        return _fmt([r[key] for r in rs]) if rs else "-"

    if names:  # no peer rows (--only history, backlog or ceiling): no tables of them
        lines += ["", f"{'enqueue (jobs/s)':<{width}}{'1 per transaction':>28}{'batches of 1000':>28}"]
    for n in names:
        source, mark = _enqueue_source(n, by)
        lines.append(f"{n:<{width}}" + "".join(f"{cell(s, source, 'rate') + mark:>28}"
                                               for s in ("enqueue_single", "enqueue_batch")))  # fmt: skip
    if any(_enqueue_source(n, by)[1] for n in names):
        lines.append("(=): the same client as the family's default row; its figures")

    drains = sorted({r["scenario"] for r in rows if r["scenario"].startswith("drain_")}, key=lambda d: int(d[6:-1]))
    for scenario in drains:
        procs = scenario[6:-1]
        lines += [
            "",
            f"drain, {procs} worker process(es): rate, and what each job cost (medians)",
            f"{'':<{width}}{'jobs/s':>26}{'PG CPU us':>11}{'worker us':>11}{'WAL B':>8}{'commits':>9}{'CPU-bound':>11}",
        ]
        for n in names:
            rs = by.get((scenario, n), [])
            costs = {k: _cost(rs, k) for k in COST_KEYS}
            cpu = (costs["pg_cpu_s"] or 0.0) + (costs["worker_cpu_s"] or 0.0)
            cores = rs[0].get("cores") if rs else None
            bound = f"{cores * 1e6 / cpu:,.0f}" if cores and cpu and costs["pg_cpu_s"] is not None else "-"
            shown = [_num(costs["pg_cpu_s"], ",.0f"), _num(costs["worker_cpu_s"], ",.0f"),
                     _num(costs["wal_bytes"], ",.0f"), _num(costs["xact_commit"], ".3f")]  # fmt: skip
            cells = "".join(f"{v:>{w}}" for v, w in zip(shown, (11, 11, 8, 9), strict=True))
            lines.append(f"{n:<{width}}{cell(scenario, n, 'rate'):>26}{cells}{bound:>11}")
        if any(_cost(by.get((scenario, n), []), "pg_cpu_s") is not None for n in names):
            lines.append(
                "PG CPU: PostgreSQL's processes for the row's database and the shared ones; worker: the row's"
                " processes; WAL: cluster-wide; commits: the database's. CPU-bound: the rate at which this"
                " machine's cores would all be busy at that CPU per job (PG + worker)."
            )

    if names:
        lines += ["", f"{'pickup latency (ms)':<{width}}{'p50':>24}{'p95':>24}{'p99':>24}"]
    for n in names:
        lines.append(f"{n:<{width}}" + "".join(f"{cell('latency', n, k):>24}" for k in ("p50", "p95", "p99")))
    floor = by.get(("latency", FLOOR.name))
    if floor:
        lines.append(
            "pickup floor, no library (LISTEN + one committed SKIP LOCKED claim), ms: "
            + ", ".join(f"{k} {_fmt([r[k] for r in floor])}" for k in ("p50", "p95", "p99"))
        )

    for scenario in drains[:1]:
        for kind in ("default", "tuned", ""):
            plain = [n for n in names if not n.endswith(("_default", "_tuned"))]  # a saved run's older names
            group = [n for n in names if n.endswith(f"_{kind}")] if kind else plain
            ours = [n for n in group if n.startswith("ledger") and by.get((scenario, n))]
            peers = [n for n in group if not n.startswith("ledger") and by.get((scenario, n))]
            if not ours or not peers:
                continue
            rate = {n: statistics.median([r["rate"] for r in by[(scenario, n)]]) for n in ours + peers}
            best = max(peers, key=rate.__getitem__)
            ratio = rate[ours[0]] / rate[best]
            lines.append(f"drain ({scenario[6:-1]} process), {kind or 'all'} rows: "
                         f"{ours[0]} / fastest peer ({best}) = {ratio:.2f}x")  # fmt: skip

    lines += _present(rows, "history", "history does not slow the present (ledger)", "target_events", "events",
                      "events")  # fmt: skip
    for r in rows:
        if r["scenario"] == "rebuild":
            lines.append(
                f"rebuild: {r['events']:,} events re-folded in {r['seconds']:.1f}s = {r['rate']:,.0f} events/s"
            )
    lines += _present(rows, "backlog", "a backlog does not slow the present (ledger; jobs waiting in the queue "
                      "the claims take from)", "backlog", "backlog", "waiting", stats=True)  # fmt: skip
    pg = [r for r in rows if r["scenario"] == "pgbench"]
    if pg:
        lines += ["", "this PostgreSQL's ceiling (pgbench, one statement per transaction)"]
        lines += [f"  {r['script']:<7} {r['clients']} client(s): {r['tps']:,.0f} tx/s" for r in pg]
    return "\n".join(lines)


_FAMILY_COLORS = {"ledger": "#2952cc", "procrastinate": "#8a8fa3", "pgqueuer": "#c9a227", "oban": "#2e8b57",
                  "awa": "#8e44ad"}  # fmt: skip


def _color(name: str) -> tuple[str, float]:
    family = _known()[name].family if name in _known() else name.split("_")[0]
    return _FAMILY_COLORS.get(family, "#555555"), (0.5 if name.endswith("_default") else 1.0)


def chart(rows: list[dict[str, Any]], meta: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by[(r["scenario"], r["system"])].append(r)
    names = _names(rows)
    labels = [_label(n) for n in names]

    def med(scenario: str, key: str, name: str) -> float:
        if scenario.startswith("enqueue"):
            name = _enqueue_source(name, by)[0]
        vals = [v for r in by.get((scenario, name), []) if (v := per_job(r, key) if key in COST_KEYS else r[key])
                is not None]  # fmt: skip
        return statistics.median(vals) if vals else 0.0

    panels = [("drain_1p", "rate", "drain, 1 worker process (jobs/s)"),
              ("enqueue_batch", "rate", "enqueue, batches of 1000 (jobs/s)"),
              ("latency", "p50", "pickup latency p50 (ms, lower is better)"),
              ("latency", "p99", "pickup latency p99 (ms, lower is better)"),
              ("drain_1p", "cpu", "CPU per job in the drain (us): PostgreSQL + worker"),
              ("drain_1p", "wal_bytes", "WAL per job in the drain (bytes, cluster-wide)"),
              ("drain_1p", "xact_commit", "commits per job in the drain")]  # fmt: skip
    if not any(r.get("pg_cpu_s") is not None for r in rows):
        panels = panels[:4]  # a run from before the drains measured their cost
    height = 1.2 + 0.32 * len(names)
    fig, grid = plt.subplots((len(panels) + 3) // 4, 4, figsize=(22, height * ((len(panels) + 3) // 4)), squeeze=False)
    axes = list(grid.flat)
    ceiling_claim = max((r["tps"] for r in rows if r["scenario"] == "pgbench" and r["script"] == "claim"), default=0)
    colors = [_color(n) for n in names]
    y = list(range(len(names)))
    for ax, (scenario, key, title) in zip(axes, panels, strict=False):
        if key == "cpu":
            pg = [med(scenario, "pg_cpu_s", n) for n in names]
            wk = [med(scenario, "worker_cpu_s", n) for n in names]
            for bar, (_, alpha) in zip(ax.barh(y, pg, color=[c for c, _ in colors], label="PostgreSQL"), colors,
                                       strict=True):  # fmt: skip
                bar.set_alpha(alpha)
            bars = ax.barh(y, wk, left=pg, color="#dddddd", edgecolor="#999999", label="worker")
            values = [a + b for a, b in zip(pg, wk, strict=True)]
            ax.legend(fontsize=7, loc="lower right")
        else:
            values = [med(scenario, key, n) for n in names]
            bars = ax.barh(y, values, color=[c for c, _ in colors])
            for bar, (_, alpha) in zip(bars, colors, strict=True):
                bar.set_alpha(alpha)
        ax.bar_label(bars, labels=[f"{v:,.0f}" if v >= 100 else f"{v:.2f}" if v else "-" for v in values],
                     fontsize=8, padding=2)  # fmt: skip
        ax.set_yticks(y, labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=10)
        ax.margins(x=0.18)
        if scenario == "drain_1p" and key == "rate" and ceiling_claim:
            ax.axvline(ceiling_claim, color="#b3261e", linestyle="--", linewidth=1,
                       label="pgbench: 1 claim per commit, 8 clients")  # fmt: skip
            ax.legend(fontsize=7, loc="lower right")
        if scenario == "latency" and (floor := med(scenario, key, FLOOR.name)):
            ax.axvline(floor, color="#b3261e", linestyle="--", linewidth=1,
                       label="no library: LISTEN + one committed claim")  # fmt: skip
            ax.legend(fontsize=7, loc="lower right")
    for ax in axes[len(panels) :]:
        ax.axis("off")
    if len(axes) > len(panels):
        axes[-1].text(0, 0.5, "lighter bars: defaults as documented\nsolid bars: best documented tuning\n"
                      "one worker process; durable commits", fontsize=9, va="center")  # fmt: skip
    fig.suptitle(f"ledger vs peers — {meta['date']} — {meta['machine']} — PostgreSQL {meta['postgres']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _select(wanted: str | None) -> tuple[list[System], list[str]]:
    """The rows to run and, for each left out because it cannot run here, why."""
    chosen = [system(n) for n in wanted.split(",")] if wanted else SYSTEMS
    systems: list[System] = []
    skipped: list[str] = []
    oban: tuple[str | None, str] | None = None
    for peer in chosen:
        if peer.runtime == "oban":
            oban = oban or envs.oban_python()
            if oban[0] is None:
                skipped.append(f"{peer.name}: {oban[1]}")
                continue
        systems.append(peer)
    for line in skipped:
        print(f"skipping {line}", file=sys.stderr)
    return systems, skipped


def _versions(systems: list[System]) -> dict[str, str]:
    found = {p: version(p) for p in ("jobledger", "procrastinate", "pgqueuer", "awa-pg", "asyncpg", "psycopg")}
    oban = next((s for s in systems if s.runtime == "oban"), None)
    if oban:
        out = subprocess.run([oban.python(), "-c", "import sys; from importlib.metadata import version as v;"
                              "print(v('oban'), sys.version.split()[0])"], capture_output=True, text=True)  # fmt: skip
        if out.returncode == 0:
            oban_version, python = out.stdout.split()
            found["oban"] = f"{oban_version} (Python {python})"
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small numbers, a few minutes")
    parser.add_argument("--only", choices=["peers", "history", "backlog", "ceiling"], action="append")
    parser.add_argument("--systems", help="comma-separated rows of the peers scenarios (default: all)")
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
    only = set(args.only or ["peers", "history", "backlog", "ceiling"])
    systems, skipped = _select(args.systems) if "peers" in only else ([], [])
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + ("-quick" if args.quick else "")
    RESULTS.mkdir(exist_ok=True)
    rec = Recorder(RESULTS / f"{stamp}.jsonl")
    meta = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}",
        "postgres": pg_version.split()[0],
        "versions": _versions(systems),
        "quick": args.quick,
        "server": as_url(server),
        "settings": {s.name: s.settings for s in systems},
        "skipped": skipped,
    }
    rec.add(scenario="meta", system="-", rep=0, **meta)
    started = time.perf_counter()
    if "peers" in only:
        run_peers(plan, server, rec, systems)
    if "history" in only:
        run_history(plan, server, rec)
    if "backlog" in only:
        run_backlog(plan, server, rec)
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
