"""Applying schema.sql: once per schema version, idempotent, under an advisory lock.

A new database gets schema.sql whole. An older one loses every ledger
function, gets ledger/upgrades/<version>.sql for each version after its own
(the table changes, if any), then schema.sql from its `functions` section to
the end, which re-creates every function, trigger and the spare partition.
All in one transaction: an upgrade that fails leaves the database as it was.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import psycopg
from psycopg.rows import DictRow

from .errors import ConfigError

__all__ = [
    "MigrateResult",
    "current_version",
    "functions_sql",
    "migrate",
    "schema_path",
    "schema_sql",
    "schema_version",
    "upgrade_sql",
]

# Any constant works; it keeps two processes from applying the schema at once.
_LOCK_KEY = 0x1ED6E5
_FUNCTIONS_MARK = "-- ---------------------------------------------------------------- functions\n"
_UPGRADES = Path(__file__).with_name("upgrades")
# Before an upgrade: every function goes (CASCADE takes the triggers), so the
# upgrade scripts may change the tables their signatures name, and functions
# a version removed do not linger; functions_sql() then re-creates them all.
_DROP_FUNCTIONS = b"""
DO $$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN SELECT p.oid::regprocedure FROM pg_proc p WHERE p.pronamespace = 'ledger'::regnamespace LOOP
        EXECUTE format('DROP FUNCTION %s CASCADE', f);
    END LOOP;
END $$;
"""


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


def functions_sql() -> str:
    """schema.sql from its functions section to the end: what an upgrade re-runs."""
    text = schema_sql()
    at = text.find(_FUNCTIONS_MARK)
    if at < 0:
        raise ConfigError(f"{schema_path()} has no functions section line")
    return text[at:]


def upgrade_sql(version: int) -> str:
    """The table changes that bring a database from version - 1 to `version`."""
    path = _UPGRADES / f"{version}.sql"
    if not path.is_file():
        raise ConfigError(f"no upgrade path to schema version {version}: {path} is missing")
    return path.read_text(encoding="utf-8")


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
        if before is None:
            conn.execute(schema_sql().encode())
        else:
            conn.execute(_DROP_FUNCTIONS)
            for version in range(before + 1, target + 1):
                conn.execute(upgrade_sql(version).encode())
            conn.execute(functions_sql().encode())
        conn.execute("INSERT INTO ledger.schema_version (version) VALUES (%s)", [target])
    return MigrateResult(before, target)
