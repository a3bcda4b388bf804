"""Fake WhatsApp Cloud API send (`POST /whatsapp/{version}/{phone_number_id}/messages`) and its status webhooks."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import random
import re
import secrets
import time
from typing import Any

from aiohttp import web

from fakes.state import STATE, Config, State, answer
from fakes.webhooks import deliver

WABA_ID = "102290129340398"
DISPLAY_PHONE_NUMBER = "15550001111"
RECIPIENT = re.compile(r"^\+?\d{5,15}$")
UNDELIVERABLE_ERROR = {
    "code": 131026,
    "title": "Message undeliverable",
    "message": "Message undeliverable",
    "error_data": {"details": "Message Undeliverable."},
}


def _fbtrace_id() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(8)).decode().rstrip("=")


def _graph_error(message: str, code: int, **extra: Any) -> dict[str, Any]:
    return {"error": {"message": message, "type": "OAuthException", "code": code, **extra, "fbtrace_id": _fbtrace_id()}}


def _invalid(details: str, message: str = "(#100) Invalid parameter") -> dict[str, Any]:
    return _graph_error(message, 100, error_data={"messaging_product": "whatsapp", "details": details})


def new_wamid(digits: str) -> str:
    # Same layout as Meta's ids (a small binary envelope around the recipient and a hex id), so
    # anything that sniffs or stores them sees the usual length and alphabet.
    hex_id = secrets.token_hex(10).upper().encode()
    raw = b"\x1c\x18" + bytes([len(digits)]) + digits.encode() + b"\x15\x02\x00\x11\x18" + bytes([len(hex_id)]) + hex_id + b"\x00"
    return "wamid." + base64.urlsafe_b64encode(raw).decode()


def validate(body: Any) -> str | None:
    """The first problem with a send request, worded for Meta's error_data.details, or None."""
    if not isinstance(body, dict):
        return "Request body must be a JSON object"
    if body.get("messaging_product") != "whatsapp":
        return "messaging_product must be 'whatsapp'"
    to = body.get("to")
    if not isinstance(to, str) or not RECIPIENT.match(to):
        return "to must be a phone number: digits with an optional leading +"
    # Meta treats a missing type as "text".
    kind = body.get("type", "text")
    if kind == "text":
        text = body.get("text")
        if not isinstance(text, dict) or not isinstance(text.get("body"), str) or not text["body"].strip():
            return "text.body is required for a text message"
        if len(text["body"]) > 4096:
            return "text.body must be at most 4096 characters"
    elif kind == "template":
        problem = _template_problem(body.get("template"))
        if problem:
            return problem
    else:
        return f"type must be 'text' or 'template', got {kind!r}"
    opaque = body.get("biz_opaque_callback_data")
    if opaque is not None and (not isinstance(opaque, str) or len(opaque) > 512):
        return "biz_opaque_callback_data must be a string of at most 512 characters"
    return None


def _template_problem(template: Any) -> str | None:
    if not isinstance(template, dict):
        return "template is required for a template message"
    if not isinstance(template.get("name"), str) or not template["name"]:
        return "template.name is required"
    language = template.get("language")
    if not isinstance(language, dict) or not isinstance(language.get("code"), str) or not language["code"]:
        return "template.language.code is required"
    components = template.get("components", [])
    if not isinstance(components, list):
        return "template.components must be a list"
    for i, component in enumerate(components):
        if not isinstance(component, dict) or not isinstance(component.get("type"), str):
            return f"template.components[{i}].type is required"
        parameters = component.get("parameters", [])
        if not isinstance(parameters, list):
            return f"template.components[{i}].parameters must be a list"
        for j, parameter in enumerate(parameters):
            if not isinstance(parameter, dict) or not isinstance(parameter.get("type"), str):
                return f"template.components[{i}].parameters[{j}].type is required"
            if parameter["type"] == "text" and not isinstance(parameter.get("text"), str):
                return f"template.components[{i}].parameters[{j}].text is required"
    return None


async def send_message(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    config = state.config
    body, record = await state.receive_json("whatsapp", request)

    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or (config.whatsapp_token is not None and token != config.whatsapp_token):
        return await answer(request, record, 401, _graph_error(
            "Error validating access token: Session has expired", 190, error_subcode=463
        ))
    problem = validate(body)
    if problem:
        return await answer(request, record, 400, _invalid(problem))

    await asyncio.sleep(config.whatsapp_latency_ms / 1000)
    digits = body["to"].lstrip("+")
    injected = config.whatsapp_errors.get(digits)
    if injected:
        return await answer(request, record, injected["http"], _graph_error(
            injected["title"], injected["code"],
            error_data={"messaging_product": "whatsapp", "details": injected.get("message", injected["title"])},
        ))
    if random.random() < config.whatsapp_error_rate:
        return await answer(request, record, 500, _graph_error("An unknown error occurred", 1, is_transient=True))

    wamid = new_wamid(digits)
    statuses = _statuses_for(config, digits)
    then = None
    if statuses and config.send_webhooks:
        then = _send_statuses(state, config, request.match_info["phone_number_id"], wamid, digits, body, statuses)
    return await answer(request, record, 200, {
        "messaging_product": "whatsapp",
        "contacts": [{"input": body["to"], "wa_id": digits}],
        "messages": [{"id": wamid, "message_status": "accepted"}],
    }, message_id=wamid, then=then)


def _statuses_for(config: Config, digits: str) -> list[str]:
    if digits in config.whatsapp_no_status:
        return []
    statuses = ["failed"] if digits in config.whatsapp_undeliverable else list(config.whatsapp_statuses)
    if config.reverse_statuses:
        statuses.reverse()
    if config.duplicate_statuses:
        statuses = [s for s in statuses for _ in (1, 2)]
    return statuses


def status_payload(
    phone_number_id: str, wamid: str, digits: str, status: str, conversation_id: str, opaque: str | None
) -> dict[str, Any]:
    entry: dict[str, Any] = {"id": wamid, "status": status, "timestamp": str(int(time.time())), "recipient_id": digits}
    if opaque is not None:
        entry["biz_opaque_callback_data"] = opaque
    if status in ("sent", "delivered"):
        entry["conversation"] = {"id": conversation_id, "origin": {"type": "marketing"}}
        entry["pricing"] = {"billable": True, "pricing_model": "CBP", "category": "marketing"}
    elif status == "failed":
        entry["errors"] = [UNDELIVERABLE_ERROR]
    return {
        "object": "whatsapp_business_account",
        "entry": [{
            "id": WABA_ID,
            "changes": [{
                "field": "messages",
                "value": {
                    "messaging_product": "whatsapp",
                    "metadata": {"display_phone_number": DISPLAY_PHONE_NUMBER, "phone_number_id": phone_number_id},
                    "statuses": [entry],
                },
            }],
        }],
    }


def signature(app_secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()


async def _send_statuses(
    state: State, config: Config, phone_number_id: str, wamid: str, digits: str, body: dict[str, Any], statuses: list[str]
) -> None:
    # The config snapshot taken when the message was accepted decides this message's webhooks.
    url = config.webhook_url + "/webhooks/whatsapp"
    conversation_id = secrets.token_hex(16)
    opaque = body.get("biz_opaque_callback_data")
    for status in statuses:
        await asyncio.sleep(config.status_delay_ms / 1000)
        payload = status_payload(phone_number_id, wamid, digits, status, conversation_id, opaque)
        raw = json.dumps(payload, separators=(",", ":")).encode()
        headers = {
            "Content-Type": "application/json",
            "X-Hub-Signature-256": signature(config.whatsapp_app_secret, raw),
            "User-Agent": "facebookexternalua",
        }
        await deliver(state, "whatsapp", url, raw, headers, status, wamid)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/whatsapp/{version}/{phone_number_id}/messages", send_message)
