"""A real PgBouncer in transaction mode in front of a test database, started and stopped by the tests.

Debian's pgbouncer (1.18 here; CI installs it, as .ci/run says) listens on a
free loopback port and passes every database name through to the test
server, over TCP or the embedded server's unix socket. `auth_type = any`
with a fixed `user=` on the database line: the tests are not about
authentication. PgBouncer refuses to run as root; as root it is started
with `-u` as a user that can reach the server: the owner of the unix
socket's folder (the embedded server runs as its own system user), else
nobody. It reads its configuration before it drops privileges and logs to
stderr, which the test process collects, so nothing it needs lives where
that user could not read.

Two settings make the proxy behave as a busy one would, so that a test run
on one client at a time still meets what production meets: consecutive
transactions of one client land on different server connections
(`server_round_robin`, and `min_pool_size` keeps several open).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from .servers import free_port
from .workers import StderrLog, wait_until

__all__ = ["PgBouncer", "pgbouncer_binary"]


def pgbouncer_binary() -> str | None:
    return shutil.which("pgbouncer") or next((p for p in ("/usr/sbin/pgbouncer",) if os.access(p, os.X_OK)), None)


def _run_as(host: str) -> list[str]:
    """`-u USER` when running as root (PgBouncer refuses root), else nothing."""
    if os.geteuid() != 0:
        return []
    if host.startswith("/"):
        import pwd

        return ["-u", pwd.getpwuid(os.stat(host).st_uid).pw_name]
    return ["-u", "nobody"]


class PgBouncer(StderrLog):
    """`pgbouncer` in transaction mode, proxying to the server of `server_url`."""

    def __init__(self, server_url: str, workdir: Path, *, pool_mode: str = "transaction") -> None:
        binary = pgbouncer_binary()
        if binary is None:
            pytest.skip("pgbouncer is not installed (apt-get install pgbouncer; .ci/run does it in CI)")
        server = conninfo_to_dict(server_url)
        host = str(server.get("host") or "localhost")
        target = f"host={host} port={server.get('port') or 5432} user={server.get('user') or 'postgres'}"
        if server.get("password"):
            target += f" password={server['password']}"
        self.port = free_port()
        self.server_url = server_url
        workdir.mkdir(parents=True, exist_ok=True)
        self.config = workdir / "pgbouncer.ini"
        self.config.write_text(
            f"""[databases]
* = {target}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.port}
unix_socket_dir =
auth_type = any
pool_mode = {pool_mode}
max_client_conn = 500
default_pool_size = 20
min_pool_size = 4
server_round_robin = 1
server_login_retry = 1
"""
        )
        self.config.chmod(0o644)
        self._collect(subprocess.Popen(
            [binary, *_run_as(host), str(self.config)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        ))  # fmt: skip
        try:
            wait_until(self._answers, timeout=20, what="pgbouncer to answer")
        except AssertionError:
            self.stop()
            raise AssertionError(f"pgbouncer did not start:\n{self.log}") from None

    def url(self, url: str) -> str:
        """`url`'s database, reached through this PgBouncer."""
        dbname = conninfo_to_dict(url).get("dbname") or "postgres"
        return make_conninfo("", host="127.0.0.1", port=str(self.port), dbname=dbname, user="postgres")

    def _answers(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"pgbouncer exited ({self.proc.returncode}):\n{self.log}")
        try:
            with psycopg.connect(self.url(self.server_url), autocommit=True, connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.OperationalError:
            return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: PgBouncer's immediate shutdown
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        with contextlib.suppress(RuntimeError):
            self._reader.join(5)
