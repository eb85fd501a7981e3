"""Redis errors that retrying cannot cure, told apart from an outage, with a message naming the key.

An outage (connection refused, timeout) passes: services retry it with backoff. An answer such
as ``WRONGTYPE`` (a key holding another type than the one volcast writes there) or ``Invalid
stream ID`` does not: retrying it as if Redis were down loops for ever while the log says
"Redis unavailable". Those are raised as ``RedisDataProblem``, which names the key and what to do.
"""

from __future__ import annotations

from typing import TypeVar

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from volcast.connections import ConnectionProblem

TRANSIENT: tuple[type[BaseException], ...] = (RedisConnectionError, RedisTimeoutError, OSError)
"""Errors of a Redis that cannot be reached right now: retry later, keep the data."""


_E = TypeVar("_E", bound=BaseException)


class RedisDataProblem(ConnectionProblem):
    """Redis refuses what a service needs to do with one of its keys; the CLI prints the message
    (exit code 1). Not an outage: retrying would fail the same way."""


def wrong_type(exc: BaseException) -> bool:
    return isinstance(exc, ResponseError) and "WRONGTYPE" in str(exc)  # also inside a pipeline's message


def key_problem(key: str, exc: BaseException, *, expected: str) -> RedisDataProblem:
    """The one message for a key Redis refuses: what it holds, what volcast needs, what to do."""
    if wrong_type(exc):
        return RedisDataProblem(
            f"Redis key {key!r} holds another type than the {expected} volcast keeps there; "
            f"delete it (redis-cli DEL '{key}') or use another redis.key_prefix")
    return RedisDataProblem(f"Redis refused an operation on {key!r} ({exc}); check that key "
                            f"(it should be a {expected}) or use another redis.key_prefix")


def first_of(group: BaseExceptionGroup[BaseException], kind: type[_E]) -> _E | None:
    """The first ``kind`` in a (nested) exception group: a service's TaskGroup wraps what its
    tasks raise."""
    for exc in group.exceptions:
        if isinstance(exc, kind):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            found = first_of(exc, kind)
            if found is not None:
                return found
    return None
