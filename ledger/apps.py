"""The user's application module: the one that registers their job kinds (`--app`, else LEDGER_APP)."""

from __future__ import annotations

import importlib
import os

from .errors import ConfigError

__all__ = ["load_app"]


def load_app(module: str | None = None) -> str | None:
    """Import the application module so its kinds register; its name, or None when none is named.

    ConfigError, naming the module and the reason, when it cannot be imported.
    """
    module = module or os.environ.get("LEDGER_APP")
    if not module:
        return None
    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(f"cannot import application module {module!r}: {exc}") from None
    return module
