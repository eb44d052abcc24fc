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


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None  # a 303 is an answer to look at, not to follow


def http(
    url: str, *, data: bytes | None = None, headers: dict[str, str] | None = None, timeout: float = 5.0
) -> tuple[int, dict[str, str], str]:
    """(status, headers by lower-case name, body) of one request, redirects not followed; 0 when nothing answered."""
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.build_opener(_NoRedirect).open(request, timeout=timeout) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read().decode()
    except OSError:
        return 0, {}, ""


def http_get(url: str, timeout: float = 5.0, headers: dict[str, str] | None = None) -> tuple[int, str]:
    status, _, body = http(url, headers=headers, timeout=timeout)
    return status, body


class Gunicorn:
    def __init__(self, url: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        full = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
        full.update({"DATABASE_URL": url, "PYTHONPATH": str(ROOT), **(env or {})})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "python:ledger.web.gunicorn_conf",
             "--bind", f"127.0.0.1:{self.port}", "--workers", "1", "ledger.web.wsgi:app"],
            cwd=ROOT, env=full, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        # With a token, /healthz needs it too (unless LEDGER_PUBLIC_OPS).
        token = full.get("LEDGER_API_TOKEN")
        auth = {"Authorization": f"Bearer {token}"} if token else {}
        wait_until(
            lambda: http_get(f"{self.base}/healthz", 1, auth)[0] == 200 or self.proc.poll() is not None, 30, "gunicorn"
        )
        assert self.proc.poll() is None, "gunicorn exited at start"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
