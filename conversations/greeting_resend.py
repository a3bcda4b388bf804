"""Sending a lead's greeting again (admin), when it failed or never went out.

The first touch's exactly-once rule is the `Greeting` row, unique per lead:
whoever inserts it sends the greeting, everyone else only resumes it. A
resend therefore works by removing a greeting that can no longer reach the
lead, and handing the lead to the ordinary first-touch task, which claims a
fresh greeting under the same unique key (a late redelivery of the original
event competes for that same claim, so there is still one greeting).

A greeting is removed only when every message of it definitely did not reach
the lead: FAILED, and neither failed by the "no answer" sweep (code
`timeout`: the provider may have it) nor ever reported sent, delivered or
read. Anything still queued, sending or accepted, or a greeting that is
done, is left alone. The greeting's row is locked first, as the SMS fallback
locks it before adding its message, so the two cannot interleave.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

from django.db import transaction
from django.utils import timezone

from conversations import timeline
from conversations.models import Greeting, Message
from conversations.providers import twilio, whatsapp
from leads.models import Lead

logger = logging.getLogger(__name__)

# A failure that does not prove the message stayed with us (see services.expire_unsent_greetings).
MAYBE_DELIVERED_CODE = "timeout"


@dataclass(frozen=True)
class Outcome:
    queued: bool
    reason: str = ""  # why not, worded for the person who asked


def resend(lead: Lead, *, by: str) -> Outcome:
    """Queue a new first touch for `lead` (organization and contact loaded), or say why not."""
    if lead.status not in Lead.OPEN_STATUSES:
        return Outcome(False, f"the lead is {lead.get_status_display().lower()}")
    if not lead.contact.consent:
        return Outcome(False, "the contact has not opted in to WhatsApp/SMS (or opted out)")
    if not lead.contact.phone:
        return Outcome(False, "the contact has no phone number")
    if not (whatsapp.is_configured(lead.organization) or twilio.is_configured(lead.organization)):
        return Outcome(False, "neither WhatsApp nor Twilio is configured for the organization")
    enqueue_failed: list[Exception] = []
    with transaction.atomic():
        greeting = Greeting.objects.select_for_update().filter(lead_id=lead.pk).first()
        previous = None
        if greeting is not None:
            messages = list(greeting.messages.order_by("pk"))
            if why := _still_may_reach(greeting, messages):
                return Outcome(False, why)
            previous = {
                "state": greeting.state, "reason": greeting.reason,
                "messages": [{"channel": m.channel, "error_code": m.error_code, "error": m.error_title} for m in messages],
            }
            greeting.delete()  # its failed messages go with it (cascade); the timeline keeps their story
        timeline.record(lead.pk, ("greeting.resend_requested", {"by": by, "previous": previous}, timezone.now()))
        transaction.on_commit(lambda: _enqueue(lead.pk, enqueue_failed))
    if enqueue_failed:
        return Outcome(False, "it could not be queued (the message broker is unreachable); nothing is in flight, try again")
    return Outcome(True)


def _still_may_reach(greeting: Greeting, messages: list[Message]) -> str:
    """Why this greeting might still reach (or has reached) the lead; "" if it cannot."""
    if greeting.state not in (Greeting.State.FAILED, Greeting.State.SKIPPED):
        return f"its greeting is {greeting.get_state_display().lower()}"
    for message in messages:
        if message.status != Message.Status.FAILED:
            return f"its {message.channel} message is {message.get_status_display().lower()}"
        if message.sent_at or message.delivered_at or message.read_at:
            return f"the provider reported its failed {message.channel} message as sent or delivered"
        if message.error_code == MAYBE_DELIVERED_CODE:
            return f"its {message.channel} message got no answer from the provider and may have arrived"
    return ""


def _enqueue(lead_id: int, failed: list[Exception]) -> None:
    from conversations.tasks import first_touch  # the task module imports the whole sending stack

    try:
        # A new event id: the first-touch ledger only keeps the timeline's "started" to one per event.
        first_touch.apply_async(kwargs={"event_id": str(uuid.uuid4()), "lead_id": lead_id, "published_at": None})
    except Exception as exc:  # noqa: BLE001 - the admin is told; the lead can be resent again
        logger.exception("greeting resend for lead %s could not be queued", lead_id)
        failed.append(exc)
