"""`just worker` and `just web` as a supervisor or a terminal runs them: a signal stops them cleanly, exit 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from .servers import free_port, http_get
from .workers import ROOT, wait_until

JUST = Path(sys.executable).with_name("just")


class Recipe:
    """`just RECIPE ARGS` in a session of its own (as a terminal runs a foreground job), output collected."""

    def __init__(self, recipe: str, url: str, *args: str) -> None:
        env = {k: v for k, v in os.environ.items() if k not in {"LEDGER_ENV", "LEDGER_API_TOKEN"}}
        env.update({"DATABASE_URL": url, "PYTHONPATH": str(ROOT)})
        self.proc = subprocess.Popen(
            [str(JUST), recipe, *args], cwd=ROOT, env=env, text=True, start_new_session=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def wait(self) -> int:
        code = self.proc.wait(60)
        self._reader.join(5)
        return code


def _alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    return [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


@pytest.fixture
def recipes() -> Iterator[list[Recipe]]:
    started: list[Recipe] = []
    yield started
    for r in started:
        for p in _alive(r.descendants()):
            p.kill()
        if r.proc.poll() is None:
            r.proc.kill()


def _worker(url: str, recipes: list[Recipe]) -> Recipe:
    r = Recipe("worker", url, "--heartbeat-every", "3600", "--rescue-every", "3600")
    recipes.append(r)
    wait_until(lambda: "listener listening" in r.output or r.proc.poll() is not None, 60, "the worker")
    assert "listener listening" in r.output, r.output
    return r


# just forwards a SIGTERM to its child and, by its own documented rule, then exits 143
# ("interrupted by SIGTERM") however cleanly the child stopped; [continue] does not take
# SIGTERM. What the ledger controls: the signal reaches the worker, which drains and
# exits 0, and nothing is left behind.
JUST_AFTER_SIGTERM = 128 + signal.SIGTERM


def test_sigterm_to_just_worker_reaches_the_worker_which_stops_cleanly_leaving_nothing_behind(
    db_url: str, recipes: list[Recipe]
) -> None:
    r = _worker(db_url, recipes)
    [worker] = [p for p in r.descendants() if "worker" in " ".join(p.cmdline())]
    r.proc.send_signal(signal.SIGTERM)  # to `just` alone, as a supervisor sends it
    assert r.wait() == JUST_AFTER_SIGTERM, r.output
    assert "worker stopping on SIGTERM" in r.output and '"abandoned": 0' in r.output
    assert _alive([worker]) == [], "no orphaned worker"


def test_ctrl_c_on_just_worker_is_a_clean_stop_with_exit_0(db_url: str, recipes: list[Recipe]) -> None:
    r = _worker(db_url, recipes)
    os.killpg(r.proc.pid, signal.SIGINT)  # Ctrl-C: the whole foreground process group
    assert r.wait() == 0, r.output
    assert "worker stopped" in r.output and "terminated" not in r.output


def test_sigterm_to_just_web_stops_gunicorn_cleanly(db_url: str, recipes: list[Recipe]) -> None:
    port = free_port()
    r = Recipe("web", db_url, "--bind", f"127.0.0.1:{port}", "--workers", "1")
    recipes.append(r)
    wait_until(lambda: http_get(f"http://127.0.0.1:{port}/healthz", 1)[0] in (200, 401), 60, "gunicorn")
    servers = r.descendants()
    r.proc.send_signal(signal.SIGTERM)
    assert r.wait() == JUST_AFTER_SIGTERM, r.output
    assert _alive(servers) == [], "no orphaned gunicorn"


def test_ctrl_c_on_just_web_is_a_clean_stop_with_exit_0(db_url: str, recipes: list[Recipe]) -> None:
    port = free_port()
    r = Recipe("web", db_url, "--bind", f"127.0.0.1:{port}", "--workers", "1")
    recipes.append(r)
    wait_until(lambda: http_get(f"http://127.0.0.1:{port}/healthz", 1)[0] in (200, 401), 60, "gunicorn")
    servers = r.descendants()
    os.killpg(r.proc.pid, signal.SIGINT)
    assert r.wait() == 0, r.output
    assert _alive(servers) == [] and "terminated" not in r.output
