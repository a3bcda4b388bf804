"""`GET|POST /webhooks/meta/leadgen`: Meta Lead Ads' leadgen webhook.

The deployment has one Meta app that every organization's pages subscribe to,
so the app secret and verify token are settings (META_APP_SECRET,
META_VERIFY_TOKEN), and the page id routes each lead to its organization.
Every POST is checked before anything else: `X-Hub-Signature-256` must be
`sha256=` + HMAC-SHA256(app secret, raw body), compared in constant time.
Unsigned or wrongly signed: 403, and nothing but an audit row (admin →
Webhook deliveries). A signed delivery is answered 200 only once each of its
leadgen ids is a committed `MetaLeadgen` row; the Graph fetch runs on the
first-touch lane after that commit, so the answer is fast.
"""

from __future__ import annotations

import hmac
import json
import logging

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from conversations.models import WebhookDelivery
from conversations.webhooks import audit, forbidden, meta_signature_valid
from metaleads import mapping, services
from metaleads.models import MetaPage
from swiftex import metrics

logger = logging.getLogger(__name__)

PROVIDER = "meta_leadgen"


@csrf_exempt
@require_http_methods(["GET", "POST"])
def leadgen(request: HttpRequest) -> HttpResponse:
    if request.method == "GET":
        return _verify_subscription(request)
    raw = request.body
    if not settings.META_APP_SECRET:
        return forbidden(PROVIDER, "META_APP_SECRET is not set: every delivery is refused", raw)
    if not meta_signature_valid(raw, request.headers.get("X-Hub-Signature-256", ""), {settings.META_APP_SECRET}):
        return forbidden(PROVIDER, "missing or invalid X-Hub-Signature-256", raw)
    try:
        payload = json.loads(raw)
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        audit(PROVIDER, WebhookDelivery.Outcome.FAILED, "signed, but the body is not a JSON object", raw)
        return HttpResponse("Bad request: the body is not a JSON object", status=400, content_type="text/plain")

    values = list(_leadgen_values(payload))
    pages = {p.page_id: p for p in MetaPage.objects.select_related("organization").filter(
        page_id__in={_page_id(entry, value) for entry, value in values}, active=True)}
    items, unknown = [], set()
    for entry, value in values:
        page = pages.get(_page_id(entry, value))
        if page is None or not value.get("leadgen_id"):
            unknown.add(_page_id(entry, value))
            continue
        items.append(services.Leadgen(
            page=page, leadgen_id=str(value["leadgen_id"]), form_id=str(value.get("form_id") or ""),
            ad_id=str(value.get("ad_id") or ""), created_at=mapping.created_at(value),
        ))
    try:
        services.record(items)
    except Exception as exc:
        # Answered 500 so Meta retries; the body is kept for a human.
        audit(PROVIDER, WebhookDelivery.Outcome.FAILED, f"{type(exc).__name__}: {exc}", raw)
        raise
    if unknown:
        # Meta would redeliver these forever; a human connects the page (admin → Meta pages).
        detail = f"leads for pages not connected (or inactive, or without leadgen_id): {', '.join(sorted(unknown))[:200]}"
        logger.warning("meta leadgen webhook: %s", detail)
        audit(PROVIDER, WebhookDelivery.Outcome.FAILED, detail, raw)
    metrics.WEBHOOKS.labels(provider=PROVIDER, outcome=WebhookDelivery.Outcome.PROCESSED).inc()
    return HttpResponse("ok", content_type="text/plain")


def _verify_subscription(request: HttpRequest) -> HttpResponse:
    """Meta's handshake when the app's webhook is set up: echo hub.challenge if the token is ours."""
    mode = request.GET.get("hub.mode", "")
    token = request.GET.get("hub.verify_token", "")
    challenge = request.GET.get("hub.challenge", "")
    known = bool(settings.META_VERIFY_TOKEN) and hmac.compare_digest(token.encode(), settings.META_VERIFY_TOKEN.encode())
    if mode != "subscribe" or not known or not challenge:
        logger.warning("meta leadgen verification refused (mode=%r)", mode)
        return HttpResponse("Forbidden: verify token does not match", status=403, content_type="text/plain")
    return HttpResponse(challenge, content_type="text/plain")


def _leadgen_values(payload: dict):
    """(entry, value) for every leadgen change of every entry (Meta batches them)."""
    for entry in payload.get("entry") or []:
        if isinstance(entry, dict):
            for change in entry.get("changes") or []:
                if isinstance(change, dict) and change.get("field") == "leadgen" and isinstance(change.get("value"), dict):
                    yield entry, change["value"]


def _page_id(entry: dict, value: dict) -> str:
    return str(value.get("page_id") or entry.get("id") or "")
