"""Command-line values that benchmarks write into a service's config.yml as they are."""

from __future__ import annotations


def duration_setting(text: str) -> int | str:
    """A duration setting as config.yml takes it: ``0`` is the number 0 (any other duration needs
    its unit, ``25ms``), so a bare digit string becomes an int; the settings loader judges the rest."""
    return int(text) if text.isdigit() else text
