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
from typing import Any

import psycopg

from .errors import ConfigError
from .store import Store

__all__ = [
    "DROP_FUNCTIONS",
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
# Before an upgrade: every view and function goes (CASCADE takes the
# triggers), so the upgrade scripts may change the tables they name, and
# objects a version removed do not linger; functions_sql() then re-creates
# them all, and the privileges with them.
DROP_FUNCTIONS = """
DO $$
DECLARE
    name text;  -- names as text, taken up front: a CASCADE may drop a later one first
BEGIN
    FOR name IN SELECT c.oid::regclass::text FROM pg_class c
                WHERE c.relnamespace = 'ledger'::regnamespace AND c.relkind = 'v' LOOP
        EXECUTE format('DROP VIEW IF EXISTS %s CASCADE', name);
    END LOOP;
    FOR name IN SELECT p.oid::regprocedure::text FROM pg_proc p WHERE p.pronamespace = 'ledger'::regnamespace LOOP
        EXECUTE format('DROP FUNCTION IF EXISTS %s CASCADE', name);
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


def current_version(conn: psycopg.Connection[Any]) -> int | None:
    """The ledger schema's version in the database; None when it has none."""
    return Store(conn).schema_version()


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


def migrate(conn: psycopg.Connection[Any]) -> MigrateResult:
    """Bring the database to this code's schema version; a no-op when it is there already."""
    target = schema_version()
    store = Store(conn)
    with conn.transaction():
        store.migrate_lock(_LOCK_KEY)
        before = store.schema_version()
        if before == target:
            return MigrateResult(before, target)
        if before is not None and before > target:
            raise ConfigError(
                f"the database's ledger schema is version {before}, newer than this code's {target}; "
                "upgrade ledger before running it against this database"
            )
        if before is None:
            store.run_script(schema_sql())
        else:
            store.run_script(DROP_FUNCTIONS)
            for version in range(before + 1, target + 1):
                store.run_script(upgrade_sql(version))
            store.run_script(functions_sql())
        store.schema_version_record(target)
    return MigrateResult(before, target)
