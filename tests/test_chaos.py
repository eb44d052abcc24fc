"""The chaos run (tests/chaos.py) at CI size: kills, a PostgreSQL crash and an idle transaction lose nothing."""

from __future__ import annotations

from pathlib import Path

from .chaos import Chaos


def test_sigkills_a_postgres_crash_and_an_idle_transaction_lose_no_job_and_leave_none_stuck(tmp_path: Path) -> None:
    lines: list[str] = []
    chaos = Chaos(tmp_path / "chaos", jobs=2_000, kill_every=1.5, idle_seconds=3, log=lines.append)
    r = chaos.run()
    report = chaos.report()
    assert r["kills"] >= 2 and r["crashes"] == 1, report
    assert (r["lost"], r["stuck"], r["unexplained"], r["succeeded_without_running"]) == (0, 0, 0, 0), report
    assert r["projection_diffs"] == 0, report
    assert r["idle_during"] > 0 and r["idle_after"] > 0, report
