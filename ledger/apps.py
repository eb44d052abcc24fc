"""The user's application module, the one that registers their job kinds, named once for every entry point.

Where the name comes from, first found wins:

1. `--app MODULE` on the command line (`ledger enqueue`, `ledger worker`, ...);
2. the environment variable `LEDGER_APP`;
3. `app = "MODULE"` in the `[tool.ledger]` table of the nearest pyproject.toml,
   looked for in the current directory and then its parents.

The current directory (and the folder of that pyproject.toml) is importable,
as with uvicorn and celery, so `ledger worker --app myjobs` finds `myjobs.py`
in the project folder with a non-editable install of ledger.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError

__all__ = ["App", "configured_app", "load_app"]

log = logging.getLogger(__name__)
_MODULE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
_loaded: dict[str, App] = {}
_loading: set[str] = set()


@dataclass(frozen=True)
class App:
    """An application module and where its name came from (for the worker's start-up line)."""

    module: str
    source: str
    """`--app`, `LEDGER_APP`, or `[tool.ledger] in /path/pyproject.toml`."""
    root: Path
    """The folder made importable for it."""

    def __str__(self) -> str:
        return f"{self.module} (from {self.source})"


def _pyproject(start: Path) -> Path | None:
    """The nearest pyproject.toml at or above `start`: the project's, as ruff and pytest find it."""
    for folder in (start, *start.parents):
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            return candidate
    return None


def configured_app(module: str | None = None) -> App | None:
    """Which application module is named, and by what; None when none is."""
    cwd = Path.cwd()
    if module:
        return App(module, "--app", cwd)
    if env := os.environ.get("LEDGER_APP"):
        return App(env, "LEDGER_APP", cwd)
    found = _pyproject(cwd)
    if found is None:
        return None
    try:
        table = tomllib.loads(found.read_text(encoding="utf-8")).get("tool", {}).get("ledger", {})
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {found}: {exc}") from None
    name = table.get("app") if isinstance(table, dict) else None
    if name is None:
        return None
    if not isinstance(name, str):
        raise ConfigError(f'[tool.ledger] app in {found} must be a module name such as "myapp.jobs"')
    return App(name, f"[tool.ledger] in {found}", found.parent)


def load_app(module: str | None = None) -> App | None:
    """Import the named application module so its kinds register; None when none is named.

    Once per module and process. Without `module`, an app this process has
    loaded (or is loading) already is the answer: the registry's lazy load
    must not add LEDGER_APP's module to the one --app named. ConfigError, naming the
    module, its source and the reason, when it cannot be imported.
    """
    if module is None and (_loaded or _loading):
        return next(iter(_loaded.values()), None)
    app = configured_app(module)
    if app is None:
        return None
    if app.module in _loaded or app.module in _loading:
        # _loading: the module is being imported and something in it asked for a
        # kind (the registry loads the app lazily): it gets what is registered so far.
        return _loaded.get(app.module, app)
    if not _MODULE.fullmatch(app.module):
        raise ConfigError(
            f"application module {app.module!r} (from {app.source}) is not a module name; "
            "name a Python module such as myapp.jobs (dotted, no path or .py)"
        )
    for folder in {str(app.root), str(Path.cwd())}:
        if folder not in sys.path:
            sys.path.insert(0, folder)
    _loading.add(app.module)
    try:
        importlib.import_module(app.module)
    except Exception as exc:  # the module is the user's code: any failure is theirs to read in one line
        log.debug("importing the application module failed", exc_info=True)
        reason = f"{type(exc).__name__}: {exc}" if not isinstance(exc, ImportError) else str(exc)
        raise ConfigError(
            f"cannot import application module {app.module!r} (from {app.source}): {' '.join(reason.split())}"
        ) from None
    finally:
        _loading.discard(app.module)
    _loaded[app.module] = app
    return app
