"""The JSON API fuzzed from its own OpenAPI document with schemathesis: no 5xx, no response
that breaks the document (status codes, content types, bodies)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool
from schemathesis import GenerationMode

from ledger.kinds import builtin_registry
from ledger.settings import Settings
from ledger.store import Store
from ledger.web.app import create_app
from ledger.web.settings import WebSettings

from .conftest import unique_name


@pytest.fixture(scope="module")
def fuzz_pool(server_url: str, template_db: str) -> Iterator[ConnectionPool[Any]]:
    # One database for the whole fuzz run: the fixtures of conftest are per test,
    # and schemathesis runs one test per operation with many examples each.
    from psycopg.conninfo import make_conninfo

    from ledger.db import connect

    name = unique_name("ledger_fuzz")
    with connect(server_url) as admin:
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    url = make_conninfo(server_url, dbname=name)
    with ConnectionPool(url, min_size=1, max_size=4, kwargs={"autocommit": True, "row_factory": dict_row}) as pool:
        with pool.connection() as conn:
            store = Store(conn)  # a few jobs in every state for the id-taking routes to find
            ids = store.enqueue_many([("heartbeat", {}, "default", 5, 1, None)] * 6)
            store.claim("default", 3, "fuzz")
            store.succeed(ids[0])
            store.fail(ids[1], "boom")
        yield pool
    with connect(server_url) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_the_api_answers_every_generated_request_within_its_document(fuzz_pool: ConnectionPool[Any]) -> None:
    # schemathesis's pytest plugin does not load under pytest 9 (it reads a private
    # `_nodeid`); its per-operation hypothesis strategies are driven here instead.
    app = create_app(Settings(database_url="unused"), WebSettings(), pool=fuzz_pool, registry=builtin_registry())
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 9, "every documented operation is fuzzed"
    calls = 0
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            def fuzz(case: Any) -> None:
                nonlocal calls
                calls += 1
                case.call_and_validate()

            try:
                fuzz()
            except Unsatisfiable:
                # An operation that takes no input has no invalid input to generate.
                assert mode is GenerationMode.NEGATIVE, operation.label
    assert calls > 500, f"only {calls} requests were made"
