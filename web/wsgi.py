"""The gunicorn entry point: `gunicorn -c web/gunicorn_conf.py web.wsgi:app`."""

from __future__ import annotations

import os

from ledger.cli import fail, load_app
from ledger.errors import LedgerError
from ledger.logs import setup_logging

from .app import create_app

setup_logging()
load_app(os.environ.get("LEDGER_APP"))
try:
    app = create_app()
except LedgerError as exc:
    fail(str(exc), 3)  # gunicorn reports a worker that cannot boot
