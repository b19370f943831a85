"""JSON from untrusted callers, checked before it is parsed: a size and a nesting depth.

A parser recurses per level of nesting, so ten kilobytes of `[` raise RecursionError deep inside it
(or, with pydantic, build a structure nobody asked for). The depth is measured on the raw bytes by
operations that run in C, in time linear in the size, without building anything: strings are
blanked out first, since a `[` inside a string opens nothing.
"""

from __future__ import annotations

import json
import re
from typing import Any

from cascade.errors import InvalidArgument

__all__ = ["DOCUMENT_LIMITS", "JsonTooLarge", "check_json_limits", "json_depth", "loads_bounded"]

# A JSON string: a quote, then runs of ordinary bytes and escape pairs, then a quote.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_OPENING = b"[{"
_CLOSING = b"]}"
_NOT_BRACKETS = bytes(b for b in range(256) if b not in _OPENING + _CLOSING)
# Brackets as signed steps (+1 opens, -1 closes: 0xff read as int8), whose running sum is the depth.
_STEPS = bytes.maketrans(_OPENING + _CLOSING, b"\x01\x01\xff\xff")


# For a JSON document a caller sends over gRPC (a training spec): (max_bytes, max_depth).
DOCUMENT_LIMITS = (1024 * 1024, 32)


class JsonTooLarge(InvalidArgument):
    """A body over the size or depth limit; permanent, so a consumer dead-letters it at once."""


def json_depth(raw: bytes) -> int:
    """The deepest nesting of arrays and objects in `raw`, brackets inside strings not counted.

    Valid JSON or not: an unterminated string's brackets count, which only errs on the safe side.
    """
    brackets = _STRING.sub(b'""', raw).translate(None, _NOT_BRACKETS)
    if not brackets:
        return 0
    import numpy as np  # only for bodies with brackets; the CLI never gets here

    depth = np.cumsum(np.frombuffer(brackets.translate(_STEPS), dtype=np.int8), dtype=np.int64)
    return int(depth.max())


def check_json_limits(raw: bytes, *, max_bytes: int, max_depth: int) -> None:
    """Raise JsonTooLarge if `raw` is over `max_bytes` or nests deeper than `max_depth`."""
    if len(raw) > max_bytes:
        raise JsonTooLarge(f"JSON body of {len(raw)} bytes is over the limit of {max_bytes}")
    # Cheap first: a body with few brackets cannot nest deeply.
    if raw.count(b"[") + raw.count(b"{") <= max_depth:
        return
    depth = json_depth(raw)
    if depth > max_depth:
        raise JsonTooLarge(f"JSON nested {depth} levels deep is over the limit of {max_depth}")


def loads_bounded(raw: bytes | str, *, max_bytes: int, max_depth: int) -> Any:
    """`json.loads` for untrusted input: limits first, and any failure as InvalidArgument."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    check_json_limits(data, max_bytes=max_bytes, max_depth=max_depth)
    try:
        return json.loads(data)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError alike
        raise InvalidArgument(f"not valid JSON: {exc}") from None
