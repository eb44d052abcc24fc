"""The code's shape, kept by tests: one door to the database, a generated sync store, rules stated once."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.rows import DictRow
from pydantic import TypeAdapter, ValidationError

from ledger import defaults
from ledger.models import JobRequest

ROOT = Path(__file__).resolve().parent.parent
DOOR = {"ledger/store_async.py", "ledger/store.py", "ledger/queries.py"}
# Calls that send SQL over a psycopg connection or cursor.
SENDS_SQL = {"execute", "executemany", "cursor", "pipeline", "copy", "stream"}


PACKAGES = ("ledger", "ledger/cli", "worker", "web")
"""Every folder of modules, each once (ledger/worker and ledger/web are links to worker/ and web/)."""


def _modules() -> list[Path]:
    """Every module of the package, each once."""
    return sorted(p for d in PACKAGES for p in (ROOT / d).glob("*.py"))


def _violations(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in SENDS_SQL:
            found.append(f"line {node.lineno}: .{node.func.attr}(...)")
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            names = {a.name for a in node.names}
            if module.endswith("queries") or (module in ("", "ledger") and "queries" in names):
                found.append(f"line {node.lineno}: imports the query loader")
            if module == "psycopg" and "sql" in names:
                found.append(f"line {node.lineno}: builds SQL (psycopg.sql)")
    return found


def test_only_the_store_sends_sql_or_loads_named_queries() -> None:
    offenders = {
        str(p.relative_to(ROOT)): v
        for p in _modules()
        if str(p.relative_to(ROOT)) not in DOOR and (v := _violations(p))
    }
    assert offenders == {}, "SQL outside the store (ledger/store_async.py): add a store method instead"


def test_the_structure_check_sees_sql_where_it_is() -> None:
    # The check itself must be able to fail: the store is full of what it looks for.
    assert len(_violations(ROOT / "ledger" / "store_async.py")) > 10


def test_the_sync_store_is_generated_from_the_async_one() -> None:
    out = subprocess.run(
        [sys.executable, "scripts/async_to_sync.py", "--check"], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr


def test_the_core_imports_neither_the_worker_nor_the_web_app() -> None:
    for path in [*(ROOT / "ledger").glob("*.py"), *(ROOT / "ledger" / "cli").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                assert not any(n.startswith(("ledger.worker", "ledger.web", "worker", "web")) for n in names), path


def _function_defaults(conn: psycopg.Connection[DictRow], name: str) -> str:
    row = conn.execute("SELECT pg_get_function_arguments(%s::regproc) AS args", [name]).fetchone()
    assert row is not None
    args: str = row["args"]
    return args


def test_the_databases_defaults_are_the_pythons(conn: psycopg.Connection[DictRow]) -> None:
    enqueue = _function_defaults(conn, "ledger.job_enqueue")
    assert f"queue text DEFAULT '{defaults.QUEUE}'::text" in enqueue
    assert f"priority integer DEFAULT {defaults.PRIORITY}" in enqueue
    assert f"max_attempts integer DEFAULT {defaults.MAX_ATTEMPTS}" in enqueue
    # The lease is the caller's alone: no second default in SQL to drift from ledger/defaults.py.
    for fn in ("ledger.job_claim", "ledger.worker_heartbeat"):
        assert "lease interval," in _function_defaults(conn, fn) + ",", fn
        assert "lease interval DEFAULT" not in _function_defaults(conn, fn), fn


_REQUEST = TypeAdapter(JobRequest)


# The connection only reads (a pure SQL function): sharing it between examples is safe.
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    queue=st.one_of(st.text(max_size=60), st.from_regex(r"[A-Za-z0-9_.:-]{1,55}", fullmatch=True)),
    priority=st.integers(-3, 12),
    max_attempts=st.integers(-1, 1002),
)
def test_python_and_the_database_agree_on_the_enqueue_rules(
    conn: psycopg.Connection[DictRow], queue: str, priority: int, max_attempts: int
) -> None:
    try:
        _REQUEST.validate_python({"kind": "k", "queue": queue, "priority": priority, "max_attempts": max_attempts})
        python_ok = True
    except ValidationError:
        python_ok = False
    if "\x00" in queue:
        assert not python_ok
        return  # PostgreSQL text cannot hold NUL; the client refuses it first
    row = conn.execute(
        "SELECT ledger._enqueue_problem('k', '{}'::jsonb, %s, %s, %s) AS problem", [queue, priority, max_attempts]
    ).fetchone()
    assert row is not None
    assert python_ok == (row["problem"] is None), (queue, priority, max_attempts, row["problem"])


@pytest.mark.parametrize("path", PACKAGES)
def test_every_module_opens_with_a_docstring(path: str) -> None:
    for module in (ROOT / path).glob("*.py"):
        tree = ast.parse(module.read_text(encoding="utf-8"))
        if tree.body:
            assert ast.get_docstring(tree), f"{module.relative_to(ROOT)} needs a one-line docstring"
