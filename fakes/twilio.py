"""Fake Twilio Messages API (`POST /twilio/2010-04-01/Accounts/{sid}/Messages.json`) and its status callbacks."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import random
import secrets
from datetime import datetime, timezone
from email.utils import format_datetime
from typing import Any
from urllib.parse import urlencode

from aiohttp import BasicAuth, web

from fakes.state import STATE, Config, State, answer
from fakes.webhooks import deliver

API_VERSION = "2010-04-01"
# Twilio picks a sender from the service's pool when only MessagingServiceSid is given.
POOL_NUMBER = "+15550002222"
UNDELIVERED_ERROR_CODE = "30003"


def _error(http: int, code: int, message: str) -> dict[str, Any]:
    return {"code": code, "message": message, "more_info": f"https://www.twilio.com/docs/errors/{code}", "status": http}


def signature(auth_token: str, url: str, params: dict[str, str]) -> str:
    """Twilio's documented scheme: base64 HMAC-SHA1 over the URL followed by each POST name+value, sorted by name."""
    data = url + "".join(name + params[name] for name in sorted(params))
    return base64.b64encode(hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()).decode()


def _authorised(request: web.Request, account_sid: str, auth_token: str) -> bool:
    try:
        auth = BasicAuth.decode(request.headers.get("Authorization", ""))
    except ValueError:
        return False
    # compare_digest: same constant-time check the real service would do; cheap enough here.
    return auth.login == account_sid and hmac.compare_digest(auth.password.encode(), auth_token.encode())


async def create_message(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    config = state.config
    account_sid = request.match_info["account_sid"]
    form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
    record = state.record_request("twilio", request, form)

    if not _authorised(request, account_sid, config.twilio_auth_token):
        return await answer(request, record, 401, _error(401, 20003, "Authenticate"))
    to, sender, service = form.get("To", ""), form.get("From", ""), form.get("MessagingServiceSid", "")
    if not to:
        return await answer(request, record, 400, _error(400, 21604, "A 'To' phone number is required."))
    if not sender and not service:
        return await answer(request, record, 400, _error(400, 21603, "A 'From' phone number is required."))
    if not form.get("Body"):
        return await answer(request, record, 400, _error(400, 21602, "Message body is required."))

    await asyncio.sleep(config.sms_latency_ms / 1000)
    number = "+" + "".join(c for c in to if c.isdigit())
    injected = config.sms_errors.get(number)
    if injected:
        message = injected.get("message", f"Twilio could not send to {to} (error {injected['code']})")
        return await answer(request, record, injected["http"], _error(injected["http"], injected["code"], message))
    if random.random() < config.sms_error_rate:
        return await answer(request, record, 500, _error(500, 20500, "Internal Server Error"))

    sid = "SM" + secrets.token_hex(16)
    now = format_datetime(datetime.now(timezone.utc))
    uri = f"/{API_VERSION}/Accounts/{account_sid}/Messages/{sid}"
    resource = {
        "sid": sid,
        "account_sid": account_sid,
        "messaging_service_sid": service or None,
        "to": to,
        "from": sender or None,
        "body": form["Body"],
        "status": "queued",
        "num_segments": "1",
        "num_media": "0",
        "direction": "outbound-api",
        "api_version": API_VERSION,
        "price": None,
        "price_unit": "USD",
        "error_code": None,
        "error_message": None,
        "date_created": now,
        "date_updated": now,
        "date_sent": None,
        "uri": uri + ".json",
        "subresource_uris": {"media": uri + "/Media.json"},
    }
    then = None
    callback = form.get("StatusCallback")
    if callback and config.send_webhooks:
        params = {
            "MessageSid": sid,
            "SmsSid": sid,
            "AccountSid": account_sid,
            "From": sender or POOL_NUMBER,
            "To": to,
            "ApiVersion": API_VERSION,
        }
        if service:
            params["MessagingServiceSid"] = service
        then = _send_callbacks(state, config, callback, params, _statuses_for(config, number))
    return await answer(request, record, 201, resource, message_id=sid, then=then)


def _statuses_for(config: Config, number: str) -> list[str]:
    statuses = ["sent", "undelivered"] if number in config.sms_undeliverable else list(config.sms_statuses)
    if config.reverse_statuses:
        statuses.reverse()
    if config.duplicate_statuses:
        statuses = [s for s in statuses for _ in (1, 2)]
    return statuses


async def _send_callbacks(state: State, config: Config, url: str, base: dict[str, str], statuses: list[str]) -> None:
    for status in statuses:
        await asyncio.sleep(config.status_delay_ms / 1000)
        params = {**base, "MessageStatus": status, "SmsStatus": status}
        if status in ("undelivered", "failed"):
            params["ErrorCode"] = UNDELIVERED_ERROR_CODE
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Twilio-Signature": signature(config.twilio_auth_token, url, params),
            "User-Agent": "TwilioProxy/1.1",
        }
        await deliver(state, "twilio", url, urlencode(params).encode(), headers, status, base["MessageSid"])


def add_routes(app: web.Application) -> None:
    app.router.add_post(f"/twilio/{API_VERSION}/Accounts/{{account_sid}}/Messages.json", create_message)
