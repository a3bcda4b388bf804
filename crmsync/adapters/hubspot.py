"""HubSpot: batch upsert of contacts.

`POST {HUBSPOT_API_URL}/crm/v3/objects/contacts/batch/upsert` with the
organization's private-app token, at most 100 inputs. A contact is named by
its email, or, without one, by its E.164 phone in a unique custom property
(`Organization.hubspot_phone_property`); once a record is created that choice
is kept, so a phone-only contact who later gives an email stays one record.
`objectWriteTraceId` carries our sync id and comes back on each result, which
is how results are matched to contacts.

The custom properties (`swiftex_*` below, and the phone property) must exist
in the HubSpot account; README › "Pointing it at real providers" lists them.
"""

from __future__ import annotations

import hashlib

from django.conf import settings

from conversations.providers.base import ProviderError, post, retry_after_seconds
from crmsync.adapters.base import (
    MAX_BATCH, Accepted, AccountRefused, BatchRefused, Outcome, RateLimited, Refused, Snapshot, Transient, iso,
)
from swiftex import metrics

PROVIDER = "hubspot"
DAILY_PAUSE_SECONDS = 3600.0


class HubSpot:
    kind = "hubspot"
    max_batch = MAX_BATCH

    def __init__(self, org) -> None:
        self.token = org.hubspot_access_token
        self.phone_property = org.hubspot_phone_property

    def account(self) -> str:
        return "hubspot:" + hashlib.sha256(self.token.encode()).hexdigest()[:16]

    def identify(self, snapshot: Snapshot) -> tuple[str, str]:
        if snapshot.id_property and snapshot.pinned_by == self.kind:
            return snapshot.id_property, snapshot.id_value
        if snapshot.email:
            return "email", snapshot.email
        return self.phone_property, snapshot.phone or ""

    def properties(self, snapshot: Snapshot) -> dict[str, str]:
        props = {
            "swiftex_lead_status": snapshot.status,
            "swiftex_source": snapshot.source,
            "swiftex_campaign": snapshot.campaign,
            "swiftex_captured_at": iso(snapshot.captured_at),
            "swiftex_first_response_at": iso(snapshot.first_response_at),
            "swiftex_first_reply_at": iso(snapshot.first_reply_at),
            "swiftex_messaging_consent": "true" if snapshot.consent else "false",
        }
        # Names only when we have them: an empty value would clear what a rep typed in HubSpot.
        first, _, last = snapshot.name.strip().partition(" ")
        if first:
            props["firstname"] = first
        if last.strip():
            props["lastname"] = last.strip()
        if snapshot.email:
            props["email"] = snapshot.email
        if snapshot.phone:
            props["phone"] = snapshot.phone
            props[self.phone_property] = snapshot.phone
        return props

    def push(self, snapshots: list[Snapshot]) -> dict[int, Outcome]:
        id_property = self.identify(snapshots[0])[0]
        inputs = []
        for snapshot in snapshots:
            prop, value = self.identify(snapshot)
            assert prop == id_property, "one request carries one id property"
            inputs.append({"idProperty": prop, "id": value, "objectWriteTraceId": str(snapshot.sync_id),
                           "properties": self.properties(snapshot)})
        url = f"{settings.HUBSPOT_API_URL}/crm/v3/objects/contacts/batch/upsert"
        try:
            response = post(PROVIDER, url, json={"inputs": inputs}, headers={"Authorization": f"Bearer {self.token}"})
        except ProviderError as exc:
            if exc.permanent:  # the token or base URL cannot make a request at all: retrying cannot help
                raise AccountRefused(f"HubSpot: {exc.title}") from None
            raise Transient(exc.title) from exc  # an upsert is safe to repeat, even if it may have landed
        status = response.status_code
        body = _json(response)
        if status in (200, 201, 207):
            return _outcomes(snapshots, inputs, body)
        metrics.provider_error(PROVIDER, status)
        message = _message(body, status)
        if status == 429:
            daily = body.get("policyName") == "DAILY"  # the day's allowance is spent: hours, not seconds
            raise RateLimited(message, status_code=status, retry_after=DAILY_PAUSE_SECONDS if daily else _pause_seconds(response))
        if status in (401, 403):
            raise AccountRefused(message, status_code=status)
        if status in TRANSIENT_4XX:
            after = retry_after_seconds(response)
            raise Transient(message, status_code=status, retry_after=max(after or 0.0, 2.0) if status == 423 else after)
        if 400 <= status < 500:
            raise BatchRefused(message, status_code=status)
        raise Transient(message, status_code=status, retry_after=retry_after_seconds(response))


# 4xx answers that are not about the contacts: a request timeout; 423 Locked, concurrent
# writes to one record ("include a delay of at least 2 seconds"); 477 Migration in
# Progress, the portal is being moved (with a Retry-After). Refusing the batch would
# split it in halves that get the same answer and fail every contact in it.
TRANSIENT_4XX = {408, 423, 477}


def _json(response) -> dict:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _message(body: dict, status: int) -> str:
    text = body.get("message") if isinstance(body.get("message"), str) else ""
    category = body.get("category") or body.get("errorType") or ""
    return f"HTTP {status} {category}: {text}".strip(": ") if text or category else f"HTTP {status}"


def _pause_seconds(response) -> float:
    """Retry-After, else HubSpot's rate-limit window (X-HubSpot-RateLimit-Interval-Milliseconds:
    waiting a whole window is sure to find room), else a second."""
    after = retry_after_seconds(response)
    if after is not None:
        return max(after, 0.1)
    try:
        return max(0.1, float(response.headers.get("X-HubSpot-RateLimit-Interval-Milliseconds", "")) / 1000)
    except ValueError:
        return 1.0


def _outcomes(snapshots: list[Snapshot], inputs: list[dict], body: dict) -> dict[int, Outcome]:
    """Results by objectWriteTraceId, else by the id property's value; with a 207, what has no
    result was refused with the errors' messages."""
    by_value = {_key(i["idProperty"], i["id"]): int(i["objectWriteTraceId"]) for i in inputs}
    outcomes: dict[int, Outcome] = {}
    for result in body.get("results") or []:
        if not isinstance(result, dict) or result.get("id") is None:
            continue
        trace = str(result.get("objectWriteTraceId", ""))
        if trace.isdigit():
            sync_id = int(trace)
        else:
            properties = result.get("properties") if isinstance(result.get("properties"), dict) else {}
            prop = inputs[0]["idProperty"]
            sync_id = by_value.get(_key(prop, str(properties.get(prop, ""))))
        if sync_id is not None:
            outcomes[sync_id] = Accepted(str(result["id"]))
    errors = [e for e in body.get("errors") or [] if isinstance(e, dict)]
    if errors:
        # Each error goes to the contact its context names; never another contact's message (it
        # can quote their e-mail, and a rep may read only their own leads' timelines).
        batch_errors = "; ".join(str(e.get("message") or e.get("category") or "") for e in errors)[:2000]
        traces = {i["objectWriteTraceId"]: int(i["objectWriteTraceId"]) for i in inputs}
        prop = inputs[0]["idProperty"]
        for error in errors:
            message = str(error.get("message") or error.get("category") or "refused by HubSpot")[:300]
            for value in _context_values(error):
                sync_id = traces.get(value) or by_value.get(_key(prop, value))
                if sync_id is not None and sync_id not in outcomes:
                    outcomes[sync_id] = Refused(message, batch_errors)
        unnamed = Refused(f"refused by HubSpot in a batch with {len(errors)} error(s) naming no contact; "
                          "CRM sync › CRM pushes has them", batch_errors)
        for snapshot in snapshots:
            outcomes.setdefault(snapshot.sync_id, unnamed)
    return outcomes  # a snapshot missing here was neither accepted nor refused: the pusher retries it


def _context_values(error: dict) -> list[str]:
    """The strings of an error's context ({"objectWriteTraceId": ["17"], "id": ["a@b.co"], ...})."""
    context = error.get("context") if isinstance(error.get("context"), dict) else {}
    values = []
    for value in context.values():
        values += [str(v) for v in (value if isinstance(value, list) else [value]) if isinstance(v, (str, int))]
    return values


def _key(prop: str, value: str) -> tuple[str, str]:
    return prop, value.lower() if prop == "email" else value
