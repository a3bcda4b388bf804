"""Fake HubSpot CRM v3 contacts batch upsert (`POST /hubspot/crm/v3/objects/contacts/batch/upsert`).

Shapes follow HubSpot's: a batch is validated as a whole (one bad value and nothing is written),
a per-token "secondly" limit answers 429 with Retry-After and the X-HubSpot-RateLimit-* headers.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
import uuid
from collections import deque
from datetime import datetime, timezone
from typing import Any

from aiohttp import web

from fakes.state import STATE, Config, HubSpotStore, answer

MAX_BATCH = 100


class Invalid(Exception):
    """A request HubSpot answers 400 VALIDATION_ERROR; nothing in its batch is written."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _error(message: str, category: str) -> dict[str, Any]:
    return {"status": "error", "message": message, "correlationId": str(uuid.uuid4()), "category": category}


def _key(id_property: str, value: str) -> tuple[str, str]:
    # HubSpot matches email addresses case-insensitively; other unique properties exactly.
    return id_property, value.lower() if id_property == "email" else value


def _text(value: Any) -> str:
    """HubSpot stores every property value as a string; null clears it."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _invalid_value(name: str, value: str, email: bool) -> Invalid:
    if email:
        problem = {"isValid": False, "message": f"Email address {value} is invalid", "error": "INVALID_EMAIL", "name": name}
    else:
        problem = {"isValid": False, "message": f"{value} is not a valid value for {name}", "error": "INVALID_PROPERTY_VALUE", "name": name}
    return Invalid("Property values were not valid: " + json.dumps([problem], separators=(",", ":")))


def validate(body: Any, invalid_ids: frozenset[str]) -> tuple[str, list[dict[str, Any]]]:
    """The batch's idProperty and inputs, or Invalid naming the first problem."""
    inputs = body.get("inputs") if isinstance(body, dict) else None
    if not isinstance(inputs, list):
        raise Invalid('Invalid input JSON: the body must be an object with an "inputs" list')
    if not inputs:
        raise Invalid("inputs must contain at least one input")
    if len(inputs) > MAX_BATCH:
        raise Invalid(f"Batch size {len(inputs)} exceeds the limit of {MAX_BATCH}")
    id_property: str | None = None
    seen: set[tuple[str, str]] = set()
    for i, item in enumerate(inputs):
        where = f"inputs[{i}]"
        if not isinstance(item, dict):
            raise Invalid(f"{where} must be an object")
        value, prop = item.get("id"), item.get("idProperty")
        if not isinstance(value, str) or not value.strip():
            raise Invalid(f"{where}.id is required: the value of the idProperty that identifies the record")
        if not isinstance(prop, str) or not prop:
            raise Invalid(f'{where}.idProperty is required: "email" or a unique property\'s name')
        if id_property is None:
            id_property = prop
        elif prop != id_property:
            raise Invalid(f"All inputs in a batch must share one idProperty: inputs[0] uses {id_property!r}, {where} uses {prop!r}")
        properties = item.get("properties")
        if not isinstance(properties, dict):
            raise Invalid(f"{where}.properties must be an object mapping property names to values")
        for name, v in properties.items():
            if isinstance(v, (dict, list)):
                raise Invalid(f"{where}.properties.{name} must be a string, number or boolean")
        trace = item.get("objectWriteTraceId")
        if trace is not None and not isinstance(trace, str):
            raise Invalid(f"{where}.objectWriteTraceId must be a string")
        key = _key(prop, value)
        if key in seen:
            raise Invalid("Duplicate IDs found in batch input: " + json.dumps([value]))
        seen.add(key)

        if prop == "email" and "@" not in value:
            raise _invalid_value("email", value, email=True)
        email = properties.get("email")
        if isinstance(email, str) and email and "@" not in email:
            raise _invalid_value("email", email, email=True)
        if value.lower() in invalid_ids:
            raise _invalid_value(prop, value, email=prop == "email")
    assert id_property is not None
    return id_property, inputs


def _upsert(store: HubSpotStore, id_property: str, item: dict[str, Any], now: str) -> dict[str, Any]:
    value = item["id"]
    key = _key(id_property, value)
    contact = store.contacts.get(key)
    new = contact is None
    if contact is None:
        contact = {
            "id": store.new_id(), "idProperty": id_property, "idValue": value, "properties": {},
            "createdAt": now, "updatedAt": now, "writes": 0, "objectWriteTraceId": None,
        }
        store.contacts[key] = contact
    contact["properties"].update({name: _text(v) for name, v in item["properties"].items()})
    contact["properties"][id_property] = value
    contact["updatedAt"] = now
    contact["writes"] += 1
    result: dict[str, Any] = {"id": contact["id"], "new": new}
    trace = item.get("objectWriteTraceId")
    if trace is not None:
        contact["objectWriteTraceId"] = trace
        result["objectWriteTraceId"] = trace
    result.update(
        # HubSpot answers with its own read-only properties alongside the ones written.
        properties={**contact["properties"], "hs_object_id": contact["id"],
                    "createdate": contact["createdAt"], "lastmodifieddate": now},
        createdAt=contact["createdAt"], updatedAt=now, archived=False,
    )
    return result


def _limit_headers(config: Config, remaining: int) -> dict[str, str]:
    if not config.hubspot_rate_limit:
        return {}
    return {
        "X-HubSpot-RateLimit-Max": str(config.hubspot_rate_limit),
        "X-HubSpot-RateLimit-Remaining": str(max(0, remaining)),
        "X-HubSpot-RateLimit-Interval-Milliseconds": str(int(config.hubspot_rate_window_ms)),
    }


def _take_slot(window: deque[float], config: Config, now: float) -> float | None:
    """Count a request in its token's sliding window: None if it fits, else seconds until a slot frees."""
    span = config.hubspot_rate_window_ms / 1000
    while window and window[0] <= now - span:
        window.popleft()
    if len(window) >= config.hubspot_rate_limit:
        return window[0] + span - now
    window.append(now)
    return None


async def batch_upsert(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    config = state.config
    store = state.hubspot
    body, record = await state.receive_json("hubspot", request)
    inputs = body.get("inputs") if isinstance(body, dict) else None
    first = inputs[0] if isinstance(inputs, list) and inputs and isinstance(inputs[0], dict) else {}
    record.update(batch_size=len(inputs) if isinstance(inputs, list) else None, id_property=first.get("idProperty"))
    store.stats["requests"] += 1

    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        store.stats["rejected"] += 1
        return await answer(request, record, 401, _error(
            "Authentication credentials not found. This API supports OAuth 2.0 authentication and you can find "
            "more details at https://developers.hubspot.com/docs/methods/auth/oauth-overview",
            "INVALID_AUTHENTICATION",
        ))
    if config.hubspot_token is not None and token != config.hubspot_token:
        store.stats["rejected"] += 1
        return await answer(request, record, 401, _error(
            "The access token provided is invalid or has expired.", "INVALID_AUTHENTICATION"
        ))

    wait: float | None = 1.0 if config.hubspot_always_429 else None
    remaining = 0
    if wait is None and config.hubspot_rate_limit:
        window = store.windows.setdefault(token, deque())
        wait = _take_slot(window, config, time.monotonic())
        remaining = config.hubspot_rate_limit - len(window)
    if wait is not None:
        store.stats["rate_limited"] += 1
        headers = {"Retry-After": str(max(1, math.ceil(wait))), **_limit_headers(config, 0)}
        return await answer(request, record, 429, {
            "status": "error",
            "message": "You have reached your secondly limit.",
            "errorType": "RATE_LIMIT",
            "correlationId": str(uuid.uuid4()),
            "policyName": "SECONDLY",
        }, headers=headers)
    headers = _limit_headers(config, remaining)

    await asyncio.sleep(config.hubspot_latency_ms / 1000)
    if random.random() < config.hubspot_error_rate:
        store.stats["errors"] += 1
        return await answer(request, record, 500, {
            "status": "error", "message": "internal error", "category": "INTERNAL_ERROR",
        }, headers=headers)
    # Validation and the writes run with no await between them, so a batch is all-or-nothing and
    # never interleaved with a concurrent one.
    try:
        id_property, items = validate(body, frozenset(v.lower() for v in config.hubspot_invalid_ids))
    except Invalid as exc:
        store.stats["rejected"] += 1
        return await answer(request, record, 400, _error(str(exc), "VALIDATION_ERROR"), headers=headers)

    started = _now()
    results = [_upsert(store, id_property, item, started) for item in items]
    store.stats["accepted"] += 1
    store.stats["max_batch"] = max(store.stats["max_batch"], len(items))
    return await answer(request, record, 200, {
        "status": "COMPLETE", "results": results, "startedAt": started, "completedAt": _now(),
    }, headers=headers)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/hubspot/crm/v3/objects/contacts/batch/upsert", batch_upsert)
