"""Numbers as users type them (comma-separated integer lists) and read them (table cells), and their units."""

from __future__ import annotations

import math

from visionnode.components.common.errors import ConfigError

MIB = 1024 * 1024


def parse_int_list(text: str, option: str, example: str) -> list[int]:
    """'1,2,4' -> [1, 2, 4]; a ConfigError naming `option` for anything else, or for an empty list."""
    try:
        values = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{option} '{text}' is not a comma-separated list of integers",
                          f"e.g. {example}") from None
    if not values:
        raise ConfigError(f"{option} names no value", f"e.g. {example}")
    return values


def format_number(value: float | None, digits: int = 1) -> str:
    """A table cell: thousands separators and fixed decimals; "-" for a missing or NaN value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"
