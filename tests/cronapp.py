"""tests.jobapp's kinds plus a cron schedule every two seconds: `ledger worker --app tests.cronapp`."""

from __future__ import annotations

from ledger.kinds import default_registry

from . import jobapp  # noqa: F401  (its kinds: `noop` among them)

default_registry.schedule("every-2s", "noop", cron="*/2 * * * * *", timezone="Europe/Paris")
