"""Hosts of their own on one machine: network namespaces joined to the root one by veth pairs, and a partition.

Each Host is a network namespace with its own address, reached from the
root namespace over a veth pair (10.a.b.1 on the root side, 10.a.b.2
inside). A worker started in it (`Host.command`) reaches PostgreSQL only
through that link: the machine's server listens on 127.0.0.1 and the
embedded one on a unix socket, neither of which a namespace can see, so a
Forwarder in the root namespace listens on each link's root-side address and
pipes every connection to the server (TCP or unix socket).

`Host.cut()` is a real partition: a `blackhole` qdisc on both ends of the
link drops every packet silently — no RST, no ICMP, nothing an application
could take as an answer — exactly what a pulled cable or a dead switch does.
The neighbour entries are made permanent, so that the kernel's own ARP
failing does not turn the silence into quick "host unreachable" errors.
`Host.heal()` removes the qdiscs; the TCP connections that outlived the cut
carry on where they stopped.

Needs root (`ip netns`); `unavailable()` says why not where it cannot work.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import os
import re
import shutil
import socket
import subprocess
import threading
from collections.abc import Awaitable, Callable

from psycopg.conninfo import conninfo_to_dict, make_conninfo

__all__ = ["Forwarder", "Host", "unavailable"]

_PREFIX = "ledger-"  # namespace names: ledger-<pid>-<n>
_counter = itertools.count()


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if check and out.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {out.stderr.strip()}")
    return out


def _tc(namespace: str | None, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    where = ["ip", "netns", "exec", namespace] if namespace else []
    out = subprocess.run([*where, "tc", *args], capture_output=True, text=True, timeout=10)
    if check and out.returncode != 0:
        raise RuntimeError(f"tc {' '.join(args)}: {out.stderr.strip()}")
    return out


def _remove_stale() -> None:
    """Namespaces left by a test process that died before removing them."""
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        match = re.match(rf"{_PREFIX}(\d+)-\d+", line)
        if match and not os.path.exists(f"/proc/{match.group(1)}"):
            _ip("netns", "delete", match.group(0), check=False)


@functools.cache
def unavailable() -> str | None:
    """Why network namespaces cannot be made here (a reason to skip), or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces (ip netns) need root; this run is not root"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"{tool} (iproute2) is not installed"
    try:
        _remove_stale()
        probe = Host()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        return f"cannot make a network namespace with a veth pair here: {exc}"
    try:
        probe.cut()  # the blackhole qdisc is a kernel module that may be missing
        probe.heal()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        return f"cannot cut a veth link here (tc qdisc blackhole): {exc}"
    finally:
        probe.remove()
    return None


def _free_subnet(index: int) -> tuple[str, str]:
    """Two addresses of a /30 in 10.200-249.x.x that no interface of the machine uses."""
    used = _ip("-o", "-4", "addr", "show", check=False).stdout
    for attempt in range(50):
        second = 200 + (os.getpid() + attempt) % 50
        base = f"10.{second}.{index // 64 % 256}.{index % 64 * 4}"
        prefix, last = base.rsplit(".", 1)
        gateway, address = f"{prefix}.{int(last) + 1}", f"{prefix}.{int(last) + 2}"
        if f" {gateway}/" not in used and f" {address}/" not in used:
            return gateway, address
    raise RuntimeError("no free 10.200-249.x.x/30 for a test link")


class Host:
    """A network namespace with its own address, linked to the root namespace by a veth pair."""

    def __init__(self) -> None:
        n = next(_counter)
        self.name = f"{_PREFIX}{os.getpid()}-{n}"
        tag = f"{os.getpid() % 100000}{n}"
        self.outside, self.inside = f"lg{tag}h", f"lg{tag}n"  # at most 15 characters
        self.gateway, self.address = _free_subnet(n)  # root side, namespace side
        self.is_cut = False
        _ip("netns", "add", self.name)
        try:
            _ip("link", "add", self.outside, "type", "veth", "peer", "name", self.inside)
            _ip("link", "set", self.inside, "netns", self.name)
            _ip("addr", "add", f"{self.gateway}/30", "dev", self.outside)
            _ip("link", "set", self.outside, "up")
            _ip("-n", self.name, "addr", "add", f"{self.address}/30", "dev", self.inside)
            _ip("-n", self.name, "link", "set", self.inside, "up")
            _ip("-n", self.name, "link", "set", "lo", "up")
            # Permanent neighbours: a cut stays silent (no ARP failure, no "host unreachable").
            inside_mac = _ip("-n", self.name, "-br", "link", "show", self.inside).stdout.split()[2]
            outside_mac = _ip("-br", "link", "show", self.outside).stdout.split()[2]
            _ip("neigh", "replace", self.address, "lladdr", inside_mac, "dev", self.outside, "nud", "permanent")
            _ip("-n", self.name, "neigh", "replace", self.gateway, "lladdr", outside_mac, "dev", self.inside,
                "nud", "permanent")  # fmt: skip
        except BaseException:
            self.remove()
            raise

    @property
    def command(self) -> list[str]:
        """The prefix that runs a command on this host."""
        return ["ip", "netns", "exec", self.name]

    def cut(self) -> None:
        """Drop every packet both ways, silently: a partition."""
        _tc(None, "qdisc", "replace", "dev", self.outside, "root", "blackhole")
        _tc(self.name, "qdisc", "replace", "dev", self.inside, "root", "blackhole")
        self.is_cut = True

    def heal(self) -> None:
        _tc(None, "qdisc", "del", "dev", self.outside, "root", check=False)
        _tc(self.name, "qdisc", "del", "dev", self.inside, "root", check=False)
        self.is_cut = False

    def remove(self) -> None:
        """Delete the namespace; its end of the veth pair goes with it, and the other end too."""
        _ip("netns", "delete", self.name, check=False)
        _ip("link", "delete", self.outside, check=False)


def _keepalive(sock: socket.socket) -> None:
    """The server's side of a link notices a vanished client in seconds, as ledger/db.py's clients do.

    PostgreSQL would not by default (the kernel's two hours of keepalive):
    these are the settings docs/guarantees.md recommends for the server
    (tcp_keepalives_idle/interval/count, tcp_user_timeout) or a PgBouncer in
    front of it. Without them, a session the cut left inside a transaction
    would hold its row locks until the heal.
    """
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 2)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 10_000)  # milliseconds


class Forwarder:
    """TCP listeners in the root namespace that pipe each connection to the database server.

    An asyncio loop on a thread of the test process: `listen(address)` opens
    one more listener and returns the URL that reaches the server through it.
    """

    def __init__(self, server_url: str) -> None:
        self.server_url = server_url
        params = conninfo_to_dict(server_url)
        host, port = str(params.get("host") or "localhost"), int(params.get("port") or 5432)
        self._open: Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]
        if host.startswith("/"):
            self._open = functools.partial(asyncio.open_unix_connection, f"{host}/.s.PGSQL.{port}")
        else:
            self._open = functools.partial(asyncio.open_connection, host, port)
        self._servers: list[asyncio.Server] = []
        self._writers: set[asyncio.StreamWriter] = set()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="forwarder", daemon=True)
        self._thread.start()

    def listen(self, address: str) -> str:
        """Listen on address (a free port); the server's URL through it."""
        started = asyncio.run_coroutine_threadsafe(asyncio.start_server(self._handle, address, 0), self.loop)
        server = started.result(10)
        self._servers.append(server)
        port = server.sockets[0].getsockname()[1]
        return make_conninfo(self.server_url, host=address, port=str(port))

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _keepalive(writer.get_extra_info("socket"))
        try:
            up_reader, up_writer = await self._open()
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            self._writers.difference_update((writer, up_writer))

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Copy until either side ends, then close this side (which ends the other pipe too)."""
        try:
            while data := await reader.read(1 << 16):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    def close(self) -> None:
        async def shut() -> None:
            for server in self._servers:
                server.close()
            for writer in list(self._writers):
                writer.close()
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shut(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self.loop.close()
