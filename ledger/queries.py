"""SQL of the package, kept in .sql files and loaded by `-- name: x` headers."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

__all__ = ["query"]

_SQL_DIR = Path(__file__).with_name("sql")
_HEADER = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


@cache
def _load(filename: str) -> dict[str, str]:
    text = (_SQL_DIR / filename).read_text(encoding="utf-8")
    parts = _HEADER.split(text)
    # parts = [preamble, name1, body1, name2, body2, ...]
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}


def query(name: str, filename: str = "queries.sql") -> str:
    """The SQL text registered under `name`; KeyError names the missing query."""
    queries = _load(filename)
    if name not in queries:
        raise KeyError(f"no query named {name!r} in {filename}")
    return queries[name]
