"""The `ledger` pytest plugin: fixtures for testing an application's own jobs (ledger/worker/testing.py).

Installed with the package (entry point `pytest11`, name `ledger`). It only
registers fixtures, all named `ledger_*`, and each does nothing until a test
asks for it: no database is touched, nothing is imported beyond this module,
no hook runs. `-p no:ledger` turns it off.

    ledger_db        URL of a fresh database with the ledger's schema, dropped after the test
    ledger_jobs      a LedgerTesting on it: .client, .assert_enqueued(), .drain(), .inline(), ...
    ledger_inline    the same, with inline mode on for the whole test
    ledger_registry  the registry of your kinds (default: ledger.kinds.default_registry); override it
    ledger_server_url      where the databases are made: DATABASE_URL, else the embedded server
    ledger_template_setup  override to add your own tables to the template: a function of its URL
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from ledger.kinds import Registry

    from .testing import LedgerTesting, TemplateDatabases

__all__ = [
    "ledger_db",
    "ledger_inline",
    "ledger_jobs",
    "ledger_registry",
    "ledger_server_url",
    "ledger_template",
    "ledger_template_setup",
]


@pytest.fixture(scope="session")
def ledger_server_url() -> str:
    """The PostgreSQL server the test databases are made on: DATABASE_URL, else the embedded one."""
    from ledger.db import database_url
    from ledger.settings import Settings

    return database_url(Settings())


@pytest.fixture(scope="session")
def ledger_template_setup() -> Callable[[str], None] | None:
    """Override (session scope) to prepare the template beyond the ledger's schema, e.g. create your
    own tables: called once with the template's URL; close its connections before returning."""
    return None


@pytest.fixture(scope="session")
def ledger_template(
    ledger_server_url: str, ledger_template_setup: Callable[[str], None] | None
) -> Iterator[TemplateDatabases]:
    """The template database of this test session (one per process, so pytest-xdist works)."""
    from .testing import TemplateDatabases

    databases = TemplateDatabases(ledger_server_url, ledger_template_setup)
    yield databases
    databases.close()


@pytest.fixture
def ledger_db(ledger_template: TemplateDatabases) -> Iterator[str]:
    """URL of a fresh database with the ledger's schema (a copy of the template), dropped after the test."""
    with ledger_template.fresh() as url:
        yield url


@pytest.fixture
def ledger_registry() -> Registry:
    """The registry your kinds are in; override it if you do not use the default one."""
    from ledger.kinds import default_registry

    return default_registry


@pytest.fixture
def ledger_jobs(ledger_db: str, ledger_registry: Registry) -> Iterator[LedgerTesting]:
    """The test's ledger: a client, what is enqueued, drain(), inline()."""
    from .testing import LedgerTesting

    ledger = LedgerTesting(ledger_db, ledger_registry)
    try:
        yield ledger
    finally:
        ledger.close()


@pytest.fixture
def ledger_inline(ledger_jobs: LedgerTesting) -> Iterator[LedgerTesting]:
    """The test's ledger with inline mode on: every enqueue runs its jobs before it returns."""
    with ledger_jobs.inline():
        yield ledger_jobs
