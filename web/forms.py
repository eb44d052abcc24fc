"""Dashboard form posts: the one way their bodies are read, and the only places their redirects may lead."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn
from urllib.parse import unquote, urlencode, urlsplit

import falcon

from ledger.errors import InvalidArguments, LedgerError

__all__ = ["FORM", "form_post", "local_path", "read_form"]

FORM = "application/x-www-form-urlencoded"


def read_form(req: falcon.Request) -> dict[str, str]:
    """The urlencoded body of a form post, one text per field; read once per request.

    Another media type (JSON, multipart) is 415: the dashboard's forms send
    nothing else, and falcon would hand back a list or a multipart reader.
    A field sent twice is refused naming it, rather than one copy picked.
    """
    if "form" in req.context:
        form: dict[str, str] = req.context.form
        return form
    media_type = (req.content_type or "").split(";", 1)[0].strip().lower()
    if not req.content_length and not media_type:
        parsed: Any = {}
    elif media_type != FORM:
        raise falcon.HTTPUnsupportedMediaType(
            title="not a form", description=f"send the form as {FORM}, the way the dashboard's pages do"
        )
    else:
        parsed = req.get_media(default_when_empty={})
    fields: dict[str, str] = {}
    for name, value in parsed.items():
        if not isinstance(value, str):  # falcon gives a list for a field sent twice
            raise InvalidArguments(f"{name}: sent more than once; send each field once", [name])
        fields[name] = value
    req.context.form = fields
    return fields


def local_path(value: Any, fallback: str) -> str:
    """`value` when it is a path on this site, else `fallback`: the guard of every `next` redirect.

    A browser reads `/\\evil.example` and `//evil.example` as another host,
    drops tabs and newlines before reading (`/\\t/evil.example`), and some
    proxies decode `%5c` to a backslash. So it must be printable ASCII
    without spaces (which also keeps the Location header clean), start with
    exactly one `/` and hold no backslash or control character, both as sent
    and once percent-decoded, and name no scheme or host.
    """
    if not isinstance(value, str) or not 1 <= len(value) <= 2000:
        return fallback
    if any(not " " < c < "\x7f" for c in value):
        return fallback
    for text in (value, unquote(value)):
        if not text.startswith("/") or text.startswith("//") or "\\" in text:
            return fallback
        if any(c < " " or c == "\x7f" for c in text):
            return fallback
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return fallback
    return value


def form_post(req: falcon.Request, fallback: str, act: Callable[[dict[str, str]], str]) -> NoReturn:
    """A dashboard form post: `act` does it and says what it did (a notice) or refuses (a
    LedgerError, shown as the error); either way, 303 back to the form's `next` page (local
    only) or `fallback`."""
    form = read_form(req)
    try:
        message = {"notice": act(form)}
    except LedgerError as exc:
        message = {"error": str(exc)}
    back = local_path(form.get("next"), fallback)
    raise falcon.HTTPSeeOther(back + ("&" if "?" in back else "?") + urlencode(message))
