"""How every benchmark prints its result: one JSON object for machines, aligned lines for people."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


def print_result(result: Mapping[str, Any], as_json: bool, width: int) -> None:
    """``result`` as one JSON line (``--json``), else one ``key: value`` line per entry, keys
    right-aligned to ``width``."""
    if as_json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>{width}}: {value}")
