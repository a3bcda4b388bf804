"""Delivering status webhooks back to Swiftex, with the retry rule both providers share."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp

from fakes.state import State

TIMEOUT = aiohttp.ClientTimeout(total=5)


async def deliver(
    state: State,
    provider: str,
    url: str,
    body: bytes,
    headers: dict[str, str],
    payload_status: str,
    message_id: str,
) -> bool:
    """POST once, retry on a connection error or a non-2xx answer after each of the configured
    `webhook_retry_delays_ms` (taken when the first attempt starts); record every outcome."""
    delays = [ms / 1000 for ms in state.config.webhook_retry_delays_ms]
    record: dict[str, Any] = {
        "provider": provider,
        "url": url,
        "status": None,
        "attempts": 0,
        "payload_status": payload_status,
        "message_id": message_id,
        "ok": None,  # None while still trying
        "error": None,
        "first_attempt_at": time.time(),
    }
    state.webhooks.append(record)
    assert state.session is not None, "the client session is opened on start-up"
    for attempt in range(1 + len(delays)):
        if attempt:
            await asyncio.sleep(delays[attempt - 1])
        record["attempts"] += 1
        state.webhook_stats["attempts"] += 1
        try:
            async with state.session.post(
                url, data=body, headers=headers, timeout=TIMEOUT, allow_redirects=False
            ) as response:
                record["status"] = response.status
                await response.read()  # drain it so the connection goes back to the pool
            if 200 <= response.status < 300:
                record.update(ok=True, error=None)
                state.webhook_stats["delivered"] += 1
                return True
            record["error"] = f"HTTP {response.status}"
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            record.update(status=None, error=f"{type(exc).__name__}: {exc}")
    record["ok"] = False
    state.webhook_stats["gave_up"] += 1
    return False
