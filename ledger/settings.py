"""Settings from the environment: DATABASE_URL first, then LEDGER_* variables."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "default_data_dir", "get_settings"]


def default_data_dir() -> Path:
    """`.ledger/` in the project checkout when running from one, else in the current folder."""
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / "schema.sql").is_file():
        return checkout / ".ledger"
    return Path.cwd() / ".ledger"


class Settings(BaseSettings):
    """Process-wide configuration. Every field can be set from the environment."""

    model_config = SettingsConfigDict(env_prefix="LEDGER_", extra="ignore")

    database_url: str | None = Field(default=None, validation_alias=AliasChoices("DATABASE_URL", "LEDGER_DATABASE_URL"))
    """Where the ledger lives. Unset in development: an embedded server under data_dir."""
    listen_url: str | None = None
    """LEDGER_LISTEN_URL: where the worker LISTENs, when DATABASE_URL goes through a transaction-pooling
    proxy that cannot hold a listening session (PgBouncer's pool_mode = transaction). Unset: DATABASE_URL,
    or no LISTEN at all (the worker polls) when a pooler answers there."""
    prepare: Literal["auto", "on", "off"] = "auto"
    """LEDGER_PREPARE: server-side prepared statements. auto: on for a direct connection, off through a
    pooler (ledger/db.py tells them apart); off for a transaction-pooling proxy it cannot tell; on for
    PgBouncer >= 1.21 with max_prepared_statements set."""
    env: Literal["development", "production"] = "development"
    """LEDGER_ENV=production makes DATABASE_URL mandatory (no embedded server)."""
    data_dir: Path = Field(default_factory=default_data_dir)
    """LEDGER_DATA_DIR: where the embedded server keeps its data (git-ignored)."""

    @property
    def production(self) -> bool:
        return self.env == "production"


@cache
def get_settings() -> Settings:
    return Settings()
