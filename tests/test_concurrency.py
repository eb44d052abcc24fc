"""Many connections claiming from one queue at once: every job is claimed exactly once."""

from __future__ import annotations

import threading
from collections import Counter
from functools import partial

from ledger.db import connect
from ledger.store import Store

from .threads import new_barrier, run_threads


def test_concurrent_claims_take_every_job_exactly_once(db_url: str, store: Store) -> None:
    total = 600
    store.enqueue_many([("k", {"i": i}, "q", i % 10, 3, None) for i in range(total)])
    claimed: list[int] = []
    lock = threading.Lock()
    start = new_barrier(6)

    def worker(name: str) -> None:
        with connect(db_url) as conn:
            s = Store(conn)
            start.wait()
            while batch := s.claim("q", 7, name):
                with lock:
                    claimed.extend(j.id for j in batch)
                for j in batch:
                    s.succeed(j.id, expected_version=j.version)

    run_threads(*(partial(worker, f"w{i}") for i in range(6)), barrier=start)

    counts = Counter(claimed)
    assert len(counts) == total
    assert set(counts.values()) == {1}
    assert {c.state for c in store.job_counts()} == {"succeeded"}
    assert store.projections_diff() == []


def test_a_claim_skips_a_row_another_transaction_has_locked(db_url: str, store: Store) -> None:
    first, second = store.enqueue_many([("k", {}, "q", 1, 3, None), ("k", {}, "q", 2, 3, None)])
    with connect(db_url, autocommit=False) as holder, connect(db_url) as claimer:
        # Another transaction (an operator's cancel, a slow claim) holds the first job's row.
        holder.execute("SELECT id FROM ledger.jobs WHERE id = %s FOR UPDATE", [first])
        # A claim that waited for that lock would fail here after 2 s instead of hanging.
        claimer.execute("SET lock_timeout = '2s'")
        claimed = Store(claimer).claim("q", 1, "w1")
        assert [j.id for j in claimed] == [second], "the claim took the next job rather than wait"
        holder.rollback()
        [after] = Store(claimer).claim("q", 1, "w2")
    assert after.id == first, "once released, the skipped job is claimed"
