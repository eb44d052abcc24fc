"""The job kind of bench/lost_claim.py: a body that takes `ms` milliseconds."""

from __future__ import annotations

import time

from pydantic import BaseModel

from ledger.kinds import JobContext, default_registry


class Blip(BaseModel):
    ms: float


@default_registry.kind("blip", args=Blip, max_attempts=5)
def blip(ctx: JobContext[Blip]) -> None:
    time.sleep(ctx.args.ms / 1000)
