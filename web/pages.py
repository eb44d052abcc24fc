"""What every dashboard page shares: the templates, their filters, and the render with CSRF token and notices."""

from __future__ import annotations

import json
from typing import Any

import falcon
from jinja2 import Environment, PackageLoader, select_autoescape

from .security import csrf_token

__all__ = ["Page", "env"]

env = Environment(loader=PackageLoader("ledger.web", "templates"), autoescape=select_autoescape(default=True))
env.filters["ms"] = lambda v: "" if v is None else (f"{v:.0f} ms" if v < 10_000 else f"{v / 1000:.1f} s")
env.filters["when"] = lambda d: "" if d is None else d.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
env.filters["jsonpretty"] = lambda v: json.dumps(v, indent=2, sort_keys=True)


class Page:
    area = "dashboard"

    def render(self, req: falcon.Request, resp: falcon.Response, template: str, **ctx: Any) -> None:
        resp.content_type = falcon.MEDIA_HTML
        resp.text = env.get_template(template).render(
            csrf=csrf_token(req, resp),
            signed_in=req.context.get("signed_in", False),
            notice=req.get_param("notice"),
            error=req.get_param("error"),
            path=req.path,
            **ctx,
        )
