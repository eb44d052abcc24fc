"""gunicorn settings for the ledger web app; every value can be overridden on the command line."""

from __future__ import annotations

import os

bind = f"{os.environ.get('LEDGER_WEB_HOST', '127.0.0.1')}:{os.environ.get('LEDGER_WEB_PORT', '8000')}"
workers = int(os.environ.get("LEDGER_WEB_WORKERS", "2"))
worker_class = "gthread"
# One pool connection per thread: LEDGER_POOL_SIZE defaults to the same 8.
threads = int(os.environ.get("LEDGER_WEB_THREADS", os.environ.get("LEDGER_POOL_SIZE", "8")))
timeout = 30
graceful_timeout = 10
accesslog = "-"
errorlog = "-"
# No preload: each worker process opens its own pool after the fork.
preload_app = False
