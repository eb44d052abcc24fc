"""Helpers to run `ledger worker` as a real subprocess and wait on what it does."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def wait_until(predicate: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class StderrLog:
    """A subprocess whose stderr a thread collects into `lines` (its log, for asserts and failures)."""

    proc: subprocess.Popen[str]

    def _collect(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    @property
    def log(self) -> str:
        return "\n".join(self.lines)


class WorkerProcess(StderrLog):
    """`ledger worker --app tests.jobapp` with its stderr collected line by line."""

    def __init__(
        self,
        url: str | None,
        *args: str,
        env: dict[str, str] | None = None,
        name: str = "w",
        app: str | None = "tests.jobapp",
        prefix: Sequence[str] = (),
    ) -> None:
        """`prefix` runs it elsewhere: `ip netns exec NS` (tests/netns.py) on a host of its own."""
        full_env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "LEDGER_ENV"}}
        if url is not None:
            full_env["DATABASE_URL"] = url
        full_env["PYTHONPATH"] = str(ROOT)
        full_env["LEDGER_WORKER_ID"] = name
        full_env.update(env or {})
        self.name = name
        self._collect(subprocess.Popen(
            [*prefix, sys.executable, "-m", "ledger", "worker", *(["--app", app] if app else []), *args],
            env=full_env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        ))  # fmt: skip

    def not_recorded(self) -> set[int]:
        """Jobs whose outcome this worker logged as not recorded: refused, the job was no longer its to finish."""
        return {
            int(json.loads(line)["job_id"])
            for line in self.lines
            if line.startswith("{") and "not recorded" in line and '"job_id"' in line
        }

    def wait_for(self, text: str, timeout: float = 30.0) -> None:
        wait_until(lambda: text in self.log or self.proc.poll() is not None, timeout, f"{text!r} in the log")
        assert text in self.log, f"worker exited ({self.proc.returncode}) before logging {text!r}:\n{self.log}"

    def started(self, listening: bool = True) -> WorkerProcess:
        self.wait_for("listener listening" if listening else "worker started")
        return self

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        """Wait for the process to exit on its own (after a signal the test sent)."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"worker {self.name} still running after {timeout}s:\n{self.log}") from None
        self._reader.join(5)
        return code

    def stop(self, timeout: float = 30.0) -> int:
        """One SIGTERM (a graceful stop), then wait for the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def run_worker_in_process(
    url: str, registry: Any, config: Any, body: Callable[[Any], Any], *, timeout: float = 30.0
) -> Any:
    """Run a Worker (ledger.worker.runtime) in this process while `body(worker)` runs in a thread;
    then stop it as a SIGTERM would. What `body` returned."""
    import anyio
    import anyio.to_thread

    from ledger.worker.runtime import Worker

    worker = Worker(config, registry, url)
    result: list[Any] = []

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run)

            async def drive() -> None:
                with anyio.fail_after(timeout):
                    # Started once its metrics endpoint (when asked for) and producer are up.
                    while config.metrics_port is not None and worker.metrics_port is None:
                        await anyio.sleep(0.02)
                    result.append(await anyio.to_thread.run_sync(body, worker))
                worker.stop_requested.set()

            tg.start_soon(drive)

    anyio.run(main)
    return result[0]
