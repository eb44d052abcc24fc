"""The embedded development server: shared by processes, survives a killed one, stops on request."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from ledger.embedded import server_running, stop_server

HOLD = "from ledger.db import database_url; database_url(); print('ready', flush=True); import time; time.sleep(120)"
USE = "from ledger.db import connect; c = connect(); print('ready', flush=True); import time; time.sleep(120)"


def env_for(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "LEDGER_ENV"}}
    env["LEDGER_DATA_DIR"] = str(data_dir)
    return env


def test_a_killed_process_leaves_a_server_the_next_process_reuses_and_db_stop_stops(tmp_path: Path) -> None:
    data = tmp_path / "d"
    env = env_for(data)
    holder = subprocess.Popen([sys.executable, "-c", HOLD], env=env, stdout=subprocess.PIPE, text=True)
    user: subprocess.Popen[str] | None = None
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        handles = data / "pgdata" / ".handle_pids.json"
        assert holder.pid in json.loads(handles.read_text())
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        assert server_running(data), "the server outlives the process that started it"

        out = subprocess.run(
            [sys.executable, "-m", "ledger", "failed"], env=env, capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0, out.stderr
        assert (out.stdout, out.stderr) == ("no discarded jobs found\n", "")
        assert holder.pid not in json.loads(handles.read_text()), "dead pids are pruned"
        assert (data / "run").stat().st_mode & 0o777 == 0o700, "the lock lives in a private folder"

        verbose = subprocess.run(
            [sys.executable, "-m", "ledger", "db", "url"],
            env={**env, "LEDGER_VERBOSE": "1"},
            capture_output=True,
            text=True,
        )
        assert "database: embedded PostgreSQL in" in verbose.stderr

        # A process that uses the server (a worker, a web app): stopping it is refused without --force.
        user = subprocess.Popen([sys.executable, "-c", USE], env=env, stdout=subprocess.PIPE, text=True)
        assert user.stdout is not None and user.stdout.readline().strip() == "ready"
        stop = subprocess.run([sys.executable, "-m", "ledger", "db", "stop"], env=env, capture_output=True, text=True)
        assert (stop.returncode, stop.stderr) == (
            1,
            "error: the embedded server has 1 other connection(s) (to ledger): a worker, a web server or a test run "
            "uses it; stop them first, or pass --force\n",
        )
        assert server_running(data)
        stop = subprocess.run(
            [sys.executable, "-m", "ledger", "db", "stop", "--force"], env=env, capture_output=True, text=True
        )
        assert stop.stdout == "embedded server stopped\n", stop.stderr
        assert not server_running(data)
    finally:
        holder.kill()
        if user is not None:
            user.kill()
        stop_server(data)
