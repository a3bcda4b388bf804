"""crmsync event subscriber: changes to a lead or its conversation queue its contact for the CRM.

`lead.created`, `lead.status_changed` and `message.received` (the lead's
first reply is a milestone the CRM shows) mark the contact changed, one
statement per batch, in the same transaction as the processed-event ledger,
so a redelivered batch queues nothing twice and a crash between the two
loses nothing. Organizations without a CRM queue nothing.
"""

from __future__ import annotations

from django.db import transaction

from crmsync import queue
from swiftex.events.idempotency import record_processed

CONSUMER = "crmsync"


def handle_events(events: list[dict]) -> None:
    with transaction.atomic():
        new = record_processed(CONSUMER, [event["id"] for event in events])
        queue.mark_changed([
            event["data"]["lead_id"] for event in events
            if event["id"] in new and isinstance(event.get("data"), dict) and isinstance(event["data"].get("lead_id"), int)
        ])
