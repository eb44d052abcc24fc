"""Every default of the ledger, in one place.

The Python side reads them from here. schema.sql's functions carry the same
values as their parameters' defaults (so psql callers get them too);
tests/test_structure.py keeps the two equal. The worker's own settings
(concurrency, cycles, poll interval, ...) are defaults of worker/config.py's
WorkerConfig, which reads the lease from here.
"""

from __future__ import annotations

from datetime import timedelta

__all__ = ["LEASE", "MAX_ATTEMPTS", "PRIORITY", "QUEUE", "RESULT_MAX_BYTES", "TIMEOUT"]

QUEUE = "default"
"""The queue of a kind that names none."""
PRIORITY = 5
"""0 runs first, 9 last."""
MAX_ATTEMPTS = 25
"""Attempts before a failing job is discarded: with the retry policy's backoff, about eleven days of retries."""
TIMEOUT = 300.0
"""Seconds an attempt may run before it is cancelled and counted as failed."""
LEASE = timedelta(seconds=30)
"""How long a worker's running jobs stay safe from rescue without a heartbeat; renewed every lease/3."""
RESULT_MAX_BYTES = 64 * 1024
"""The largest result (a handler's return value, as JSON) a `succeeded` event keeps; past it, the attempt is
discarded."""
