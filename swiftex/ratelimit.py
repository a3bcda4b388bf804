"""Token buckets: shared across processes in Redis, per process when Redis is down.

The Redis bucket is one Lua script (atomic, clocked by the Redis server so all
machines agree). If Redis cannot be reached the same bucket runs in process
memory: each process then admits up to the full rate on its own, which is
looser but keeps ingest working rather than failing closed on a cache outage.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

from swiftex import redis as swx_redis

# KEYS[1] bucket hash; ARGV: rate (tokens/s), capacity, cost, ttl seconds.
# Returns {allowed (0/1), seconds to wait for `cost` tokens (as a string)}.
_TOKEN_BUCKET_LUA = """
local rate = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts', 'paused_until')
local paused_until = tonumber(state[3]) or 0
if now < paused_until then
  return {0, tostring(paused_until - now)}
end
local tokens = tonumber(state[1]) or capacity
local ts = tonumber(state[2]) or now
tokens = math.min(capacity, tokens + math.max(0, now - ts) * rate)
local allowed = 0
local wait = 0
if tokens >= cost then
  tokens = tokens - cost
  allowed = 1
else
  wait = (cost - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tokens, 'ts', now)
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]))
return {allowed, tostring(wait)}
"""


# KEYS[1] bucket hash; ARGV: seconds. Empties the bucket until then (a later pause wins).
_PAUSE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local until_ = now + tonumber(ARGV[1])
local current = tonumber(redis.call('HGET', KEYS[1], 'paused_until')) or 0
if until_ > current then
  redis.call('HSET', KEYS[1], 'paused_until', until_, 'tokens', 0, 'ts', until_)
end
if redis.call('TTL', KEYS[1]) < tonumber(ARGV[1]) + 60 then
  redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[1])) + 60)
end
return 1
"""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after: float  # seconds until the request could succeed; 0 when allowed
    degraded: bool = False  # decided in process memory because Redis was down

    @property
    def retry_after_header(self) -> str:
        return str(max(1, math.ceil(self.retry_after)))


class _LocalBuckets:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state: dict[str, tuple[float, float]] = {}
        self._paused: dict[str, float] = {}

    def pause(self, name: str, seconds: float) -> None:
        with self._lock:
            until = time.monotonic() + seconds
            self._paused[name] = max(until, self._paused.get(name, 0.0))

    def take(self, name: str, rate: float, capacity: float, cost: float) -> Decision:
        now = time.monotonic()
        with self._lock:
            paused = self._paused.get(name, 0.0) - now
            if paused > 0:
                return Decision(False, paused, degraded=True)
            tokens, ts = self._state.get(name, (capacity, now))
            tokens = min(capacity, tokens + (now - ts) * rate)
            if tokens >= cost:
                self._state[name] = (tokens - cost, now)
                return Decision(True, 0.0, degraded=True)
            self._state[name] = (tokens, now)
            return Decision(False, (cost - tokens) / rate, degraded=True)


_local = _LocalBuckets()
_scripts: dict[tuple[int, str], object] = {}


def _script(source: str = _TOKEN_BUCKET_LUA):
    """A Lua script bound to the current client (EVALSHA, loaded on first use)."""
    redis = swx_redis.client()
    script = _scripts.get((id(redis), source))
    if script is None:
        script = _scripts[(id(redis), source)] = redis.register_script(source)
    return script


def take(name: str, *, rate_per_second: float, capacity: float, cost: float = 1) -> Decision:
    """Take `cost` tokens from bucket `name`; never raises for Redis trouble."""
    if rate_per_second <= 0:  # a bucket that never refills (a rate saved as 0 before validation refused it)
        return Decision(False, 60.0)
    if cost > capacity:
        # Could never be satisfied: report the wait for a full bucket instead of looping forever.
        return Decision(False, capacity / rate_per_second)
    ttl = max(1, math.ceil(capacity / rate_per_second) * 2)
    answer = swx_redis.attempt(lambda: _script()(keys=[swx_redis.key("bucket", name)], args=[rate_per_second, capacity, cost, ttl]))
    if answer is swx_redis.UNAVAILABLE:
        return _local.take(name, rate_per_second, capacity, cost)
    allowed, wait = answer
    return Decision(bool(int(allowed)), float(wait))


def pause(name: str, seconds: float) -> None:
    """Admit nothing from bucket `name` for `seconds` (a provider's Retry-After), on every machine."""
    if swx_redis.attempt(lambda: _script(_PAUSE_LUA)(keys=[swx_redis.key("bucket", name)], args=[seconds])) is swx_redis.UNAVAILABLE:
        _local.pause(name, seconds)
