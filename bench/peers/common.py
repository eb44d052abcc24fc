"""Shared plumbing of the peer programs: argv dispatch, the GO handshake, and the latency probe."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["Peer", "chunks", "latency_probe", "ping", "report", "timed", "wait_for_go"]

DATABASE_URL = os.environ.get("BENCH_DATABASE_URL", "")
_sock: socket.socket | None = None


def report(**values: Any) -> None:
    print(json.dumps(values), flush=True)


async def wait_for_go() -> None:
    print("READY", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


def ping(key: str) -> None:
    """Called first thing in the latency job's body: tell the probe when the body started."""
    global _sock
    if _sock is None:
        _sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    _sock.sendto(f"{key} {time.time()}".encode(), ("127.0.0.1", int(os.environ["BENCH_UDP_PORT"])))


async def latency_probe(n: int, gap_ms: float, enqueue_one: Callable[[str], Awaitable[None]]) -> None:
    """Enqueue n ping jobs gap_ms apart; latency = body start - enqueue commit, per job."""
    port = int(os.environ["BENCH_UDP_PORT"])
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", port))
    sock.setblocking(False)
    committed: dict[str, float] = {}
    started: dict[str, float] = {}
    loop = asyncio.get_running_loop()

    async def receive() -> None:
        while len(started) < n:
            data = await loop.sock_recv(sock, 256)
            key, t = data.decode().split()
            started[key] = float(t)

    receiver = asyncio.create_task(receive())
    for i in range(n):
        key = f"k{i}"
        await enqueue_one(key)
        committed[key] = time.time()
        await asyncio.sleep(gap_ms / 1000)
    with contextlib.suppress(TimeoutError):  # report what arrived; a lost job shows as received < n
        await asyncio.wait_for(receiver, 30)
    lat = sorted((started[k] - committed[k]) * 1000 for k in started if k in committed)
    if not lat:
        report(received=0)
        return
    q = statistics.quantiles(lat, n=100, method="inclusive")
    report(received=len(lat), p50=statistics.median(lat), p95=q[94], p99=q[98], max=lat[-1])


class Peer:
    """Dispatch argv verbs to a system's coroutines."""

    def __init__(self, **verbs: Callable[..., Awaitable[None]]) -> None:
        self.verbs = verbs

    def main(self, worker_loop: Callable[[Any], Any] = asyncio.run) -> None:
        """Run one verb; `worker_loop` runs the worker (uvloop.run where a system's own CLI does that)."""
        verb, *args = sys.argv[1:]
        run = worker_loop if verb == "worker" else asyncio.run
        run(self.verbs[verb.replace("-", "_")](*args))


def chunks(n: int, size: int = 5000) -> list[int]:
    """Batch sizes that add up to exactly n."""
    return [min(size, n - i) for i in range(0, n, size)]


def timed(n: int, started: float) -> None:
    elapsed = time.perf_counter() - started
    report(jobs=n, seconds=elapsed, rate=n / elapsed)
