"""Sign-in throttling: failed sign-ins counted per account and per address.

After LOGIN_FAILURES_PER_ACCOUNT failed sign-ins for one username, or
LOGIN_FAILURES_PER_ADDRESS from one address (IPv6: its /64), within
LOGIN_LOCKOUT_SECONDS of the first, sign-in for that account or from that
address is refused until the window ends, without checking the password: a
guesser learns nothing more, right guess or wrong. A successful sign-in
clears its account's count. The per-address limit is higher, so an office
behind one address is not locked out by one person's typos, and a guesser
spraying many accounts from one address is still stopped. Addresses are
counted only when they are the client's: a public address, or any address
once WEBFORM_TRUSTED_PROXIES says how to find the client behind a proxy.

Counts live in Redis (shared by every web process); while Redis is down
each process counts on its own, so the limits loosen but still hold.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import threading
import time

from django.conf import settings

from swiftex import redis as swx_redis
from swiftex.client_address import bucket_of


def digest(name: str) -> str:
    """A username or e-mail address as a key part: any case, and never in clear in Redis."""
    return hashlib.sha256(name.strip().casefold().encode()).hexdigest()[:32]


def _keys(username: str, ip: str) -> list[tuple[str, int]]:
    keys = [(swx_redis.key("login-failures", "account", digest(username)), settings.LOGIN_FAILURES_PER_ACCOUNT)]
    if _counts_addresses(ip):
        keys.append((swx_redis.key("login-failures", "address", bucket_of(ip)), settings.LOGIN_FAILURES_PER_ADDRESS))
    return keys


def _counts_addresses(ip: str) -> bool:
    """Whether `ip` is the client's own. A private or loopback address with no trusted proxy
    declared is most likely a load balancer's: everyone's sign-ins would come from it, and 50
    wrong passwords from anyone would lock every rep out. Then only accounts are counted."""
    if settings.WEBFORM_TRUSTED_PROXIES:
        return True
    try:
        return ipaddress.ip_address(ip).is_global
    except ValueError:
        return False


def wait_seconds(username: str, ip: str) -> int:
    """Seconds until this account may be tried from this address again; 0: now."""
    keys = _keys(username, ip)

    def read():
        pipe = swx_redis.client().pipeline(transaction=False)
        for key, _ in keys:
            pipe.get(key)
            pipe.ttl(key)
        replies = pipe.execute()
        return [(int(replies[i] or 0), replies[i + 1]) for i in range(0, len(replies), 2)]

    counts = swx_redis.attempt(read)
    if counts is swx_redis.UNAVAILABLE:
        counts = [_local.get(key) for key, _ in keys]
    waits = [max(1, ttl) for (count, ttl), (_, limit) in zip(counts, keys) if count >= limit]
    return max(waits, default=0)


def failed(username: str, ip: str) -> None:
    """Count one failed sign-in against the account and the address."""
    window = settings.LOGIN_LOCKOUT_SECONDS
    keys = [key for key, _ in _keys(username, ip)]

    def count():
        pipe = swx_redis.client().pipeline(transaction=True)  # MULTI: nothing expires between the two
        for key in keys:
            # The window runs from the first failure; SET NX with its expiry, then INCR, so a
            # count never exists without one (that would lock the account for good).
            pipe.set(key, 0, ex=window, nx=True)
            pipe.incr(key)
        return pipe.execute()

    if swx_redis.attempt(count) is swx_redis.UNAVAILABLE:
        for key in keys:
            _local.incr(key, window)


def succeeded(username: str) -> None:
    """The right password: the account's count starts again (the address's does not)."""
    key = _keys(username, "")[0][0]
    swx_redis.attempt(lambda: swx_redis.client().delete(key))
    _local.delete(key)


def refusal(wait: int) -> str:
    minutes = math.ceil(wait / 60)
    return (f"Too many failed sign-ins for this account or from this address. "
            f"Try again in {minutes} minute{'s' if minutes != 1 else ''}.")


class _LocalCounts:
    """The same counts in this process's memory, while Redis is unreachable."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, tuple[int, float]] = {}

    def get(self, key: str) -> tuple[int, int]:
        with self._lock:
            count, until = self._counts.get(key, (0, 0.0))
        left = until - time.monotonic()
        return (count, math.ceil(left)) if left > 0 else (0, -2)

    def incr(self, key: str, window: float) -> None:
        now = time.monotonic()
        with self._lock:
            if len(self._counts) > 10_000:  # a spray of addresses: keep memory bounded
                self._counts = {k: v for k, v in self._counts.items() if v[1] > now}
            count, until = self._counts.get(key, (0, 0.0))
            self._counts[key] = (count + 1, until) if until > now else (1, now + window)

    def delete(self, key: str) -> None:
        with self._lock:
            self._counts.pop(key, None)


_local = _LocalCounts()
