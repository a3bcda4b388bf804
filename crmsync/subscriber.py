"""crmsync event subscriber: changes to a lead or its conversation queue its contact for the CRM.

`lead.created`, `lead.imported` (a chunk of a CSV import), `lead.status_changed`,
`message.received` (the lead's first reply is a milestone the CRM shows) and
`contact.updated` (a repeat submission or an admin added a name, an e-mail, a
phone or consent) mark the contact changed, one
statement per batch, in the same transaction as the processed-event ledger,
so a redelivered batch queues nothing twice and a crash between the two
loses nothing. Organizations without a CRM queue nothing.
"""

from __future__ import annotations

from django.db import transaction

from crmsync import queue
from swiftex.events import lead_ids_of
from swiftex.events.idempotency import record_processed

CONSUMER = "crmsync"


def handle_events(events: list[dict]) -> None:
    with transaction.atomic():
        new = record_processed(CONSUMER, [event["id"] for event in events])
        data = [event["data"] for event in events if event["id"] in new and isinstance(event.get("data"), dict)]
        queue.mark_changed(
            lead_ids=sorted(lead_ids_of(data)),
            # A message from a contact with no open lead (a STOP after the deal closed) still
            # changes what the CRM shows: their consent.
            contact_ids=[d["contact_id"] for d in data if isinstance(d.get("contact_id"), int)],
        )
