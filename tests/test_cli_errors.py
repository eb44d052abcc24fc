"""Errors a person can act on: each mistake is one line on stderr and a non-zero exit, never a traceback.

Every case runs the real command (`python -m ledger`, or gunicorn) against a
real database and checks the whole of stderr: the one line, and nothing else.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
from psycopg.conninfo import make_conninfo

from ledger.db import connect

from .test_cli import ledger
from .workers import ROOT

DOWN = "postgresql://postgres@127.0.0.1:1/ledger"
"""A server that is not there: port 1 refuses at once."""


def one_line(out: subprocess.CompletedProcess[str], code: int, line: str) -> None:
    assert (out.returncode, out.stderr.splitlines()) == (code, [line]), out.stderr


def test_a_typo_in_a_setting_names_the_variable_and_the_allowed_values(db_url: str) -> None:
    out = ledger("failed", url=db_url, extra_env={"LEDGER_ENV": "prod"})
    one_line(out, 1, "error: invalid setting LEDGER_ENV='prod': Input should be 'development' or 'production'")


def test_a_database_url_that_is_not_a_url_says_how_to_write_one() -> None:
    out = ledger("failed", url="notaurl")
    one_line(
        out,
        1,
        'error: DATABASE_URL is not a PostgreSQL URL (missing "=" after "notaurl" in connection info string); '
        "write it as postgresql://USER:PASSWORD@HOST:5432/DATABASE",
    )


def test_a_refused_connection_keeps_its_cause_and_gives_one_hint() -> None:
    out = ledger("failed", url=DOWN)
    one_line(
        out,
        1,
        'error: cannot connect to postgresql://postgres@127.0.0.1:1/ledger: connection to server at "127.0.0.1", '
        "port 1 failed: Connection refused; is the server running and DATABASE_URL right?",
    )


@pytest.mark.parametrize("command", ["replay", "cancel", "show"])
def test_a_job_id_out_of_the_bigint_range_is_refused_before_the_database(command: str, db_url: str) -> None:
    out = ledger(command, "9223372036854775808", url=db_url)
    one_line(
        out,
        2,
        "error: Invalid value for 'job_id': job ids are whole numbers from 1 to 9223372036854775807, "
        f"not 9223372036854775808; see `ledger {command} --help`",
    )


@pytest.mark.parametrize("duration", ["99999999999999w", "999999999d"])
def test_a_duration_past_what_a_timestamp_holds_is_refused(duration: str, db_url: str) -> None:
    # 99999999999999w overflowed Python's timedelta; 999999999d PostgreSQL's timestamps.
    out = ledger("prune", "--older-than", duration, url=db_url)
    one_line(out, 1, f"error: duration {duration!r} is longer than 100 years")


def test_an_app_named_by_a_path_is_refused_as_not_a_module_name(db_url: str) -> None:
    out = ledger("enqueue", "heartbeat", "--app", "../../etc/passwd", url=db_url)
    one_line(
        out,
        1,
        "error: application module '../../etc/passwd' (from --app) is not a module name; "
        "name a Python module such as myapp.jobs (dotted, no path or .py)",
    )


def test_an_app_that_cannot_be_imported_says_which_and_why(db_url: str) -> None:
    out = ledger("worker", url=db_url, extra_env={"LEDGER_APP": "no_such_module_here"})
    one_line(
        out,
        1,
        "error: cannot import application module 'no_such_module_here' (from LEDGER_APP): "
        "No module named 'no_such_module_here'",
    )


def test_a_usage_error_is_one_line_that_points_at_the_help(db_url: str) -> None:
    out = ledger("jobs", "--state", "stuck", url=db_url)
    assert out.returncode == 2 and len(out.stderr.splitlines()) == 1, out.stderr
    assert out.stderr.startswith("error: Invalid value for '--state':") and "'discarded'" in out.stderr
    assert out.stderr.rstrip().endswith("; see `ledger jobs --help`")


@pytest.fixture
def unprivileged_url(db_url: str) -> Iterator[str]:
    """A login role with no grants at all, on a database that has the ledger."""
    role = f"ledger_nobody_{os.getpid()}"
    with connect(db_url) as conn:
        conn.execute(f"DROP ROLE IF EXISTS {role}")
        conn.execute(f"CREATE ROLE {role} LOGIN")
    yield make_conninfo(db_url, user=role, password="")
    with connect(db_url) as conn:
        conn.execute(f"DROP ROLE IF EXISTS {role}")


@pytest.mark.parametrize("command", [("failed",), ("replay", "1"), ("enqueue", "heartbeat")])
def test_a_role_without_privileges_is_told_what_it_lacks_and_what_to_do(
    command: tuple[str, ...], unprivileged_url: str
) -> None:
    out = ledger(*command, url=unprivileged_url)
    role = f"ledger_nobody_{os.getpid()}"
    one_line(
        out,
        1,
        f"error: the database refused role {role!r}: permission denied for schema ledger; connect (DATABASE_URL) "
        "as a role granted the ledger's privileges (`ledger roles`), or as its owner to migrate",
    )


def gunicorn(url: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`just web`'s command, on a port nothing uses; it must end by itself."""
    full = {k: v for k, v in os.environ.items() if k not in {"LEDGER_ENV", "LEDGER_API_TOKEN"}}
    full.update({"DATABASE_URL": url, **env})
    return subprocess.run(
        [sys.executable, "-m", "gunicorn", "-c", "python:ledger.web.gunicorn_conf",
         "--bind", "127.0.0.1:0", "ledger.web.wsgi:app"],
        cwd=ROOT, env=full, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_the_web_app_with_a_bad_setting_is_one_line_not_every_workers_traceback(db_url: str) -> None:
    out = gunicorn(db_url, {"LEDGER_ENV": "prod"})
    one_line(out, 1, "error: invalid setting LEDGER_ENV='prod': Input should be 'development' or 'production'")


def test_the_web_app_in_production_without_a_token_is_one_line(db_url: str) -> None:
    out = gunicorn(db_url, {"LEDGER_ENV": "production"})
    one_line(out, 1, "error: LEDGER_API_TOKEN is required in production (it protects the API and the dashboard)")


def test_the_web_app_with_the_database_down_is_one_line(db_url: str) -> None:
    out = gunicorn(DOWN, {})
    one_line(
        out,
        1,
        'error: cannot connect to postgresql://postgres@127.0.0.1:1/ledger: connection to server at "127.0.0.1", '
        "port 1 failed: Connection refused; is the server running and DATABASE_URL right?",
    )
