"""gunicorn settings for the ledger web app; every value can be overridden on the command line.

gunicorn imports this module once, in its master process, before it forks
the workers: that is where the settings, the application module and the
database are checked (web/startup.py), so a mistake ends gunicorn with one
`error:` line instead of every worker's traceback at boot.
"""

from __future__ import annotations

from ledger.console import fail
from ledger.errors import LedgerError
from ledger.web.startup import check

try:
    _web = check()
except LedgerError as exc:
    fail(str(exc))

bind = f"{_web.web_host}:{_web.web_port}"
workers = _web.web_workers
worker_class = "gthread"
# One pool connection per thread: LEDGER_POOL_SIZE defaults to the same 8.
threads = _web.web_threads or _web.pool_size
timeout = 30
graceful_timeout = 10
accesslog = "-"
errorlog = "-"
# No preload: each worker process opens its own pool after the fork.
preload_app = False
