"""The chaos run (tests/chaos.py) at CI size: kills, a crash, an idle transaction and a partition lose nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from .chaos import Chaos
from .netns import unavailable


def test_sigkills_a_postgres_crash_and_an_idle_transaction_lose_no_job_and_leave_none_stuck(tmp_path: Path) -> None:
    lines: list[str] = []
    chaos = Chaos(tmp_path / "chaos", jobs=2_000, kill_every=1.5, idle_seconds=3, cuts=0, log=lines.append)
    r = chaos.run()
    report = chaos.report()
    assert r["kills"] >= 2 and r["crashes"] == 1, report
    assert (r["lost"], r["stuck"], r["unexplained"], r["succeeded_without_running"]) == (0, 0, 0, 0), report
    assert r["projection_diffs"] == 0, report
    assert r["idle_during"] > 0 and r["idle_after"] > 0, report


def test_a_fleet_split_by_the_network_loses_no_job_and_succeeds_none_twice(tmp_path: Path) -> None:
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    lines: list[str] = []
    chaos = Chaos(tmp_path / "chaos", jobs=0, cuts=1, log=lines.append)
    r = chaos.run()["partition"]
    report = chaos.report() + "\n" + "\n".join(lines)
    assert chaos.failures() == [], report
    assert (r["lost"], r["stuck"], r["succeeded_twice"], r["unexplained"]) == (0, 0, 0, 0), report
    [cut] = r["cuts"]
    assert cut["noticed"] and cut["rescued_after"] > 0, report
    # Every body that began on the cut host before its job was rescued ends in a refused outcome
    # (how many began is the timing's; tests/test_partition.py holds one body through a cut on purpose).
    assert r["refused"] >= r["ran_through"] and r["carried_on"] == 1, report
