"""A fleet split by the network: workers on hosts of their own, one cut off while it runs jobs, then healed.

Each worker runs in a network namespace with its own address and reaches
PostgreSQL over a veth pair through a forwarder in the root namespace
(tests/netns.py). The cut drops every packet silently, as a real partition
does: nothing tells the cut worker its connections are dead but time. So
this is where libpq's defaults would hang it for the kernel's retransmission
timeout (~15 min), and where ledger/db.py's TCP keepalives and
tcp_user_timeout must make it notice in seconds.
"""

from __future__ import annotations

import socket
from collections import Counter
from collections.abc import Iterator

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from psycopg.rows import DictRow

from ledger.db import TCP_DEFAULTS, connect, connection_options
from ledger.store import Store

from .netns import Forwarder, Host, unavailable
from .workers import WorkerProcess, wait_until

FLEET = ["--lease", "3", "--rescue-every", "1", "--poll-interval", "0.2", "--heartbeat-every", "3600"]


def test_every_connection_sets_tcp_timeouts_and_the_url_can_override_them(db_url: str) -> None:
    options = connection_options(db_url)
    assert {k: options[k] for k in TCP_DEFAULTS} == TCP_DEFAULTS
    overridden = connection_options(make_conninfo(db_url, tcp_user_timeout="30000", keepalives_idle="30"))
    assert "tcp_user_timeout" not in overridden and "keepalives_idle" not in overridden  # the URL's own stay
    with connect(db_url) as conn:
        if conn.info.host.startswith("/"):
            return  # a unix socket: no TCP to time out (libpq ignores the TCP options there)
        sock = socket.socket(fileno=conn.pgconn.socket)
        try:
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == int(TCP_DEFAULTS["tcp_user_timeout"])
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == int(TCP_DEFAULTS["keepalives_idle"])
        finally:
            sock.detach()  # the connection's, not ours to close


@pytest.fixture
def fleet(db_url: str) -> Iterator[tuple[Forwarder, list[Host]]]:
    """Three hosts, each linked to the root namespace, where a forwarder leads to the test's database."""
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    forwarder = Forwarder(db_url)
    hosts: list[Host] = []
    try:
        hosts.extend(Host() for _ in range(3))
        yield forwarder, hosts
    finally:
        for host in hosts:
            host.heal()
            host.remove()
        forwarder.close()


def test_a_partitioned_workers_jobs_are_rescued_its_late_outcomes_refused_and_it_carries_on_after_the_heal(
    db_url: str, store: Store, side: psycopg.Connection[DictRow], fleet: tuple[Forwarder, list[Host]],
    workers: list[WorkerProcess],
) -> None:  # fmt: skip
    forwarder, hosts = fleet
    for i, host in enumerate(hosts):
        # Only the worker that will be cut serves `island`: after the heal, its jobs prove it works again.
        queues = "default=4,island=2" if i == 0 else "default=4"
        url = forwarder.listen(host.gateway)
        workers.append(WorkerProcess(url, "--queues", queues, *FLEET, name=f"w{i}", prefix=host.command).started())
    cut_off, cut_host = workers[0], hosts[0]

    ids = store.enqueue_many([("errand", {"seconds": 2}, "default", 5, 5, None)] * 36)
    wait_until(lambda: len(store.jobs_running_for_worker("w0")) >= 2, what="w0 to be running jobs")
    cut_host.cut()
    held = store.jobs_running_for_worker("w0")  # what the cut left in its name: claims and bodies in flight

    # The cut worker notices in seconds (its heartbeat's connection times out), not in fifteen minutes.
    wait_until(lambda: "heartbeat failed" in cut_off.log, timeout=90, what="the cut worker to notice")
    # Meanwhile the others rescue what it held, once its lease ran out, and finish everything.
    wait_until(
        lambda: Counter(j.state.value for i in ids if (j := store.job(i))) == {"succeeded": len(ids)},
        timeout=90, what="every job to succeed without the cut worker",
    )  # fmt: skip
    assert all("rescued" in [e.type for e in store.events_for_job(job)] for job in held)
    assert cut_off.proc.poll() is None, f"the cut worker died:\n{cut_off.log}"

    cut_host.heal()
    # Its bodies ran on through the cut; their outcomes, late, are refused: the jobs were rescued.
    wait_until(lambda: cut_off.not_recorded() & held, timeout=90, what="the cut worker's late outcomes to be refused")
    assert cut_off.not_recorded() <= held
    # And it carries on: it claims and runs new jobs (only it serves `island`).
    fresh = store.enqueue_many([("errand", {"seconds": 0}, "island", 5, 5, None)] * 4)
    wait_until(
        lambda: all((j := store.job(i)) and j.state.value == "succeeded" for i in fresh),
        timeout=90, what="the healed worker to run new jobs",
    )  # fmt: skip

    # Nothing lost, nothing succeeded twice; a body ran twice only where its job was rescued.
    # (Rows of jobapp's on_error hook, 'hook:...', share the side table: an attempt that failed, not a run.)
    bodies = "SELECT job_id, worker FROM executions WHERE worker NOT LIKE 'hook:%%'"
    runs = Counter(r["job_id"] for r in side.execute(bodies).fetchall())
    for job in ids:
        history = [e.type.value for e in store.events_for_job(job)]
        assert history.count("succeeded") == 1, (job, history)
        assert runs[job] >= 1, (job, history)
        assert runs[job] == 1 or "rescued" in history, (job, history, runs[job])
    assert {r["worker"] for r in side.execute(bodies).fetchall() if r["job_id"] in fresh} == {"w0"}
    assert store.projections_diff() == []
    for w in workers:
        assert w.stop() == 0, w.log
