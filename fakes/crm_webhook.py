"""A customer's CRM webhook endpoint (`POST /crm-webhook/{name}`) for the generic signed-webhook adapter.

It records every delivery as it arrived and answers `crm_webhook_status`; it does not check
signatures, so tests recompute them from the recorded headers and raw body.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from aiohttp import web

from fakes.state import STATE, answer


async def receive(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    config = state.config
    raw = await request.read()
    text = raw.decode("utf-8", "replace")
    try:
        parsed: Any = json.loads(raw) if raw else None
    except ValueError:
        parsed = None
    record = state.record_request("crm_webhook", request, parsed if parsed is not None else text)
    delivery: dict[str, Any] = {
        "name": request.match_info["name"],
        "headers": dict(request.headers),
        "body": text,
        "json": parsed,
        "received_at": time.time(),
        "status": None,
    }
    state.crm_webhook_deliveries.append(delivery)

    await asyncio.sleep(config.crm_webhook_latency_ms / 1000)
    status = config.crm_webhook_status
    delivery["status"] = status
    payload = {"ok": True} if status < 300 else {"error": f"simulated HTTP {status}"}
    headers = {"Retry-After": "1"} if status == 429 else None
    return await answer(request, record, status, payload, headers=headers)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/crm-webhook/{name}", receive)
