"""Enqueue inside the application's own transaction, from its ORM: SQLAlchemy (sync and async) and Django.

Each against a real PostgreSQL: the job commits with the caller's rows, or
rolls back with them (ledger/orm.py finds the psycopg connection under the ORM).
"""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import DictRow
from sqlalchemy import URL, Engine, create_engine, text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import Session

from ledger.client import AsyncClient, Client
from ledger.store import Store


def sa_url(db_url: str) -> URL:
    return URL.create("postgresql+psycopg", query=conninfo_to_dict(db_url))


def rows(conn: psycopg.Connection[DictRow]) -> tuple[int, int]:
    """(notes, jobs) as another connection sees them: what was committed."""
    notes = conn.execute("SELECT count(*) AS n FROM notes").fetchone()
    jobs = conn.execute("SELECT count(*) AS n FROM ledger.jobs").fetchone()
    assert notes is not None and jobs is not None
    return notes["n"], jobs["n"]


@pytest.fixture
def notes(conn: psycopg.Connection[DictRow]) -> psycopg.Connection[DictRow]:
    conn.execute("CREATE TABLE notes (id serial PRIMARY KEY, body text NOT NULL)")
    return conn


@pytest.fixture
def engine(db_url: str, notes: psycopg.Connection[DictRow]) -> Iterator[Engine]:
    engine = create_engine(sa_url(db_url))
    yield engine
    engine.dispose()


# ---------------------------------------------------------------- SQLAlchemy, sync


def test_a_job_enqueued_in_a_sqlalchemy_session_commits_with_it(
    db_url: str, engine: Engine, notes: psycopg.Connection[DictRow], store: Store
) -> None:
    with Client(db_url) as client, Session(engine) as session:
        session.execute(text("INSERT INTO notes (body) VALUES ('hello')"))
        job_id = client.enqueue("heartbeat", conn=session)
        assert rows(notes) == (0, 0), "nothing is visible before the session commits"
        session.commit()
    assert rows(notes) == (1, 1)
    assert [e.type for e in store.events_for_job(job_id)] == ["enqueued"]


def test_a_job_enqueued_in_a_sqlalchemy_session_rolls_back_with_it(
    db_url: str, engine: Engine, notes: psycopg.Connection[DictRow]
) -> None:
    with Client(db_url) as client, Session(engine) as session:
        session.execute(text("INSERT INTO notes (body) VALUES ('hello')"))
        client.enqueue_many([{"kind": "heartbeat"}, {"kind": "heartbeat"}], conn=session)
        session.rollback()
    assert rows(notes) == (0, 0)


def test_a_job_joins_a_sqlalchemy_connections_transaction(
    db_url: str, engine: Engine, notes: psycopg.Connection[DictRow]
) -> None:
    with Client(db_url) as client:
        with engine.begin() as connection:
            connection.execute(text("INSERT INTO notes (body) VALUES ('kept')"))
            client.enqueue("heartbeat", conn=connection)
        with pytest.raises(RuntimeError), engine.begin() as connection:
            connection.execute(text("INSERT INTO notes (body) VALUES ('lost')"))
            client.enqueue("heartbeat", conn=connection)
            raise RuntimeError("the caller's work failed")
    assert rows(notes) == (1, 1)


def test_a_sqlalchemy_engine_on_another_driver_is_refused_with_what_to_use(db_url: str) -> None:
    class NotPsycopg:
        """A DBAPI connection that is not psycopg 3 (psycopg2, say)."""

    class Fairy:
        driver_connection = NotPsycopg()

    class FakeSAConnection:  # the shape of sqlalchemy.engine.Connection, without a database
        connection = Fairy()

    FakeSAConnection.__module__ = "sqlalchemy.engine.base"
    with Client(db_url) as client, pytest.raises(TypeError, match=r"not psycopg 3: use the psycopg dialect"):
        client.enqueue("heartbeat", conn=FakeSAConnection())


# ---------------------------------------------------------------- SQLAlchemy, async


def test_a_job_enqueued_in_an_async_session_commits_and_rolls_back_with_it(
    db_url: str, notes: psycopg.Connection[DictRow]
) -> None:
    from sqlalchemy.ext.asyncio import AsyncSession

    async def main() -> None:
        engine = create_async_engine(sa_url(db_url))
        client = AsyncClient(db_url)
        try:
            async with AsyncSession(engine) as session:
                await session.execute(text("INSERT INTO notes (body) VALUES ('kept')"))
                await client.enqueue("heartbeat", conn=session)
                await session.commit()
            async with AsyncSession(engine) as session:
                await session.execute(text("INSERT INTO notes (body) VALUES ('lost')"))
                await client.enqueue("heartbeat", conn=session)
                await session.rollback()
            async with engine.connect() as connection:  # an AsyncConnection joins too
                await client.enqueue("heartbeat", conn=connection)
                await connection.rollback()
        finally:
            await client.close()
            await engine.dispose()

    anyio.run(main)
    assert rows(notes) == (1, 1)


# ---------------------------------------------------------------- Django


@pytest.fixture
def django_connection(db_url: str, notes: psycopg.Connection[DictRow]) -> Iterator[object]:
    """Django's default connection, pointed at this test's database (Django is configured once per process)."""
    import django
    from django.conf import settings
    from django.db import connection

    params = conninfo_to_dict(db_url)
    database = {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": params["dbname"], "USER": params.get("user", ""),
        "HOST": params.get("host", ""), "PORT": params.get("port", ""),
    }  # fmt: skip
    if not settings.configured:
        settings.configure(DATABASES={"default": database}, USE_TZ=True)
        django.setup()
    connection.close()
    connection.settings_dict.update(database)
    yield connection
    connection.close()


def test_a_job_enqueued_in_a_django_atomic_block_commits_and_rolls_back_with_it(
    db_url: str, django_connection: object, notes: psycopg.Connection[DictRow], store: Store
) -> None:
    from django.db import connection, transaction

    with Client(db_url) as client:
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("INSERT INTO notes (body) VALUES ('kept')")
            kept = client.enqueue("heartbeat", conn=connection)
            assert rows(notes) == (0, 0), "nothing is visible before the atomic block commits"
        with pytest.raises(RuntimeError), transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("INSERT INTO notes (body) VALUES ('lost')")
            client.enqueue("heartbeat", conn=connection)
            raise RuntimeError("the view failed")
    assert rows(notes) == (1, 1)
    assert store.job(kept) is not None


def test_outside_an_atomic_block_a_django_enqueue_commits_at_once_as_django_does(
    db_url: str, django_connection: object, notes: psycopg.Connection[DictRow]
) -> None:
    from django.db import connection

    with Client(db_url) as client:
        client.enqueue("heartbeat", conn=connection)
        assert rows(notes) == (0, 1)


def test_inline_mode_runs_a_job_on_djangos_connection_inside_its_atomic_block(
    db_url: str, django_connection: object, notes: psycopg.Connection[DictRow]
) -> None:
    # Django's connection has client-side binding cursors and loads jsonb as text: the claim's
    # binary results and the recorded rows must still come through (the store's own cursors).
    from django.db import connection, transaction

    from ledger.worker.testing import LedgerTesting

    ledger = LedgerTesting(db_url)
    with ledger.inline(), Client(db_url) as client, transaction.atomic():
        job_id = client.enqueue("heartbeat", conn=connection)
        assert ledger.store.job(job_id) is None, "it ran inside the block: others see nothing before the commit"
    assert ledger.job(job_id).state == "succeeded"
    assert [e.type for e in ledger.history(job_id)] == ["enqueued", "started", "succeeded"]
    ledger.close()
