"""The `/_fake/*` control API that tests and benchmarks use to configure and inspect the fakes."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from fakes.state import STATE, ConfigError, State, merge_config

PROVIDERS = ("openai", "whatsapp", "twilio", "hubspot", "crm_webhook")


def _provider_filter(request: web.Request) -> str | None:
    provider = request.query.get("provider")
    if provider is not None and provider not in PROVIDERS:
        raise web.HTTPBadRequest(
            text=json.dumps({"error": f"provider must be one of {', '.join(PROVIDERS)}"}), content_type="application/json"
        )
    return provider


def _select(records: Any, provider: str | None) -> list[dict[str, Any]]:
    return [r for r in records if provider is None or r["provider"] == provider]


async def health(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def get_config(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE].config.as_json())


async def post_config(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        update = await request.json()
    except ValueError:
        return web.json_response({"error": "config: body must be a JSON object"}, status=400)
    try:
        state.config = merge_config(state.config, update)
    except ConfigError as exc:
        return web.json_response({"error": str(exc)}, status=400)
    return web.json_response(state.config.as_json())


async def reset(request: web.Request) -> web.Response:
    state = request.app[STATE]
    await state.reset()
    return web.json_response(state.config.as_json())


async def list_requests(request: web.Request) -> web.Response:
    provider = _provider_filter(request)
    return web.json_response({"requests": [State.public(r) for r in _select(request.app[STATE].requests, provider)]})


async def list_webhooks(request: web.Request) -> web.Response:
    state = request.app[STATE]
    provider = _provider_filter(request)
    return web.json_response({"webhooks": _select(state.webhooks, provider), "stats": state.webhook_stats})


async def hubspot_contacts(request: web.Request) -> web.Response:
    store = request.app[STATE].hubspot
    return web.json_response({"contacts": list(store.contacts.values()), "stats": store.stats})


async def crm_webhook_deliveries(request: web.Request) -> web.Response:
    name = request.query.get("name")
    deliveries = request.app[STATE].crm_webhook_deliveries
    return web.json_response({"deliveries": [d for d in deliveries if name is None or d["name"] == name]})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/_fake/health", health)
    app.router.add_get("/_fake/config", get_config)
    app.router.add_post("/_fake/config", post_config)
    app.router.add_post("/_fake/reset", reset)
    app.router.add_get("/_fake/requests", list_requests)
    app.router.add_get("/_fake/webhooks", list_webhooks)
    app.router.add_get("/_fake/hubspot/contacts", hubspot_contacts)
    app.router.add_get("/_fake/crm-webhook", crm_webhook_deliveries)
