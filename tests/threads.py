"""Test code run in threads: an assertion or error raised in any of them fails the test.

A bare `threading.Thread` only prints an exception it dies of (pytest turns it
into a warning), so a race test whose threads assert would pass whatever they
found. `run_threads` collects what each thread raised and raises it again in
the test's own thread; `new_barrier` makes a barrier that gives up after a
timeout instead of hanging the suite when one of its parties died before it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

__all__ = ["new_barrier", "run_threads"]

TIMEOUT = 60.0


def new_barrier(parties: int, timeout: float = TIMEOUT) -> threading.Barrier:
    """A barrier that breaks (BrokenBarrierError in every waiter) rather than waits forever."""
    return threading.Barrier(parties, timeout=timeout)


def run_threads(
    *targets: Callable[[], object], timeout: float = TIMEOUT, barrier: threading.Barrier | None = None
) -> None:
    """Run each target in its own thread, wait for all, and raise what any of them raised.

    One failure is raised as it is (its traceback points into the thread's code);
    several are raised together as an ExceptionGroup. A thread still running
    after `timeout` seconds fails the test too. A thread that fails breaks
    `barrier`, so the others stop waiting for it at once.
    """
    errors: list[BaseException] = []
    lock = threading.Lock()

    def guarded(target: Callable[[], object]) -> None:
        try:
            target()
        except BaseException as exc:
            with lock:
                errors.append(exc)
            if barrier is not None:
                barrier.abort()

    threads = [threading.Thread(target=guarded, args=(t,), daemon=True) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    stuck = [t.name for t in threads if t.is_alive()]
    if stuck:
        errors.append(AssertionError(f"threads still running after {timeout}s: {stuck}"))
    # A thread that failed before a barrier breaks it for the others; their
    # BrokenBarrierError is a consequence, not news.
    causes = [e for e in errors if not isinstance(e, threading.BrokenBarrierError)] or errors
    if len(causes) == 1:
        raise causes[0]
    if causes:
        raise BaseExceptionGroup(f"{len(causes)} threads failed", causes)
