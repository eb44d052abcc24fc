"""The listener: one dedicated connection LISTENing on the worker's queue channels, and on cancels.

A queue's notification only wakes the fetch loop; it never claims. Keeping
LISTEN off the connection that queries means a notification is read the
moment it arrives, not after whatever query happens to be running. A
notification on CANCEL names a job an operator cancelled while it ran; the
producer stops its body if it runs here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import anyio
import psycopg

from ledger.db import connect_async
from ledger.store_async import AsyncStore

__all__ = ["CANCEL", "Listener", "channel"]

log = logging.getLogger(__name__)


CANCEL = "ledger:cancel"
"""Where ledger.job_cancel announces the cancel of a running job (no queue's channel can be this)."""


def channel(queue: str) -> str:
    """The NOTIFY channel of a queue (schema.sql: 'ledger.' || queue)."""
    return f"ledger.{queue}"


class Listener:
    def __init__(
        self, url: str, queues: Sequence[str], wake: Callable[[], None], cancel: Callable[[int], object]
    ) -> None:
        self.url = url
        self.queues = list(queues)
        self.wake = wake
        self.cancel = cancel

    async def run(self) -> None:
        """Listen until cancelled; on a lost connection, reconnect with backoff and keep going."""
        delay = 0.25
        while True:
            try:
                async with await connect_async(self.url) as conn:
                    await AsyncStore(conn).listen([*(channel(q) for q in self.queues), CANCEL])
                    log.info(
                        "listener %s" % ("reconnected" if delay > 0.25 else "listening"),
                        extra={"channels": [channel(q) for q in self.queues]},
                    )
                    delay = 0.25
                    self.wake()  # notifications may have been missed while away
                    async for note in conn.notifies():
                        if note.channel == CANCEL:
                            self.cancel(int(note.payload))
                        else:
                            self.wake()
            except psycopg.OperationalError as exc:
                log.warning(
                    "listener lost the database; reconnecting in %.2fs",
                    delay,
                    extra={"error": str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__},
                )
                self.wake()  # the poll keeps working meanwhile
                await anyio.sleep(delay)
                delay = min(delay * 2, 10.0)
