"""Durations written the way people write them in config.yml: ``250ms``, ``2s``, ``1m``, ``4h``, ``7d``."""

from __future__ import annotations

import re

_UNITS_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
_PATTERN = re.compile(r"^\s*(\d+)\s*(ms|s|m|h|d|w)\s*$")


def parse_duration_ms(text: str | int) -> int:
    """Return the duration in whole milliseconds.

    A bare integer is taken as milliseconds, because that is what every field stores.
    Raises ValueError with the accepted forms, so a config error says what to write instead.
    """
    if isinstance(text, bool):
        raise ValueError("expected a duration such as '500ms', '1s', '1m', '1h' or '1d'")
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"duration must not be negative, got {text}")
        return text
    match = _PATTERN.match(text)
    if match is None:
        raise ValueError(
            f"cannot read duration {text!r}: expected a whole number and a unit, "
            "such as '500ms', '1s', '1m', '1h' or '1d'"
        )
    return int(match.group(1)) * _UNITS_MS[match.group(2)]


def format_duration_ms(ms: int) -> str:
    """The shortest exact spelling: 60000 -> '1m', 1500 -> '1500ms'."""
    for unit in ("w", "d", "h", "m", "s"):
        size = _UNITS_MS[unit]
        if ms and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"
