"""The shop's job kinds: a receipt mailed for every order."""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import BaseModel

from ledger.kinds import JobContext, builtin_registry

__all__ = ["Mailer", "Receipt", "mailer", "registry"]

# The shop's own registry (a module may also use ledger.kinds.default_registry).
registry = builtin_registry()


@dataclass
class Mailer:
    """Stands in for a mail service: what it was asked to send."""

    sent: list[tuple[str, str]] = field(default_factory=list)

    def send(self, to: str, subject: str) -> None:
        if "@" not in to:
            raise ValueError(f"cannot mail {to!r}: not an address")
        self.sent.append((to, subject))


mailer = Mailer()


class Receipt(BaseModel):
    order_id: int
    email: str


@registry.kind("send_receipt", args=Receipt, queue="mail", max_attempts=5)
def send_receipt(ctx: JobContext[Receipt]) -> None:
    mailer.send(ctx.args.email, f"Your order {ctx.args.order_id}")
