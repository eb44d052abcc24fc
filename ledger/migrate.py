"""Applying schema.sql: once per schema version, idempotent, under an advisory lock."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import psycopg
from psycopg.rows import DictRow

from .errors import ConfigError

__all__ = ["MigrateResult", "current_version", "migrate", "schema_path", "schema_sql", "schema_version"]

# Any constant works; it keeps two processes from applying the schema at once.
_LOCK_KEY = 0x1ED6E5


def schema_path() -> Path:
    """schema.sql inside an installed wheel, else at the top of the checkout."""
    packaged = Path(__file__).with_name("schema.sql")
    if packaged.is_file():
        return packaged
    return Path(__file__).resolve().parent.parent / "schema.sql"


@cache
def schema_sql() -> str:
    return schema_path().read_text(encoding="utf-8")


def schema_version() -> int:
    match = re.search(r"^-- schema-version: (\d+)$", schema_sql(), re.MULTILINE)
    if not match:
        raise ConfigError(f"{schema_path()} has no '-- schema-version: N' line")
    return int(match.group(1))


def current_version(conn: psycopg.Connection[DictRow]) -> int | None:
    row = conn.execute("SELECT to_regclass('ledger.schema_version') IS NOT NULL AS present").fetchone()
    if not row or not row["present"]:
        return None
    row = conn.execute("SELECT max(version) AS v FROM ledger.schema_version").fetchone()
    return None if row is None else row["v"]


class MigrateResult:
    def __init__(self, before: int | None, after: int) -> None:
        self.before = before
        self.after = after

    @property
    def applied(self) -> bool:
        return self.before != self.after

    def __str__(self) -> str:
        if not self.applied:
            return f"schema is at version {self.after}; nothing to do"
        return f"schema applied: version {self.before or 'none'} -> {self.after}"


def migrate(conn: psycopg.Connection[DictRow]) -> MigrateResult:
    """Bring the database to this code's schema version; a no-op when it is there already."""
    target = schema_version()
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", [_LOCK_KEY])
        before = current_version(conn)
        if before == target:
            return MigrateResult(before, target)
        if before is not None and before > target:
            raise ConfigError(
                f"the database's ledger schema is version {before}, newer than this code's {target}; "
                "upgrade ledger before running it against this database"
            )
        if before is not None:
            # Version 1 is the first: an older recorded version cannot exist yet.
            # When version 2 comes, its upgrade script goes here.
            raise ConfigError(f"no upgrade path from schema version {before} to {target}")
        conn.execute(schema_sql().encode())
        conn.execute("INSERT INTO ledger.schema_version (version) VALUES (%s)", [target])
    return MigrateResult(before, target)
