"""gunicorn as a real subprocess on a free port, for end-to-end tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request

from .workers import ROOT, wait_until


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return 0, ""


class Gunicorn:
    def __init__(self, url: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        full = {k: v for k, v in os.environ.items() if k not in {"LEDGER_ENV", "LEDGER_API_TOKEN"}}
        full.update({"DATABASE_URL": url, "PYTHONPATH": str(ROOT), **(env or {})})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "python:ledger.web.gunicorn_conf",
             "--bind", f"127.0.0.1:{self.port}", "--workers", "1", "ledger.web.wsgi:app"],
            cwd=ROOT, env=full, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_until(
            lambda: http_get(f"{self.base}/healthz", 1)[0] == 200 or self.proc.poll() is not None, 30, "gunicorn"
        )
        assert self.proc.poll() is None, "gunicorn exited at start"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
