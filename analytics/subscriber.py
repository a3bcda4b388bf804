"""analytics event subscriber: every event about a lead refreshes that lead's facts.

A batch (up to 100 events, gathered by the bulk lane's consumer) costs three
statements whatever its size: the processed-event ledger, the per-organization
lock and the refresh (analytics/services.py), all in one transaction, so a
redelivered batch does nothing twice and a crash between them loses nothing.

The events that carry a lead: `lead.created`, `lead.status_changed` (the
first response, a rep's status change), `lead.reassigned`,
`message.received` (a reply), `message.failed`, `message.statuses` (one
per batch of delivery receipts, listing the leads whose messages were
delivered or read) and `lead.imported` (a chunk of a CSV import; imported
leads are left out of the facts, see services.py). Events without a lead are
recorded and ignored.
"""

from __future__ import annotations

from django.db import transaction

from analytics import services
from swiftex.events import lead_ids_of
from swiftex.events.idempotency import record_processed

CONSUMER = "analytics"


def handle_events(events: list[dict]) -> None:
    with transaction.atomic():
        new = record_processed(CONSUMER, [event["id"] for event in events])
        services.refresh(lead_ids_of(event["data"] for event in events if event["id"] in new))
