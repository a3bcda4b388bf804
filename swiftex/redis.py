"""Redis access: one connection pool, prefixed keys, and a short circuit breaker.

Redis is a fast path here, never the only path. After a connection error the
breaker keeps callers away from Redis for a few seconds, so a dead Redis costs
one short timeout, not one per request; callers then fall back (in-process
rate limits, database constraints).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, TypeVar

from django.conf import settings
from django_redis import get_redis_connection
from redis import Redis
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)
T = TypeVar("T")

# Not only a lost connection: a replica after a failover (READONLY), maxmemory with
# noeviction (OOM) or a failing snapshot (MISCONF) also answer every write with an error,
# and callers must fall back then too rather than fail the request.
UNAVAILABLE_ERRORS = (RedisError, OSError)
BREAKER_OPEN_SECONDS = 3.0


class RedisUnavailable(Exception):
    pass


def key(*parts: object) -> str:
    """A namespaced key: `swx:<part>:<part>`. Every caller also sets a TTL."""
    return ":".join([settings.REDIS_KEY_PREFIX, *(str(p) for p in parts)])


class _Breaker:
    def __init__(self) -> None:
        self._open_until = 0.0
        self._lock = threading.Lock()

    def allow(self) -> bool:
        return time.monotonic() >= self._open_until

    def trip(self, exc: Exception) -> None:
        with self._lock:
            if self.allow():
                logger.warning("redis unavailable (%s: %s); falling back for %ss", type(exc).__name__, exc, BREAKER_OPEN_SECONDS)
            self._open_until = time.monotonic() + BREAKER_OPEN_SECONDS

    def reset(self) -> None:
        self._open_until = 0.0


breaker = _Breaker()


def client() -> Redis:
    """The shared client; raises RedisUnavailable while the breaker is open."""
    if not breaker.allow():
        raise RedisUnavailable("redis circuit open")
    return get_redis_connection("default")


UNAVAILABLE = object()  # what attempt() returns when Redis could not be used


def attempt(operation: Callable[[], T]) -> T | object:
    """`operation()`'s result, or UNAVAILABLE when Redis is down or answered an error (the
    breaker then stays open a few seconds): the caller falls back, and never raises for Redis."""
    try:
        return operation()
    except RedisUnavailable:
        return UNAVAILABLE
    except UNAVAILABLE_ERRORS as exc:
        breaker.trip(exc)
        return UNAVAILABLE


def ping() -> bool:
    try:
        return bool(get_redis_connection("default").ping())
    except UNAVAILABLE_ERRORS:
        return False


def available() -> bool:
    """Whether Redis answers now, through the breaker: while it is open the answer is no
    without a call, and a failed ping opens it (this process's callers fall back too)."""
    try:
        return bool(client().ping())
    except RedisUnavailable:
        return False
    except UNAVAILABLE_ERRORS as exc:
        breaker.trip(exc)
        return False
