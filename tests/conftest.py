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
from collections.abc import Iterator

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from psycopg.rows import DictRow

from ledger.db import connect, database_url
from ledger.migrate import migrate
from ledger.settings import Settings
from ledger.store import Store

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


@pytest.fixture
def db_url(server_url: str, template_db: str) -> Iterator[str]:
    """URL of a fresh database with the schema applied, dropped after the test."""
    name = unique_name("ledger_t")
    with _admin(server_url) as admin:
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    yield make_conninfo(server_url, dbname=name)
    with _admin(server_url) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection[DictRow]]:
    with connect(db_url) as c:
        yield c


@pytest.fixture
def store(conn: psycopg.Connection[DictRow]) -> Store:
    return Store(conn)


def count_events(conn: psycopg.Connection[DictRow]) -> int:
    row = conn.execute("SELECT count(*) AS n FROM ledger.events").fetchone()
    assert row is not None
    n: int = row["n"]
    return n
