"""A generic signed webhook: batches of contacts POSTed as JSON to the customer's URL.

Each request carries `X-Swiftex-Timestamp` (Unix seconds) and
`X-Swiftex-Signature: sha256=<hex>`, the HMAC-SHA256 of
`<timestamp>.<raw body>` with the organization's secret. The receiver
recomputes it, compares in constant time and rejects old timestamps (five
minutes is usual), so a captured request cannot be replayed later.

The body is `{"delivery_id": ..., "contacts": [...]}`; each contact carries
its `version`, which grows with every change, so a receiver can drop a
repeated delivery (a retry after a lost answer) or an older state arriving
late. Any 2xx accepts the whole batch; the record id is our contact id. 429
with Retry-After pauses the account, other 4xx (but 408) refuse the batch,
5xx, 408 and network failures are retried.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid

from conversations.providers.base import ProviderError, post, retry_after_seconds
from crmsync.adapters.base import (
    MAX_BATCH, Accepted, AccountRefused, BatchRefused, Outcome, RateLimited, Snapshot, Transient, iso,
)
from swiftex import metrics

PROVIDER = "crm_webhook"
SIGNATURE_HEADER = "X-Swiftex-Signature"
TIMESTAMP_HEADER = "X-Swiftex-Timestamp"


def sign(secret: str, timestamp: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


class SignedWebhook:
    kind = "webhook"
    max_batch = MAX_BATCH

    def __init__(self, org) -> None:
        self.url = org.crm_webhook_url
        self.secret = org.crm_webhook_secret
        self.organization_id = org.pk

    def account(self) -> str:
        return f"webhook:{self.organization_id}:" + hashlib.sha256(self.url.encode()).hexdigest()[:16]

    def identify(self, snapshot: Snapshot) -> tuple[str, str]:
        return "contact_id", str(snapshot.contact_id)

    def push(self, snapshots: list[Snapshot]) -> dict[int, Outcome]:
        payload = {"delivery_id": str(uuid.uuid4()), "contacts": [_contact(s) for s in snapshots]}
        body = json.dumps(payload, separators=(",", ":")).encode()
        timestamp = str(int(time.time()))
        headers = {"Content-Type": "application/json", TIMESTAMP_HEADER: timestamp,
                   SIGNATURE_HEADER: sign(self.secret, timestamp, body)}
        try:
            response = post(PROVIDER, self.url, data=body, headers=headers)
        except ProviderError as exc:
            if exc.permanent:  # the base title names no URL or secret
                raise AccountRefused(f"webhook: {exc.title}") from None
            # Not the exception's text: it can quote the URL, and a URL may carry the receiver's token.
            what = "no answer, or the connection was lost, after sending" if exc.maybe_delivered else "could not connect"
            raise Transient(f"webhook: {what}") from exc
        status = response.status_code
        if 200 <= status < 300:
            return {s.sync_id: Accepted(str(s.contact_id)) for s in snapshots}
        metrics.provider_error(PROVIDER, status)
        message = f"HTTP {status}: {response.text[:200]}".strip(": ")
        if status == 429:
            raise RateLimited(message, status_code=status, retry_after=retry_after_seconds(response) or 1.0)
        if status in (401, 403):
            raise AccountRefused(message, status_code=status)
        if 400 <= status < 500 and status != 408:
            raise BatchRefused(message, status_code=status)
        raise Transient(message, status_code=status, retry_after=retry_after_seconds(response))


def _contact(s: Snapshot) -> dict:
    return {
        "contact_id": s.contact_id, "version": s.version, "lead_id": s.lead_id, "name": s.name, "email": s.email, "phone": s.phone,
        "messaging_consent": s.consent, "status": s.status, "source": s.source, "campaign": s.campaign,
        "captured_at": iso(s.captured_at) or None, "first_response_at": iso(s.first_response_at) or None,
        "first_reply_at": iso(s.first_reply_at) or None,
    }
