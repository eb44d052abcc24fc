"""What PostgreSQL's jsonb can store verbatim, checked before anything is written.

jsonb refuses a NUL character (\\u0000) and lone UTF-16 surrogates, in keys
as in values; NaN and Infinity are not JSON (and pydantic would quietly turn
them into null, which is not storing them verbatim); very deep or very large
documents are refused with a limit a person can act on.
"""

from __future__ import annotations

import json
import math
from typing import Any

from .errors import InvalidArguments

__all__ = ["MAX_BYTES", "MAX_DEPTH", "check_json", "dump_json"]

MAX_DEPTH = 64
MAX_BYTES = 1024 * 1024


def _problem_with_text(text: str) -> str | None:
    if "\x00" in text:
        return "contains a NUL character (\\u0000), which PostgreSQL cannot store"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "contains an unpaired UTF-16 surrogate, which is not valid Unicode"
    return None


def _walk(value: Any, path: str, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise InvalidArguments(f"{path}: nested deeper than {MAX_DEPTH} levels", [path])
    if isinstance(value, str):
        problem = _problem_with_text(value)
        if problem:
            raise InvalidArguments(f"{path}: {problem}", [path])
    elif isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            raise InvalidArguments(f"{path}: {value} is not a JSON number", [path])
    elif isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}"
            problem = _problem_with_text(str(key))
            if problem:
                raise InvalidArguments(f"{path}: a key {problem}", [path])
            _walk(item, where, depth + 1)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _walk(item, f"{path}[{i}]", depth + 1)


# allow_nan=False raises on NaN/Infinity; ensure_ascii=False keeps the text
# short and lets .encode("utf-8") find lone surrogates.
_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
# Its C encoder, built once: JSONEncoder.encode builds one per call, which was
# most of the cost of dumping a small object (0.95 against 0.16 us for {}).
# No circular-reference markers: a cycle ends in RecursionError, walked below.
_make_c_encoder = getattr(json.encoder, "c_make_encoder", None)  # None off CPython
_C_ENCODER = (
    _make_c_encoder(None, _ENCODER.default, json.encoder.encode_basestring, None, ":", ",", False, False, False)
    if _make_c_encoder is not None
    else None
)


def _encode(value: Any) -> str:
    if _C_ENCODER is None:  # not CPython
        return _ENCODER.encode(value)
    return "".join(_C_ENCODER(value, 0))


def dump_json(value: Any, path: str = "args") -> str:
    """`value` as compact JSON text, or InvalidArguments naming the field if jsonb cannot store it as given.

    One C-speed dump and three scans of its text decide the common case; only
    a value they flag (a NaN, a NUL, a surrogate, or more brackets than the
    depth limit, which strings can also hold) is walked in Python, to name the
    field or to clear it.
    """
    try:
        text = _encode(value)
    except (ValueError, RecursionError):  # NaN, Infinity or a cycle: the walk names it
        _walk(value, path, 1)
        raise InvalidArguments(f"{path}: not representable as JSON", [path]) from None
    flagged = "\\u0000" in text or text.count("{") + text.count("[") > MAX_DEPTH
    try:
        size = len(text) if text.isascii() else len(text.encode("utf-8"))
    except UnicodeEncodeError:
        flagged, size = True, len(text)
    if flagged:
        _walk(value, path, 1)
    if size > MAX_BYTES:
        raise InvalidArguments(f"{path}: {size:,} bytes of JSON; the limit is {MAX_BYTES:,}", [path])
    return text


def check_json(value: Any, path: str = "args") -> None:
    """InvalidArguments naming the field if `value` cannot be stored as jsonb exactly as given.

    Values that are not JSON types (a datetime, say) pass the checks of their
    JSON neighbours here and are left to the model that validates them.
    """
    try:
        dump_json(value, path)
    except TypeError:
        _walk(value, path, 1)
