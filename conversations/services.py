"""Writes for conversations."""

from __future__ import annotations

import logging

from django.db import connection
from django.utils import timezone

from leads.models import Lead, LeadEvent
from swiftex.events.idempotency import LEDGER

logger = logging.getLogger(__name__)

FIRST_TOUCH_CONSUMER = "conversations.first_touch"

# Ledger row and timeline entry in one statement: atomic without a transaction,
# and a redelivered event finds the ledger row and writes nothing.
_FIRST_TOUCH_SQL = f"""
WITH ledger AS (
    INSERT INTO {LEDGER} (consumer, event_id, processed_at) VALUES (%(consumer)s, %(event_id)s, %(now)s)
    ON CONFLICT (consumer, event_id) DO NOTHING
    RETURNING 1
)
INSERT INTO {LeadEvent._meta.db_table} (lead_id, kind, data, occurred_at)
SELECT lead.id, 'first_touch.started',
       jsonb_build_object('waited_ms', round((EXTRACT(EPOCH FROM %(now)s - lead.captured_at) * 1000)::numeric, 1)),
       %(now)s
FROM ledger, {Lead._meta.db_table} AS lead
WHERE lead.id = %(lead_id)s
RETURNING id
"""


def first_touch_start(*, event_id: str, lead_id: int) -> bool:
    """Record that the first-touch lane picked the lead up, exactly once per event.

    This is where the greeting is produced and sent (issue #3); the timeline
    entry carries how long the lead waited between capture and pickup.
    Returns False when the event was already handled or the lead is gone.
    """
    params = {"consumer": FIRST_TOUCH_CONSUMER, "event_id": event_id, "lead_id": lead_id, "now": timezone.now()}
    with connection.cursor() as cursor:
        cursor.execute(_FIRST_TOUCH_SQL, params)
        handled = cursor.fetchone() is not None
    if not handled:
        logger.info("first touch for lead %s: already handled or lead gone (event %s)", lead_id, event_id)
    return handled
