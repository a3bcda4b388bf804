"""Messages a rep writes to a lead from the lead page.

WhatsApp allows free-form text only inside the 24-hour customer-service
window; outside it the rep's text goes as the parameter of the
organization's approved template (or, if the template has none, the
template alone). `options()` tells the page which of the two it may offer,
`queue()` refuses anything else with a message the rep can act on.

The form carries a random token, unique on the message: a double click or a
resubmitted form finds the message already queued instead of sending twice.
The message is delivered from the conversations lane (`tasks.send_rep_message`)
through outbound.deliver, so it follows the same exactly-once and retry rules
as every other message; a message whose task was never published (broker
down at that moment) is picked up by the reply sweep.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from conversations import timeline
from conversations.models import Channel, Conversation, Message
from conversations.outbound import channel_configured, deliver
from conversations.services import conversation_for
from leads.models import Lead, Organization

logger = logging.getLogger(__name__)

MAX_LENGTH = 4096  # WhatsApp's text limit; Twilio splits longer SMS itself, up to 1,600 characters
SMS_MAX_LENGTH = 1600
NEVER_PUBLISHED_AFTER = timedelta(seconds=30)


class CannotSend(Exception):
    """Why the rep's message cannot go, in words for the rep."""


@dataclass(frozen=True)
class Options:
    channel: str | None  # None: no channel can reach the lead
    window_open: bool
    template: str  # the template a closed window requires ("" if none is configured)
    template_takes_text: bool
    blocked: str  # why nothing can be sent ("" if something can)


def options(lead: Lead) -> Options:
    org, contact = lead.organization, lead.contact
    channel = _channel(org, contact.pk, bool(contact.phone))
    conversation = Conversation.objects.filter(contact_id=contact.pk, channel=channel).first() if channel else None
    window = bool(conversation and conversation.window_open())
    template = org.whatsapp_template_name if channel == Channel.WHATSAPP and not window else ""
    blocked = ""
    if not contact.consent:
        blocked = "This contact has opted out (or never opted in): no message can be sent."
    elif channel is None:
        blocked = "No channel reaches this contact: they have no phone number, or neither WhatsApp nor SMS is configured."
    elif channel == Channel.WHATSAPP and not window and not template:
        blocked = "WhatsApp's 24-hour window is closed and no approved template is configured for this organization."
    return Options(channel, window, template, org.whatsapp_template_has_parameter, blocked)


def mode(opts: Options) -> str:
    """What the reply box offered (channel, and the template a closed window needs): the form
    carries it back, so a window that opened or closed meanwhile is noticed, not guessed."""
    return f"{opts.channel or ''}:{opts.template}"


def queue(*, lead: Lead, rep, body: str, token: uuid.UUID, offered: str | None = None, now: datetime | None = None) -> Message:
    """Store the rep's message QUEUED (once per token) and have it sent after commit.

    `offered`: the form's `mode()`; if the lead's options changed since the page was drawn
    (the 24-hour window closed, say), nothing is sent and the rep is told to look again."""
    now = now or timezone.now()
    body = body.strip()
    existing = Message.objects.filter(client_token=token).first()
    if existing is not None:
        if existing.lead_id != lead.pk or existing.body not in ("", body):
            raise CannotSend("This form was already sent with another message; reload the page to write a new one.")
        return existing  # a double click or a resubmitted form
    opts = options(lead)
    if opts.blocked:
        raise CannotSend(opts.blocked)
    if offered is not None and offered != mode(opts):
        raise CannotSend("Since this page was opened, " + (
            "WhatsApp's 24-hour window closed, so the message would go as a template" if opts.template else
            "the way this message can go changed") + ": nothing was sent. Check the reply box and send again.")
    if not body and not (opts.template and not opts.template_takes_text):
        raise CannotSend("Write a message first.")
    limit = SMS_MAX_LENGTH if opts.channel == Channel.SMS else MAX_LENGTH
    if len(body) > limit:
        raise CannotSend(f"The message is {len(body)} characters; {opts.channel} takes at most {limit}.")
    if opts.template and not opts.template_takes_text:
        body = ""  # the template is sent as approved; nothing of the rep's text would reach the lead
    conversation = conversation_for(lead, opts.channel)
    with transaction.atomic():
        message, created = Message.objects.get_or_create(
            client_token=token,
            defaults={
                "organization_id": lead.organization_id, "conversation": conversation, "lead": lead, "sent_by": rep,
                "direction": Message.Direction.OUTBOUND, "channel": opts.channel, "body": body,
                "template_name": opts.template, "status": Message.Status.QUEUED, "created_at": now,
            },
        )
        if created:
            timeline.record(lead.pk, ("message.written", {
                "by": str(rep), "channel": opts.channel, "template": opts.template or None, "message_id": message.pk,
            }, now))
            transaction.on_commit(lambda: _publish(message.pk))
    return message


def _publish(message_id: int) -> None:
    from conversations.tasks import send_rep_message

    try:
        send_rep_message.apply_async(kwargs={"message_id": message_id}, retry=False)
    except Exception as exc:  # noqa: BLE001 - the broker is down: the sweep sends it
        logger.warning("rep message %s not published (%s); the reply sweep will send it", message_id, type(exc).__name__)


def send(message_id: int) -> None:
    """Deliver a queued rep message (conversations lane). Raises RetryLater on a transient failure."""
    message = Message.objects.select_related("conversation__contact", "organization").filter(pk=message_id).first()
    if message is None or message.status != Message.Status.QUEUED:
        return
    deliver(message, message.organization, phone=message.conversation.contact.phone)


def never_published(*, now: datetime | None = None, limit: int = 200) -> list[int]:
    """Rep messages still QUEUED that no task will send: without a single attempt long after
    they were written (the broker was down), or back in QUEUED after a failed attempt for
    longer than any retry waits (the retry's task was lost, or Celery gave up on it)."""
    now = now or timezone.now()
    abandoned = now - timedelta(seconds=settings.SEND_RETRY_BACKOFF_MAX_SECONDS * 2 + 60)
    return list(
        Message.objects.filter(sent_by__isnull=False, status=Message.Status.QUEUED)
        .filter(Q(attempts=0, created_at__lt=now - NEVER_PUBLISHED_AFTER) | Q(attempts__gt=0, sending_at__lt=abandoned))
        .order_by("created_at").values_list("pk", flat=True)[:limit]
    )


def _channel(org: Organization, contact_id: int, has_phone: bool) -> str | None:
    """The channel the lead was last talked to on, else WhatsApp, else SMS (whichever is configured)."""
    if not has_phone:
        return None
    last = (
        Message.objects.filter(conversation__contact_id=contact_id)
        .exclude(status=Message.Status.FAILED).order_by("-created_at").values_list("channel", flat=True).first()
    )
    for channel in filter(None, (last, Channel.WHATSAPP, Channel.SMS)):
        if channel_configured(org, channel):
            return channel
    return None
