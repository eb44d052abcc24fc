"""ctx.cancelled behaves as a threading.Event for a sync body, though its Event is made only on wait()."""

from __future__ import annotations

import threading

from ledger.kinds import CancelFlag

from .threads import run_threads


def test_a_body_waiting_on_the_flag_wakes_when_another_thread_sets_it() -> None:
    flag = CancelFlag()
    waiting = threading.Event()
    woke: list[bool] = []

    def body() -> None:
        waiting.set()
        woke.append(flag.wait(timeout=600))

    def operator() -> None:
        assert waiting.wait(timeout=600)
        flag.set()

    run_threads(body, operator)
    assert woke == [True] and flag.is_set()


def test_a_flag_set_before_anyone_waits_is_seen_at_once_and_an_unset_one_times_out() -> None:
    unset = CancelFlag()
    assert not unset.is_set() and unset.wait(timeout=0.01) is False
    flag = CancelFlag()
    flag.set()
    assert flag.is_set() and flag.wait(timeout=0) is True


def test_set_and_wait_racing_never_miss_each_other() -> None:
    # set() writes the flag before it reads the Event; wait() makes the Event before it reads the flag.
    for _ in range(300):
        flag = CancelFlag()
        seen: list[bool] = []
        run_threads(lambda: seen.append(flag.wait(timeout=600)), flag.set)  # noqa: B023
        assert seen == [True]
