"""What a rep does on a lead page: reply, or move the lead's status. Each is a human action,
so it also stops the lead's escalation (routing.services.record_action)."""

from __future__ import annotations

import uuid

from django.db import transaction
from django.utils import timezone

from conversations import followups, rep_messages, timeline
from conversations.models import Message
from leads.models import Lead
from routing import services as routing
from routing.models import Rep
from swiftex.events import emit

CLOSED = (Lead.Status.WON, Lead.Status.LOST)


class NotAllowed(Exception):
    """The change asked for cannot be made, in words for the rep."""


def stays_closed(lead: Lead) -> str:
    return f"The lead is already {lead.get_status_display().lower()}; closed leads stay closed (a new submission opens a new lead)."


def reply(*, lead: Lead, rep: Rep, body: str, token: uuid.UUID, offered: str | None = None) -> Message:
    message = rep_messages.queue(lead=lead, rep=rep, body=body, token=token, offered=offered)
    routing.record_action(lead.pk)
    return message


def change_status(*, lead: Lead, by: str, status: str, reason: str = "rep") -> None:
    """Move the lead to `status` with everything that goes with it: closed_at, the timeline,
    follow-ups cancelled on close, the event, escalation stopped. `by`: who, as shown on the
    timeline; `reason`: who, in the event ("rep" from the rep pages, "admin" from admin)."""
    if status not in Lead.Status.values:
        raise NotAllowed(f"{status!r} is not a lead status.")
    now = timezone.now()
    with transaction.atomic():
        locked = Lead.objects.select_for_update().get(pk=lead.pk)
        if locked.status == status:
            return
        if locked.status in CLOSED:
            raise NotAllowed(stays_closed(locked))
        Lead.objects.filter(pk=lead.pk).update(status=status, closed_at=now if status in CLOSED else None)
        timeline.record(lead.pk, ("lead.status_changed", {"from": locked.status, "to": status, "by": by}, now))
        if status in CLOSED:
            followups.cancel(lead_ids=[lead.pk], reason=f"the lead was marked {status} by {by}")
        emit("lead.status_changed", organization_id=lead.organization_id, data={"lead_id": lead.pk, "status": status, "reason": reason})
        routing.record_action(lead.pk, now)
    lead.status = status
