"""What `ledger worker --app examples.orders.worker` imports: the shop's kinds, put in the registry the worker runs.

The shop keeps its kinds in a registry of its own (examples/orders/jobs.py), so
that its tests can hand exactly that one to the pytest plugin; the `ledger
worker` command runs ledger.kinds.default_registry, so this module adds them there.
"""

from __future__ import annotations

from ledger.kinds import default_registry

from .jobs import registry

for kind in registry.kinds.values():
    default_registry.add(kind)  # the built-ins are the same definitions: add() takes them as they are
