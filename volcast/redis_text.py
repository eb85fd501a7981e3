"""Text to and from redis-py. Its replies are bytes (the clients do not decode responses, so that
bar fields and payloads are not decoded twice), and names, ids and fields are compared as str;
the field mappings it takes are typed so that a ``dict[str, str]`` needs a cast.

Shared by ``forecaster/`` and ``streamer/`` (both import ``volcast/``, never each other).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast


def as_text(value: Any) -> str:
    """A reply value (bytes, or already str) as str; anything else by ``str()``."""
    return value.decode() if isinstance(value, bytes) else str(value)


def text_fields(raw: Mapping[Any, Any] | None) -> dict[str, str]:
    """A hash or stream entry's fields (HGETALL, XRANGE) as a ``str -> str`` dict."""
    return {as_text(k): as_text(v) for k, v in (raw or {}).items()}


def field_mapping(fields: Mapping[str, str]) -> dict[Any, Any]:
    """``fields`` as HSET's ``mapping``: redis-py types it with an invariant key type that a
    ``dict[str, str]`` never matches."""
    return cast(dict[Any, Any], fields)
