"""What every command-line entry point shares: a refusal is one line on stderr and a non-zero exit."""

from __future__ import annotations

import sys
from typing import NoReturn

__all__ = ["fail"]


def fail(message: str, code: int = 1) -> NoReturn:
    """Print `error: message` on stderr and exit with `code` (never a traceback)."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(code)
