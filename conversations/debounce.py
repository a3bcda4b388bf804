"""Trailing debounce of a contact's messages, shared by every process through Redis.

Each inbound message id is appended to its conversation's list, and the
conversation's deadline moves to "quiet window after this message", capped at
"max wait after the first unanswered one". A flush task is scheduled for the
deadline; whichever worker runs it when the deadline has passed takes the
whole list in one atomic step, so "Hi" / "looking for a home loan" / "budget
300k" become one burst, one model call and one reply, whichever web process
received each message and whichever worker flushes. A flush that comes early
(the deadline moved) learns how long to wait and is scheduled again.

Both scripts are clocked by the Redis server (`TIME`), so machines agree.
Redis is a fast path: when it is down, `push` and `take` raise
`RedisUnavailable` and the caller falls back to PostgreSQL, where every
inbound message is stored and claimed (`answered_by`) before it is answered.
"""

from __future__ import annotations

from dataclasses import dataclass

from swiftex import redis as swx_redis

# KEYS: list of message ids, hash {first, deadline}. ARGV: message id, quiet ms, max wait ms, ttl s.
# Returns the deadline (ms since the epoch, Redis clock) and Redis' now.
_PUSH = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('RPUSH', KEYS[1], ARGV[1])
local first = tonumber(redis.call('HGET', KEYS[2], 'first'))
if not first then
  first = now
  redis.call('HSET', KEYS[2], 'first', first)
end
local deadline = math.min(now + tonumber(ARGV[2]), first + tonumber(ARGV[3]))
local current = tonumber(redis.call('HGET', KEYS[2], 'deadline')) or 0
if deadline < current then deadline = current end
redis.call('HSET', KEYS[2], 'deadline', deadline)
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]))
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[4]))
return {deadline, now}
"""

# KEYS as above. Returns {ms still to wait} before the deadline, else {0, id, id, ...}
# with the burst taken (list and deadline gone: the next message starts a new burst).
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local deadline = tonumber(redis.call('HGET', KEYS[2], 'deadline'))
if deadline and now < deadline then
  return {deadline - now}
end
local ids = redis.call('LRANGE', KEYS[1], 0, -1)
redis.call('DEL', KEYS[1], KEYS[2])
local out = {0}
for i, id in ipairs(ids) do out[i + 1] = id end
return out
"""

# Abandoned state (a flush that never ran) disappears; the PostgreSQL sweep answers it.
STATE_TTL_SECONDS = 3600


@dataclass(frozen=True)
class Taken:
    wait_seconds: float  # > 0: not due yet, nothing taken
    message_ids: tuple[int, ...] = ()


def _keys(conversation_id: int) -> list[str]:
    # One hash tag per conversation: both keys live on one Redis Cluster slot.
    return [swx_redis.key("debounce", f"{{{conversation_id}}}", "ids"), swx_redis.key("debounce", f"{{{conversation_id}}}", "at")]


def push(conversation_id: int, message_id: int, *, quiet_seconds: float, max_wait_seconds: float) -> float:
    """Add a message to its conversation's burst; seconds until the burst is due."""
    deadline, now = _run(_PUSH, _keys(conversation_id), message_id, int(quiet_seconds * 1000), int(max_wait_seconds * 1000), STATE_TTL_SECONDS)
    return max(0.0, (int(deadline) - int(now)) / 1000)


def take(conversation_id: int) -> Taken:
    """The whole burst if it is due (and nobody took it first), else how long to wait."""
    result = _run(_TAKE, _keys(conversation_id))
    if int(result[0]) > 0:
        return Taken(wait_seconds=int(result[0]) / 1000)
    return Taken(wait_seconds=0.0, message_ids=tuple(int(value) for value in result[1:]))


def forget(conversation_id: int) -> None:
    """Drop a conversation's pending burst (its messages are answered from PostgreSQL)."""
    swx_redis.attempt(lambda: swx_redis.client().delete(*_keys(conversation_id)))


def _run(script: str, keys: list[str], *args):
    try:
        return swx_redis.client().eval(script, len(keys), *keys, *args)
    except swx_redis.RedisUnavailable:
        raise
    except swx_redis.UNAVAILABLE_ERRORS as exc:
        swx_redis.breaker.trip(exc)
        raise swx_redis.RedisUnavailable(str(exc)) from exc
