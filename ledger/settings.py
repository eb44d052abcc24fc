"""Settings from the environment: DATABASE_URL first, then LEDGER_* variables."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import AliasChoices, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from .errors import ConfigError

__all__ = ["Settings", "default_data_dir", "get_settings", "load_settings"]

S = TypeVar("S", bound=BaseSettings)


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


def _variable(cls: type[BaseSettings], loc: tuple[int | str, ...]) -> str:
    """The environment variable a pydantic-settings error is about: LEDGER_ENV for `env`."""
    name = str(loc[0]) if loc else ""
    if name in cls.model_fields:
        prefix = cls.model_config.get("env_prefix") or ""
        return f"{prefix}{name}".upper()
    return name.upper()  # an alias (DATABASE_URL) is the variable itself


def load_settings(cls: type[S]) -> S:
    """`cls()` read from the environment; ConfigError naming the variable, its value and what is allowed.

    pydantic's own error is a screenful; a person who typed LEDGER_ENV=prod needs one line.
    """
    try:
        return cls()
    except ValidationError as exc:
        problems = [
            f"{_variable(cls, err['loc'])}={err['input']!r}: {err['msg']}"
            if isinstance(err.get("input"), str)
            else f"{_variable(cls, err['loc'])}: {err['msg']}"
            for err in exc.errors()
        ]
        raise ConfigError("invalid setting " + "; ".join(problems)) from None


@cache
def get_settings() -> Settings:
    return load_settings(Settings)
