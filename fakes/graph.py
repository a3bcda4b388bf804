"""Fake Meta Graph API for Lead Ads (`/graph/{version}/...`) and the signed leadgen webhook.

Graph endpoints (an `access_token` query parameter is required on each; Graph-shaped errors
`{"error": {"message", "type", "code", "error_subcode"?, "fbtrace_id"}}`):
    GET /graph/{version}/{leadgen_id}?fields=...        one lead: id, created_time ("2026-11-25T08:00:00+0000"),
                                                        field_data, form_id, ad_id, campaign_name, ...
    GET /graph/{version}/{form_id}/leads?filtering=[{"field":"time_created","operator":"GREATER_THAN","value":<unix>}]
                                        &limit=N&after=<cursor>
                                                        newest first, cursor paging (paging.cursors.after, and
                                                        paging.next only while more remain)

Control API (JSON), besides the shared /_fake/* endpoints:
    POST /_fake/graph/leads      seed a lead: {"page_id", "form_id", "field_data": [...], "id"?, "created_time"?
                                 (unix seconds), "ad_id"?, "adset_id"?, "campaign_id"?, "campaign_name"?,
                                 "custom_disclaimer_responses"?, "webhook"?: true} -> {"lead": {...}}; with
                                 "webhook", the signed leadgen webhook goes to {webhook_url}/webhooks/meta/leadgen
    POST /_fake/graph/leads/{leadgen_id}/webhook   send that lead's leadgen webhook (again)
    GET  /_fake/graph/leads      {"leads": [...]} as seeded
    GET  /_fake/graph/requests   {"requests": [...]} Graph calls in arrival order (also in /_fake/requests)
    GET|POST /_fake/graph/config read / merge: "errors" {leadgen id, form id or "*": {"http", "code", "message"?,
                                 "subcode"?, "is_transient"?, "times"?}} (with "times" the error is answered that
                                 many times, then cleared), "page_tokens" {page id: the only token accepted},
                                 "latency_ms", "app_secret" (signs the webhook; default: the server's
                                 --whatsapp-app-secret, the one Meta app)
    POST /_fake/graph/reset      seeded leads, records and config dropped; POST /_fake/reset does it too
The webhook is delivered with the shared retry rule (fakes/webhooks.py) and listed by
GET /_fake/webhooks (provider "meta_leadgen").
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import time
from datetime import datetime, timezone
from typing import Any

from aiohttp import web

from fakes.state import STATE, State
from fakes.webhooks import deliver

PROVIDER = "graph"
DEFAULT_PAGE_SIZE = 25
MAX_PAGE_SIZE = 500
OPERATORS = {"GREATER_THAN": lambda a, b: a > b, "LESS_THAN": lambda a, b: a < b}


class GraphStore:
    def __init__(self) -> None:
        self.leads: dict[str, dict[str, Any]] = {}
        self.errors: dict[str, dict[str, Any]] = {}
        self.page_tokens: dict[str, str] = {}
        self.latency_ms = 0.0
        self.app_secret: str | None = None
        self.next_id = 900_000_000_000_000

    def clear(self) -> None:
        self.__init__()

    def config(self) -> dict[str, Any]:
        return {"errors": self.errors, "page_tokens": self.page_tokens, "latency_ms": self.latency_ms, "app_secret": self.app_secret}


GRAPH = web.AppKey("graph", GraphStore)


def _fbtrace_id() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(8)).decode().rstrip("=")


def graph_error(status: int, message: str, code: int, *, kind: str = "OAuthException", subcode: int | None = None,
                is_transient: bool | None = None) -> web.Response:
    error: dict[str, Any] = {"message": message, "type": kind, "code": code}
    if subcode is not None:
        error["error_subcode"] = subcode
    if is_transient is not None:
        error["is_transient"] = is_transient
    error["fbtrace_id"] = _fbtrace_id()
    return web.json_response({"error": error}, status=status)


def _iso(unix: int) -> str:
    return datetime.fromtimestamp(unix, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S+0000")


def _public(lead: dict[str, Any], fields: str | None) -> dict[str, Any]:
    shown = {k: v for k, v in lead.items() if not k.startswith("_")}
    shown["created_time"] = _iso(lead["_created"])
    if fields:
        wanted = {f.strip() for f in fields.split(",")} | {"id"}
        shown = {k: v for k, v in shown.items() if k in wanted}
    return shown


async def _gate(request: web.Request, *targets: str) -> web.Response | None:
    """Latency, the access token, and injected errors: the answer to give instead, or None."""
    store = request.app[GRAPH]
    if store.latency_ms:
        await asyncio.sleep(store.latency_ms / 1000)
    token = request.query.get("access_token", "")
    if not token:
        return graph_error(400, "An access token is required to request this resource.", 104)
    for target in (*targets, "*"):
        spec = store.errors.get(target)
        if spec is None:
            continue
        if "times" in spec:
            spec["times"] -= 1
            if spec["times"] <= 0:
                del store.errors[target]
        return graph_error(spec["http"], spec.get("message", f"(#{spec['code']}) Injected error"), spec["code"],
                           subcode=spec.get("subcode"), is_transient=spec.get("is_transient"))
    return None


def _token_refused(store: GraphStore, page_id: str, token: str) -> web.Response | None:
    wanted = store.page_tokens.get(page_id)
    if wanted is not None and not hmac.compare_digest(wanted, token):
        return graph_error(400, "Error validating access token: The session has been invalidated.", 190, subcode=460)
    return None


def _no_object(object_id: str) -> web.Response:
    return graph_error(
        400, f"Unsupported get request. Object with ID '{object_id}' does not exist, cannot be loaded due to missing "
        "permissions, or does not support this operation.", 100, kind="GraphMethodException", subcode=33,
    )


async def get_lead(request: web.Request) -> web.StreamResponse:
    state, store = request.app[STATE], request.app[GRAPH]
    record = state.record_request(PROVIDER, request, dict(request.query))
    leadgen_id = request.match_info["object_id"]
    response = await _gate(request, leadgen_id)
    lead = store.leads.get(leadgen_id)
    if response is None and lead is not None:
        response = _token_refused(store, lead["_page_id"], request.query["access_token"])
    if response is None:
        response = _no_object(leadgen_id) if lead is None else web.json_response(_public(lead, request.query.get("fields")))
    record.update(status=response.status, answered_at=time.time())
    return response


def _filters(raw: str | None) -> list[tuple[str, Any, int]] | web.Response:
    if not raw:
        return []
    try:
        items = json.loads(raw)
        assert isinstance(items, list)
        out = []
        for item in items:
            assert item["field"] == "time_created" and item["operator"] in OPERATORS
            out.append((item["field"], OPERATORS[item["operator"]], int(item["value"])))
        return out
    except (ValueError, AssertionError, KeyError, TypeError):
        return graph_error(400, "(#100) filtering must be a list of {field: time_created, operator: GREATER_THAN or "
                           "LESS_THAN, value: unix seconds}", 100)


def _cursor(lead: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(f"{lead['_created']}:{lead['id']}".encode()).decode()


def _position(cursor: str) -> tuple[int, str] | None:
    try:
        created, lead_id = base64.urlsafe_b64decode(cursor.encode()).decode().split(":", 1)
        return int(created), lead_id
    except (ValueError, UnicodeDecodeError):
        return None


async def list_leads(request: web.Request) -> web.StreamResponse:
    state, store = request.app[STATE], request.app[GRAPH]
    record = state.record_request(PROVIDER, request, dict(request.query))
    form_id = request.match_info["object_id"]
    response = await _gate(request, form_id)
    if response is None:
        response = _list_page(request, store, form_id)
    record.update(status=response.status, answered_at=time.time())
    return response


def _list_page(request: web.Request, store: GraphStore, form_id: str) -> web.Response:
    leads = [lead for lead in store.leads.values() if lead.get("form_id") == form_id]
    for page_id in {lead["_page_id"] for lead in leads}:
        if refused := _token_refused(store, page_id, request.query["access_token"]):
            return refused
    filters = _filters(request.query.get("filtering"))
    if isinstance(filters, web.Response):
        return filters
    try:
        limit = min(MAX_PAGE_SIZE, max(1, int(request.query.get("limit", DEFAULT_PAGE_SIZE))))
    except ValueError:
        return graph_error(400, "(#100) limit must be a number", 100)
    leads = [lead for lead in leads if all(op(lead["_created"], value) for _, op, value in filters)]
    leads.sort(key=lambda lead: (lead["_created"], lead["id"]), reverse=True)  # newest first, as Graph lists them
    if after := request.query.get("after"):
        position = _position(after)
        if position is None:
            return graph_error(400, "(#100) Invalid cursor", 100)
        leads = [lead for lead in leads if (lead["_created"], lead["id"]) < position]
    page, more = leads[:limit], len(leads) > limit
    fields = request.query.get("fields")
    body: dict[str, Any] = {"data": [_public(lead, fields) for lead in page]}
    if page:
        body["paging"] = {"cursors": {"before": _cursor(page[0]), "after": _cursor(page[-1])}}
        if more:
            body["paging"]["next"] = str(request.url.update_query({"after": _cursor(page[-1])}))
    return web.json_response(body)


# --- control -----------------------------------------------------------------------------


class Invalid(ValueError):
    pass


def _text(body: dict[str, Any], key: str, *, required: bool = False) -> str:
    value = body.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, (str, int)) or isinstance(value, bool) or not str(value):
        raise Invalid(f"{key}: must be a non-empty string")
    return str(value)


def _field_data(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not all(
        isinstance(f, dict) and isinstance(f.get("name"), str) and isinstance(f.get("values"), list) for f in value
    ):
        raise Invalid('field_data: must be a list of {"name": "...", "values": ["..."]}')
    return value


async def seed_lead(request: web.Request) -> web.Response:
    store = request.app[GRAPH]
    try:
        body = await request.json()
        if not isinstance(body, dict):
            raise Invalid("body must be a JSON object")
        page_id, form_id = _text(body, "page_id", required=True), _text(body, "form_id", required=True)
        created = body.get("created_time", int(time.time()))
        if isinstance(created, bool) or not isinstance(created, int):
            raise Invalid("created_time: must be unix seconds")
        store.next_id += 1
        lead: dict[str, Any] = {
            "id": _text(body, "id") or str(store.next_id), "form_id": form_id, "field_data": _field_data(body.get("field_data")),
            "_page_id": page_id, "_created": created,
        }
        for key in ("ad_id", "adset_id", "campaign_id", "campaign_name", "platform"):
            if value := _text(body, key):
                lead[key] = value
        if isinstance(body.get("custom_disclaimer_responses"), list):
            lead["custom_disclaimer_responses"] = body["custom_disclaimer_responses"]
        lead["is_organic"] = not lead.get("ad_id")
    except (ValueError, Invalid) as exc:
        return web.json_response({"error": str(exc)}, status=400)
    store.leads[lead["id"]] = lead
    if body.get("webhook"):
        _send_webhook(request.app, lead)
    return web.json_response({"lead": _public(lead, None)})


async def resend_webhook(request: web.Request) -> web.Response:
    lead = request.app[GRAPH].leads.get(request.match_info["leadgen_id"])
    if lead is None:
        return web.json_response({"error": "no such lead"}, status=404)
    _send_webhook(request.app, lead)
    return web.json_response({"ok": True})


def leadgen_webhook(lead: dict[str, Any]) -> dict[str, Any]:
    value = {"ad_id": lead.get("ad_id", ""), "form_id": lead["form_id"], "leadgen_id": lead["id"], "created_time": lead["_created"],
             "page_id": lead["_page_id"], "adgroup_id": lead.get("adset_id", "")}
    return {"object": "page", "entry": [{"id": lead["_page_id"], "time": int(time.time()),
                                         "changes": [{"field": "leadgen", "value": value}]}]}


def _send_webhook(app: web.Application, lead: dict[str, Any]) -> None:
    state, store = app[STATE], app[GRAPH]
    raw = json.dumps(leadgen_webhook(lead)).encode()
    secret = store.app_secret or state.config.whatsapp_app_secret
    headers = {"Content-Type": "application/json",
               "X-Hub-Signature-256": "sha256=" + hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()}
    url = f"{state.config.webhook_url}/webhooks/meta/leadgen"
    state.spawn(_deliver(state, url, raw, headers, lead["id"]))


async def _deliver(state, url: str, raw: bytes, headers: dict[str, str], leadgen_id: str) -> None:
    await deliver(state, "meta_leadgen", url, raw, headers, "leadgen", leadgen_id)


def _merge(store: GraphStore, update: Any) -> None:
    """Validate every key, then apply: a bad update changes nothing."""
    if not isinstance(update, dict):
        raise Invalid("config: body must be a JSON object")
    unknown = sorted(update.keys() - {"errors", "page_tokens", "latency_ms", "app_secret"})
    if unknown:
        raise Invalid(f"{unknown[0]}: unknown config key")
    errors = update.get("errors", store.errors)
    if not isinstance(errors, dict):
        raise Invalid("errors: must map a leadgen id, form id or \"*\" to an error")
    for target, spec in errors.items():
        if not isinstance(spec, dict) or not isinstance(spec.get("http"), int) or not isinstance(spec.get("code"), int):
            raise Invalid(f"errors[{target!r}]: needs integer http and code")
        if not 400 <= spec["http"] <= 599 or ("times" in spec and (not isinstance(spec["times"], int) or spec["times"] < 1)):
            raise Invalid(f"errors[{target!r}]: http must be 400-599 and times at least 1")
    tokens = update.get("page_tokens", store.page_tokens)
    if not isinstance(tokens, dict) or not all(isinstance(v, str) and v for v in tokens.values()):
        raise Invalid("page_tokens: must map a page id to a non-empty token")
    latency = update.get("latency_ms", store.latency_ms)
    if isinstance(latency, bool) or not isinstance(latency, (int, float)) or not 0 <= latency <= 600_000:
        raise Invalid("latency_ms: must be between 0 and 600000")
    secret = update.get("app_secret", store.app_secret)
    if secret is not None and (not isinstance(secret, str) or not secret):
        raise Invalid("app_secret: must be a non-empty string or null")
    store.errors = {str(k): dict(v) for k, v in errors.items()}
    store.page_tokens = {str(k): v for k, v in tokens.items()}
    store.latency_ms, store.app_secret = float(latency), secret


async def config(request: web.Request) -> web.Response:
    store = request.app[GRAPH]
    if request.method == "POST":
        try:
            _merge(store, await request.json())
        except (ValueError, Invalid) as exc:
            return web.json_response({"error": str(exc)}, status=400)
    return web.json_response(store.config())


async def list_seeded(request: web.Request) -> web.Response:
    return web.json_response({"leads": [_public(lead, None) for lead in request.app[GRAPH].leads.values()]})


async def list_requests(request: web.Request) -> web.Response:
    return web.json_response({"requests": [State.public(r) for r in request.app[STATE].requests if r["provider"] == PROVIDER]})


async def reset(request: web.Request) -> web.Response:
    request.app[GRAPH].clear()
    return web.json_response({"ok": True})


@web.middleware
async def _reset_with_the_rest(request: web.Request, handler):
    """POST /_fake/reset (fakes/control.py) drops the shared state; the seeded leads go with it."""
    response = await handler(request)
    if request.method == "POST" and request.path == "/_fake/reset" and response.status == 200:
        request.app[GRAPH].clear()
    return response


def add_routes(app: web.Application) -> None:
    app[GRAPH] = GraphStore()
    app.middlewares.append(_reset_with_the_rest)
    app.router.add_post("/_fake/graph/leads", seed_lead)
    app.router.add_get("/_fake/graph/leads", list_seeded)
    app.router.add_post("/_fake/graph/leads/{leadgen_id}/webhook", resend_webhook)
    app.router.add_get("/_fake/graph/requests", list_requests)
    app.router.add_route("*", "/_fake/graph/config", config)
    app.router.add_post("/_fake/graph/reset", reset)
    app.router.add_get("/graph/{version}/{object_id}/leads", list_leads)
    app.router.add_get("/graph/{version}/{object_id}", get_lead)
