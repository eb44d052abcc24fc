"""The `ledger` command line: the typer app, its command groups (one module each) and `main`.

Commands live in modules by group: jobs.py (enqueue, show, jobs, failed,
replay, cancel, stats, wait; bulk.py holds the bulk replay and cancel they
run when given filters), admin.py (migrate, rebuild, prune, db), trust.py
(verify, roles), flow.py (queue pause/resume, queues, limit, limits),
schedules.py (schedules, schedules pause/resume). A new group
is a new module imported below; `ledger worker` comes from the worker
package through the `ledger.commands` entry point group.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import typer

from ..console import fail
from ..logs import setup_logging
from . import admin, flow, jobs, schedules, trust
from .base import app

__all__ = ["app", "main"]

_GROUPS = (admin, flow, jobs, schedules, trust)  # imported for their commands, which register on `app`

# click's base of usage errors, whichever click this typer uses (typer 0.29 ships its own copy).
_ClickException: type[Exception] = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def _plugins() -> None:
    """Add the subcommands other packages register (entry point group `ledger.commands`)."""
    from importlib.metadata import entry_points

    seen: set[str] = set()
    for ep in entry_points(group="ledger.commands"):
        # Once per name: an environment that had an older install of the
        # distribution under another name may list the same entry point twice.
        if ep.name not in seen:
            seen.add(ep.name)
            app.command(ep.name)(ep.load())


def main() -> None:
    """Run the CLI. Usage errors are one line on stderr too (exit 2), like every refusal."""
    _plugins()
    verbose = bool(os.environ.get("LEDGER_VERBOSE"))
    setup_logging(logging.INFO if verbose else logging.WARNING)
    if verbose:
        logging.getLogger("ledger").setLevel(logging.DEBUG)  # which database, and the like
    try:
        code = app(prog_name="ledger", standalone_mode=False)
    except _ClickException as exc:
        ctx: Any = getattr(exc, "ctx", None)
        exit_code: int = getattr(exc, "exit_code", 2)
        if type(exc).__name__ == "NoArgsIsHelpError":  # `ledger` alone: the help is the message
            typer.echo(exc.format_message())  # type: ignore[attr-defined]
            sys.exit(exit_code)
        message = " ".join(exc.format_message().split()).rstrip(".")  # type: ignore[attr-defined]
        where = f"; see `{ctx.command_path} --help`" if ctx is not None else ""
        fail(f"{message}{where}", exit_code)
    except typer.Abort:
        fail("aborted", 1)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
