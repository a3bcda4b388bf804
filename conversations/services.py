"""Writes for conversations."""

from __future__ import annotations

import logging

from django.utils import timezone

from leads.models import Lead, LeadEvent
from swiftex.events.idempotency import handle_once

logger = logging.getLogger(__name__)

FIRST_TOUCH_CONSUMER = "conversations.first_touch"


def first_touch_start(*, event_id: str, lead_id: int) -> bool:
    """Record that the first-touch lane picked the lead up, exactly once per event.

    This is where the greeting is produced and sent (issue #3); the timeline
    entry carries how long the lead waited between capture and pickup.
    """

    def effect() -> None:
        lead = Lead.objects.select_for_update().only("id", "captured_at").get(pk=lead_id)
        now = timezone.now()
        LeadEvent.objects.create(
            lead=lead,
            kind="first_touch.started",
            occurred_at=now,
            data={"waited_ms": round((now - lead.captured_at).total_seconds() * 1000, 1)},
        )

    handled = handle_once(FIRST_TOUCH_CONSUMER, event_id, effect)
    if not handled:
        logger.info("first touch for lead %s already handled (event %s)", lead_id, event_id)
    return handled
