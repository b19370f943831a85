"""What a dataset, model or alias may be called: safe as a path segment, a metric label, a Kafka key."""

from __future__ import annotations

import re

from cascade.errors import InvalidArgument

__all__ = ["ALIAS_PATTERN", "NAME_PATTERN", "check_name"]

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
ALIAS_PATTERN = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")


def check_name(kind: str, name: str, pattern: re.Pattern[str] = NAME_PATTERN) -> str:
    if not pattern.fullmatch(name):
        raise InvalidArgument(f"invalid {kind} name {name!r}: must match {pattern.pattern}")
    return name
