"""`ledger` commands of trust: verify the history's hash chains, and give roles their access."""

from __future__ import annotations

import typer

from ..console import fail
from .base import app, friendly, store

__all__ = ["roles", "verify"]


@app.command()
@friendly
def verify() -> None:
    """Recompute every job's hash chain: report each history changed, cut or extended behind the ledger's back."""
    with store() as s:
        problems = s.events_verify()
    for p in problems:
        where = f"job {p['job_id']}" + (f" v{p['version']}" if p["version"] is not None else "")
        typer.echo(f"{where}: {p['problem']}")
    if problems:
        jobs = len({p["job_id"] for p in problems})
        fail(f"{len(problems)} problem(s) in the history of {jobs} job(s); see docs/guarantees.md")
    typer.echo("every history matches its hash chain")


@app.command()
@friendly
def roles(
    app_role: list[str] = typer.Option([], "--app", help="Role of workers, web and clients (repeatable)."),
    readonly: list[str] = typer.Option([], "--readonly", help="Role of dashboards and reports (repeatable)."),
) -> None:
    """Give roles their access to the ledger; run as its owner (creating a role needs CREATEROLE).

    An --app role calls the ledger's functions and reads its views; a
    --readonly role only reads. Neither holds any table privilege, so neither
    can change history except through the functions. A role that does not
    exist is created (LOGIN, no password: set one with ALTER ROLE).
    """
    if not app_role and not readonly:
        fail("name at least one role: --app NAME and/or --readonly NAME", 2)
    with store() as s:
        for name, access in [*((n, "app") for n in app_role), *((n, "readonly") for n in readonly)]:
            created = s.roles_grant(name, access)
            typer.echo(f"role {name}: {'created, ' if created else ''}{access} access")
