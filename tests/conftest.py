"""Fixtures: a real PostgreSQL (DATABASE_URL, else the embedded one), a fresh database per test.

The schema is applied once to a template database per test process; each test
gets its own database cloned from it (CREATE DATABASE ... TEMPLATE), so tests
never see each other's jobs and need no cleanup of the append-only ledger.

`just test` runs the suite in several processes (pytest-xdist). Every name a
test creates on the shared server carries its process id (`unique_name`), and
the embedded server, when DATABASE_URL is unset, is started once by the
controlling process before the workers start, so that no two processes start
it at the same moment.
"""

from __future__ import annotations

import itertools
import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from psycopg.rows import DictRow

from ledger.db import connect, database_url
from ledger.migrate import migrate
from ledger.settings import Settings
from ledger.store import Store

from .jobapp import SIDE_TABLE
from .workers import WorkerProcess

_counter = itertools.count()


def unique_name(prefix: str) -> str:
    """A database name no other test process uses: parallel workers, or another checkout's run on the same server."""
    return f"{prefix}_{os.getpid()}_{next(_counter)}"


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    # xdist's controller starts its workers in its own (trylast) pytest_sessionstart.
    if not hasattr(session.config, "workerinput") and session.config.getoption("numprocesses", None):
        database_url(Settings())


def _admin(server_url: str) -> psycopg.Connection[DictRow]:
    return connect(server_url)


@pytest.fixture(scope="session")
def server_url() -> str:
    """The server tests run on: DATABASE_URL where set, else the project's embedded server."""
    return database_url(Settings())


@pytest.fixture(scope="session")
def template_db(server_url: str) -> Iterator[str]:
    name = unique_name("ledger_tpl")
    with _admin(server_url) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.execute(f'CREATE DATABASE "{name}"')
    with connect(make_conninfo(server_url, dbname=name)) as conn:
        migrate(conn)
    yield name
    with _admin(server_url) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Clones:
    """Databases cloned from the template ahead of the tests, and dropped in batches behind them.

    Done in each test's setup and teardown, a clone (~0.15 s of the server)
    and a drop (~0.3 s: DROP DATABASE waits for a checkpoint) were most of the
    time of a short test. Here a thread clones ahead while tests run, and used
    databases are dropped BATCH at a time, concurrently, so that their drops
    share checkpoints instead of each waiting for its own.
    """

    AHEAD = 2
    BATCH = 8

    def __init__(self, server_url: str, template: str) -> None:
        self.server_url, self.template = server_url, template
        self.cloner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="test-db-clone")
        self.dropper = ThreadPoolExecutor(max_workers=self.BATCH, thread_name_prefix="test-db-drop")
        self.ready: deque[Future[str]] = deque(self.cloner.submit(self._create) for _ in range(self.AHEAD))
        self.used: list[str] = []
        self.dropped: list[Future[None]] = []

    def _create(self) -> str:
        name = unique_name("ledger_t")
        with _admin(self.server_url) as admin:
            admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
        return name

    def _drop(self, name: str) -> None:
        with _admin(self.server_url) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def take(self) -> str:
        name = self.ready.popleft().result()
        self.ready.append(self.cloner.submit(self._create))
        return name

    def drop(self, name: str) -> None:
        self.used.append(name)
        if len(self.used) >= self.BATCH:
            self._drop_used()

    def _drop_used(self) -> None:
        self.dropped += [self.dropper.submit(self._drop, name) for name in self.used]
        self.used = []

    def close(self) -> None:
        """Drop every clone, used or made ahead; raise what a clone or a drop raised."""
        self.used += [f.result() for f in self.ready]
        self.cloner.shutdown(wait=True)
        self._drop_used()
        self.dropper.shutdown(wait=True)
        for dropped in self.dropped:
            dropped.result()


@pytest.fixture(scope="session")
def clones(server_url: str, template_db: str) -> Iterator[Clones]:
    c = Clones(server_url, template_db)
    yield c
    c.close()


@pytest.fixture
def db_url(server_url: str, clones: Clones) -> Iterator[str]:
    """URL of a fresh database with the schema applied, dropped after the test."""
    name = clones.take()
    yield make_conninfo(server_url, dbname=name)
    clones.drop(name)


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection[DictRow]]:
    with connect(db_url) as c:
        yield c


@pytest.fixture
def store(conn: psycopg.Connection[DictRow]) -> Store:
    return Store(conn)


@pytest.fixture
def side(conn: psycopg.Connection[DictRow]) -> psycopg.Connection[DictRow]:
    """The test's connection, with tests/jobapp.py's side table (where job bodies record what they did)."""
    conn.execute(SIDE_TABLE)
    return conn


@pytest.fixture
def workers() -> Iterator[list[WorkerProcess]]:
    """Worker processes a test starts (append them): killed at its end, whatever happened."""
    started: list[WorkerProcess] = []
    yield started
    for w in started:
        w.kill()


def count_events(conn: psycopg.Connection[DictRow]) -> int:
    row = conn.execute("SELECT count(*) AS n FROM ledger.events").fetchone()
    assert row is not None
    n: int = row["n"]
    return n
