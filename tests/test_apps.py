"""Naming the application module once for every entry point: --app, else LEDGER_APP, else [tool.ledger] app."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ledger.apps import configured_app
from ledger.errors import ConfigError

from .workers import ROOT

MYJOBS = """
from pydantic import BaseModel
from ledger.kinds import JobContext, default_registry

class Greet(BaseModel):
    name: str

@default_registry.kind("greet", args=Greet, queue="greetings")
def greet(ctx: JobContext[Greet]) -> None:
    print("hello", ctx.args.name)
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A user's project folder: pyproject.toml naming `myjobs`, and myjobs.py beside it."""
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "shop"\n\n[tool.ledger]\napp = "myjobs"\n')
    (tmp_path / "myjobs.py").write_text(MYJOBS)
    (tmp_path / "sub").mkdir()
    return tmp_path


def test_the_flag_wins_over_the_environment_which_wins_over_pyproject(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(project / "sub")  # pyproject.toml is found in a parent folder
    monkeypatch.delenv("LEDGER_APP", raising=False)
    found = configured_app()
    assert found is not None and (found.module, found.root) == ("myjobs", project)
    assert found.source == f"[tool.ledger] in {project / 'pyproject.toml'}"
    monkeypatch.setenv("LEDGER_APP", "from_env")
    env = configured_app()
    assert env is not None and (env.module, env.source) == ("from_env", "LEDGER_APP")
    flag = configured_app("from_flag")
    assert flag is not None and (flag.module, flag.source) == ("from_flag", "--app")


def test_no_app_is_named_without_flag_environment_or_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "plain"\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LEDGER_APP", raising=False)
    assert configured_app() is None


def test_a_pyproject_app_that_is_not_a_string_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.ledger]\napp = 3\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LEDGER_APP", raising=False)
    with pytest.raises(ConfigError, match=r"\[tool.ledger\] app in .* must be a module name"):
        configured_app()


def run(args: list[str], cwd: Path, url: str) -> subprocess.CompletedProcess[str]:
    """A process in the user's project folder; the checkout importable as an install would make it."""
    env = {k: v for k, v in os.environ.items() if k not in {"LEDGER_APP", "LEDGER_ENV"}}
    env.update({"DATABASE_URL": url, "PYTHONPATH": str(ROOT)})
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def test_a_client_finds_the_kinds_of_the_app_named_in_pyproject_without_importing_it(
    project: Path, db_url: str
) -> None:
    code = (
        "from ledger.client import Client\n"
        "from ledger.store import Store\n"
        "c = Client()\n"
        "job = c.enqueue('greet', {'name': 'ana'})\n"
        "print(Store(c._connection()).job(job).queue)\n"
    )
    # From a sub-folder, by `python -c`: sys.path has neither the project folder nor myjobs.
    out = run(["-c", code], project / "sub", db_url)
    assert (out.returncode, out.stdout) == (0, "greetings\n"), out.stderr


def test_the_cli_enqueues_a_kind_of_the_app_named_in_pyproject(project: Path, db_url: str) -> None:
    enq = run(["-m", "ledger", "enqueue", "greet", "--args", '{"name": "bo"}'], project / "sub", db_url)
    assert enq.returncode == 0 and enq.stdout.startswith("enqueued greet job id="), enq.stderr
    bad = run(["-m", "ledger", "enqueue", "greet"], project / "sub", db_url)
    assert bad.returncode == 1 and "invalid args for job kind 'greet': field 'name': Field required" in bad.stderr


def test_the_flag_is_the_app_even_when_an_unknown_kind_makes_the_registry_look_again(
    project: Path, db_url: str
) -> None:
    (project / "other.py").write_text("")
    out = run(["-m", "ledger", "enqueue", "greet", "--app", "other"], project, db_url)
    assert out.returncode == 1 and "unknown job kind 'greet'" in out.stderr, out.stderr
