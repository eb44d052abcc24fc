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

__all__ = ["MAX_BYTES", "MAX_DEPTH", "check_json"]

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


def check_json(value: Any, path: str = "args", *, walk: bool = True) -> None:
    """InvalidArguments naming the field if `value` cannot be stored as jsonb exactly as given.

    walk=False checks only the size (for a value already walked).
    """
    if walk:
        _walk(value, path, 1)
    size = len(json.dumps(value, ensure_ascii=False).encode("utf-8"))
    if size > MAX_BYTES:
        raise InvalidArguments(f"{path}: {size:,} bytes of JSON; the limit is {MAX_BYTES:,}", [path])
