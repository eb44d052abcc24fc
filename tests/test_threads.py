"""The helper the race tests run their threads with: what a thread raises fails the test."""

from __future__ import annotations

import threading

import pytest

from .threads import new_barrier, run_threads


def test_an_assertion_in_a_thread_is_raised_in_the_test() -> None:
    def wrong() -> None:
        assert 1 == 2, "seen in a thread"

    with pytest.raises(AssertionError, match="seen in a thread"):
        run_threads(lambda: None, wrong)


def test_failures_in_several_threads_are_raised_together() -> None:
    def fail(text: str) -> None:
        raise ValueError(text)

    with pytest.raises(ExceptionGroup) as raised:
        run_threads(lambda: fail("a"), lambda: fail("b"))
    assert sorted(str(e) for e in raised.value.exceptions) == ["a", "b"]


def test_a_thread_that_dies_before_the_barrier_releases_the_others_at_once() -> None:
    start = new_barrier(2, timeout=600)
    waited = threading.Event()

    def dies_early() -> None:
        raise RuntimeError("could not connect")

    def waits() -> None:
        start.wait()
        waited.set()

    # Only the real cause is reported, not the BrokenBarrierError it caused.
    with pytest.raises(RuntimeError, match="could not connect"):
        run_threads(dies_early, waits, barrier=start, timeout=30)
    assert not waited.is_set()
