"""The gunicorn entry point: `gunicorn -c python:ledger.web.gunicorn_conf ledger.web.wsgi:app`.

The application module is the one every entry point names (ledger/apps.py:
LEDGER_APP, else [tool.ledger] app in pyproject.toml).
"""

from __future__ import annotations

from ledger.apps import load_app
from ledger.console import fail
from ledger.errors import LedgerError
from ledger.logs import setup_logging

from .app import create_app

setup_logging()
try:
    load_app()
    app = create_app()
except LedgerError as exc:
    fail(str(exc), 3)  # gunicorn reports a worker that cannot boot
