"""A tiny in-process cache with a time to live, for hot lookups of rarely changing rows.

Organizations are read on every greeting and every status webhook; a few
seconds of staleness after an admin edit is the price of not querying them
thousands of times a minute.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Generic, Hashable, TypeVar

V = TypeVar("V")

_registry: list[TTLCache] = []


class TTLCache(Generic[V]):
    def __init__(self, ttl_seconds: Callable[[], float], max_entries: int = 10_000, *, keep_none: bool = False) -> None:
        self._ttl = ttl_seconds  # read at each fill, so tests and settings overrides apply
        self._max = max_entries
        self._keep_none = keep_none
        self._data: dict[Hashable, tuple[float, V]] = {}
        self._lock = threading.Lock()
        _registry.append(self)

    def get(self, key: Hashable, load: Callable[[], V]) -> V:
        """The cached value, or `load()`'s. A None is not kept unless `keep_none`: a row
        created a moment ago (a newly configured tenant) must not stay invisible for the TTL."""
        now = time.monotonic()
        hit = self._data.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        value = load()
        if value is None and not self._keep_none:
            return value
        with self._lock:
            if len(self._data) >= self._max:
                self._data.clear()
            self._data[key] = (now + self._ttl(), value)
        return value

    def forget(self, key: Hashable) -> None:
        with self._lock:
            self._data.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


def clear_all() -> None:
    for cache in _registry:
        cache.clear()
