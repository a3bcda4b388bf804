"""Provider webhooks: WhatsApp Cloud API and Twilio.

Every POST is authenticated over the exact bytes received (Meta:
`X-Hub-Signature-256`, HMAC-SHA256 with the app secret; Twilio:
`X-Twilio-Signature`, HMAC-SHA1 of URL + sorted params with the auth token),
compared in constant time. A bad or missing signature gets 403 and changes
nothing; it is kept as a `WebhookDelivery` row for a human to inspect, as is
a delivery whose processing failed (answered 500, so the provider retries).
Valid statuses are stored in one statement (`StatusReceipt`, an inbox) and
answered 200 at once: at 5,000 leads a minute Meta sends ~250 status webhooks
a second, and applying them inline made the web queue long enough for Meta's
timeouts and retries to double the load. The conversations lane applies
them in batches. Inbound messages are stored right away. Counts per
provider and outcome are in /metrics.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone as dt_timezone

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods, require_POST

from conversations import receipts
from conversations.models import Channel, WebhookDelivery
from conversations.providers import twilio
from conversations.services import CALLBACK_PREFIX
from leads import selectors
from leads.models import Organization
from swiftex import metrics
from swiftex.db import clean_text

logger = logging.getLogger(__name__)

MAX_STORED_BODY = 20_000
# Anyone can post unsigned bodies: keep enough of each to see what it was, not 20 KB a request.
MAX_STORED_REJECTED_BODY = 2_000
# One Meta app's delivery names one or a few business numbers; more is not Meta.
MAX_NUMBERS_PER_DELIVERY = 20
META_SIGNATURE = re.compile(r"sha256=([0-9a-f]{64})")
WHATSAPP_STATUSES = {"sent", "delivered", "read", "failed"}
TWILIO_STATUSES = {
    "queued": "accepted", "accepted": "accepted", "scheduled": "accepted", "sending": "accepted",
    "sent": "sent", "delivered": "delivered", "read": "read", "undelivered": "failed", "failed": "failed",
}
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'


def audit(provider: str, outcome: str, detail: str, body: bytes | str, org: Organization | None = None) -> None:
    text = body.decode("utf-8", errors="replace") if isinstance(body, bytes) else body
    limit = MAX_STORED_BODY if outcome != WebhookDelivery.Outcome.REJECTED else MAX_STORED_REJECTED_BODY
    WebhookDelivery.objects.create(provider=provider, organization=org, outcome=outcome, detail=clean_text(detail, 300),
                                   body=clean_text(text, limit))
    metrics.WEBHOOKS.labels(provider=provider, outcome=outcome).inc()


def forbidden(provider: str, detail: str, body) -> HttpResponse:
    logger.warning("%s webhook rejected: %s", provider, detail)
    audit(provider, WebhookDelivery.Outcome.REJECTED, detail, body)
    return HttpResponse("Forbidden: " + detail, status=403, content_type="text/plain")


@contextmanager
def _processing(provider: str, body: bytes, org: Organization | None = None):
    """Count a processed delivery; keep the body of one that failed (the provider retries it)."""
    try:
        yield
    except Exception as exc:
        audit(provider, WebhookDelivery.Outcome.FAILED, f"{type(exc).__name__}: {exc}", body, org)
        raise
    metrics.WEBHOOKS.labels(provider=provider, outcome=WebhookDelivery.Outcome.PROCESSED).inc()


# --- WhatsApp -----------------------------------------------------------------------


@csrf_exempt
@require_http_methods(["GET", "POST"])
def whatsapp(request: HttpRequest) -> HttpResponse:
    if request.method == "GET":
        return _whatsapp_verify(request)
    received_at = timezone.now()
    raw = request.body
    # Nothing unsigned reaches the database: the header's shape is checked first, the
    # tenants' secrets are read for at most MAX_NUMBERS_PER_DELIVERY numbers, and the
    # HMAC is checked before any of the payload is used.
    signature = META_SIGNATURE.fullmatch(request.headers.get("X-Hub-Signature-256", "").strip())
    if signature is None:
        return forbidden("whatsapp", "missing or malformed X-Hub-Signature-256", raw)
    payload = _json_object(raw)
    if payload is None:
        return forbidden("whatsapp", "body is not a JSON object", raw)
    changes = list(_changes(payload))
    numbers = {_phone_number_id(value) for value in changes} - {""}
    if len(numbers) > MAX_NUMBERS_PER_DELIVERY:
        return forbidden("whatsapp", f"more than {MAX_NUMBERS_PER_DELIVERY} business numbers in one delivery", raw)
    orgs = _orgs_by_phone_number_id(numbers)
    secrets = {_app_secret(org) for org in orgs.values()} or {settings.WHATSAPP_APP_SECRET}
    if not meta_signature_valid(raw, signature.group(0), secrets):
        return forbidden("whatsapp", "invalid X-Hub-Signature-256", raw)

    with _processing("whatsapp", raw):
        for value in changes:
            number = _phone_number_id(value)
            org = orgs.get(number)
            if org is None:
                logger.info("whatsapp webhook for unknown phone_number_id %r ignored", number)
                continue
            reports = [report for status in _list(value.get("statuses")) if (report := _whatsapp_status(status, received_at))]
            receipts.enqueue(org, reports)
            names = {c.get("wa_id"): _dict(c.get("profile")).get("name", "") for c in _list(value.get("contacts")) if isinstance(c, dict)}
            for message in _list(value.get("messages")):
                if noted := _whatsapp_note(message, received_at):
                    receipts.note(org, *noted)
                elif inbound := _whatsapp_inbound(message, names, received_at):
                    receipts.receive(org, inbound)
    return HttpResponse("ok", content_type="text/plain")


def _json_object(raw: bytes) -> dict | None:
    try:
        payload = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: a few KB of nested brackets
        return None
    return payload if isinstance(payload, dict) else None


def _dict(value: object) -> dict:
    return value if isinstance(value, dict) else {}


def _list(value: object) -> list:
    return value if isinstance(value, list) else []


# What an id may look like to be looked up at all (Meta's are digits; local setups use others).
ROUTING_ID = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


def _phone_number_id(value: dict) -> str:
    """The business number a change is for; anything that cannot be an id routes nowhere."""
    pnid = str(_dict(value.get("metadata")).get("phone_number_id", ""))
    return pnid if ROUTING_ID.fullmatch(pnid) else ""


def _whatsapp_verify(request: HttpRequest) -> HttpResponse:
    """Meta's subscription handshake: echo hub.challenge if the verify token is one of ours."""
    mode = request.GET.get("hub.mode", "")
    token = request.GET.get("hub.verify_token", "")
    challenge = request.GET.get("hub.challenge", "")
    known = bool(token) and "\x00" not in token and (
        hmac.compare_digest(token.encode(), (settings.WHATSAPP_VERIFY_TOKEN or "\0").encode())
        or Organization.objects.filter(whatsapp_verify_token=token).exists()
    )
    if mode != "subscribe" or not known or not challenge:
        logger.warning("whatsapp verification refused (mode=%r)", mode)
        return HttpResponse("Forbidden: verify token does not match", status=403, content_type="text/plain")
    return HttpResponse(challenge, content_type="text/plain")


def _changes(payload: dict):
    """Every `value` of every change of every entry (Meta batches them)."""
    for entry in _list(payload.get("entry")):
        if isinstance(entry, dict):
            for change in _list(entry.get("changes")):
                if isinstance(change, dict) and change.get("field") == "messages" and isinstance(change.get("value"), dict):
                    yield change["value"]


def _orgs_by_phone_number_id(ids: set[str]) -> dict[str, Organization]:
    found = {pnid: selectors.organization_for_whatsapp_number(pnid) for pnid in ids if pnid}
    return {pnid: org for pnid, org in found.items() if org is not None}


def _app_secret(org: Organization) -> str:
    return org.whatsapp_app_secret or settings.WHATSAPP_APP_SECRET


def meta_signature_valid(raw: bytes, header: str, secrets: set[str]) -> bool:
    if not header.startswith("sha256="):
        return False
    provided = header[len("sha256="):].strip()
    # Each tenant's secret must be set and match: one payload spans one Meta app.
    return bool(secrets) and all(
        secret and hmac.compare_digest(hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest().encode(), provided.encode())
        for secret in secrets
    )


# Meta stamps events in whole seconds. Within that resolution our own receipt
# time is the better estimate (sub-second, never before the event), and keeps
# the timeline in order; a webhook redelivered much later keeps Meta's time.
PROVIDER_CLOCK_RESOLUTION = timedelta(seconds=2)


def _when(unix: object, received_at: datetime) -> datetime:
    try:
        stamped = datetime.fromtimestamp(int(str(unix)), tz=dt_timezone.utc)
    except (TypeError, ValueError, OverflowError):
        return received_at
    return received_at if stamped >= received_at - PROVIDER_CLOCK_RESOLUTION else stamped


# Longer ids are not ours (a wamid is ~60 characters, a MessageSid 34): skipped, not a 500
# that has the provider redeliver the whole payload for days.
MAX_PROVIDER_ID = 128


def _provider_id(value: object) -> str:
    text = str(value or "")
    return text if len(text) <= MAX_PROVIDER_ID and "\x00" not in text else ""


def _whatsapp_status(status: object, received_at: datetime) -> receipts.StatusReport | None:
    if not isinstance(status, dict) or status.get("status") not in WHATSAPP_STATUSES or not _provider_id(status.get("id")):
        return None
    error = _dict(_list(status.get("errors"))[0]) if status.get("status") == "failed" and _list(status.get("errors")) else {}
    details = _dict(error.get("error_data")).get("details", "")
    return receipts.StatusReport(
        channel=Channel.WHATSAPP,
        provider_message_id=_provider_id(status["id"]),
        status=status["status"],
        at=_when(status.get("timestamp"), received_at),
        callback=clean_text(status.get("biz_opaque_callback_data") or "", 64),
        error_code=clean_text(error.get("code", ""), 32),
        error_title=clean_text(" ".join(filter(None, [str(error.get("title", "")), str(details)])), 300),
    )


def _whatsapp_inbound(message: object, names: dict, received_at: datetime) -> receipts.Inbound | None:
    if not isinstance(message, dict) or not _provider_id(message.get("id")) or not _e164_digits(message.get("from")):
        logger.info("whatsapp inbound message without a usable id or sender ignored")
        return None
    kind = str(message.get("type", ""))
    if kind == "text":
        body = _dict(message.get("text")).get("body", "")
    elif kind == "button":
        body = _dict(message.get("button")).get("text", "")
    elif kind == "interactive":
        reply = _dict(message.get("interactive"))
        body = _dict(reply.get("button_reply") or reply.get("list_reply")).get("title", "")
    elif kind in ("image", "video", "document") and _dict(message.get(kind)).get("caption"):
        body = _dict(message.get(kind))["caption"]  # what they wrote with it: "STOP" as a caption opts out too
    else:
        body = f"[{kind or 'unsupported'} message]"
    return receipts.Inbound(
        channel=Channel.WHATSAPP,
        provider_message_id=_provider_id(message["id"]),
        phone="+" + message["from"],
        body=clean_text(body, 10_000),
        at=_when(message.get("timestamp"), received_at),
        profile_name=clean_text(names.get(message["from"], "") or "", 200),
    )


def _whatsapp_note(message: object, received_at: datetime) -> tuple | None:
    """(phone, timeline kind, data, at) for what is not a message to answer: a reaction (or
    its removal, an empty emoji), a system notice, a type the Cloud API does not support."""
    if not isinstance(message, dict) or message.get("type") not in ("reaction", "system", "unsupported"):
        return None
    if not _e164_digits(message.get("from")):
        return None
    at = _when(message.get("timestamp"), received_at)
    if message["type"] == "reaction":
        data = {"channel": Channel.WHATSAPP, "emoji": clean_text(_dict(message.get("reaction")).get("emoji", ""), 16) or "(removed)"}
        return "+" + message["from"], "message.reaction", data, at
    return "+" + message["from"], "message.unsupported", {"channel": Channel.WHATSAPP, "type": message["type"]}, at


def _e164_digits(value: object) -> bool:
    """A phone number as Meta writes it: country code and number, digits only, at most 15."""
    return isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 15


# --- Twilio ---------------------------------------------------------------------------


TWILIO_ACCOUNT_SID = re.compile(r"AC[A-Za-z0-9]{1,62}")  # Twilio's are AC + 32 hex digits


def _twilio_org(request: HttpRequest, *, number: str) -> Organization | None:
    sid = request.POST.get("AccountSid", "")
    if not TWILIO_ACCOUNT_SID.fullmatch(sid):
        return None
    orgs = list(Organization.objects.filter(twilio_account_sid=sid).order_by("pk"))
    if len(orgs) == 1:
        return orgs[0]
    # One Twilio account serving several organizations: only the number tells them apart,
    # and a number none of them has is refused rather than given to one of them.
    return next((org for org in orgs if number and org.twilio_from_number == number), None)


def _twilio_verified(request: HttpRequest, org: Organization | None) -> bool:
    token = (org.twilio_auth_token if org else "") or settings.TWILIO_AUTH_TOKEN
    provided = request.headers.get("X-Twilio-Signature", "")
    params = {key: request.POST.getlist(key) for key in request.POST}
    # Twilio signs the URL it was given: our public URL, or the one this request reached.
    urls = {settings.PUBLIC_BASE_URL + request.get_full_path(), request.build_absolute_uri()}
    return any(twilio.signature_valid(token, url, params, provided) for url in urls)


def _verified_twilio_org(request: HttpRequest, raw: bytes, *, number: str) -> Organization | HttpResponse:
    """The organization owning `number` on the signing account, or the 403 to answer."""
    org = _twilio_org(request, number=number)
    if org is None or not _twilio_verified(request, org):
        return forbidden("twilio", "unknown AccountSid or invalid X-Twilio-Signature", raw)
    return org


@csrf_exempt
@require_POST
def twilio_status(request: HttpRequest) -> HttpResponse:
    raw = request.body  # read before request.POST consumes the stream; kept for the audit row
    org = _verified_twilio_org(request, raw, number=request.POST.get("From", ""))  # our number sent it
    if isinstance(org, HttpResponse):
        return org
    status = TWILIO_STATUSES.get(request.POST.get("MessageStatus", ""))
    sid = _provider_id(request.POST.get("MessageSid", ""))
    if status and sid:
        code = clean_text(request.POST.get("ErrorCode", ""), 32)
        with _processing("twilio", raw, org):
            receipts.enqueue(org, [
                receipts.StatusReport(
                    channel=Channel.SMS, provider_message_id=sid, status=status, at=timezone.now(),
                    callback=CALLBACK_PREFIX + clean_text(request.GET.get("m", ""), 20), error_code=code,
                    error_title=f"Twilio error {code}" if code else "",
                ),
            ])
    return HttpResponse(status=204)


@csrf_exempt
@require_POST
def twilio_inbound(request: HttpRequest) -> HttpResponse:
    raw = request.body  # read before request.POST consumes the stream; kept for the audit row
    org = _verified_twilio_org(request, raw, number=request.POST.get("To", ""))  # our number received it
    if isinstance(org, HttpResponse):
        return org
    sid, sender = _provider_id(request.POST.get("MessageSid", "")), request.POST.get("From", "")
    if sid and sender.startswith("+") and _e164_digits(sender[1:]):
        with _processing("twilio", raw, org):
            receipts.receive(
                org,
                receipts.Inbound(channel=Channel.SMS, provider_message_id=sid, phone=sender,
                                 body=clean_text(request.POST.get("Body", ""), 10_000), at=timezone.now()),
            )
    return HttpResponse(EMPTY_TWIML, content_type="text/xml")
