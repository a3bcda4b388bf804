"""Sending every message after the greeting: replies, follow-ups, the opt-out confirmation.

The greeting's exactly-once rules (services.py) hold here too, on the same
columns: a message is created QUEUED once for what it carries (unique per
Reply and per ScheduledJob), moved to SENDING by one conditional UPDATE before
the provider is called, never resent from SENDING, and put back to QUEUED only
when the provider definitely did not take it (the caller's task retries after
`RetryLater`). Consent is read from the database right before each call: a
STOP that arrived a moment ago blocks the message. The opt-out confirmation is
the one message sent without consent, by design.
"""

from __future__ import annotations

import logging

from django.db import IntegrityError, transaction
from django.utils import timezone

from conversations import timeline
from conversations.models import Channel, Conversation, Message, Reply, ScheduledJob
from conversations.providers import ProviderError, twilio, whatsapp
from conversations.services import (
    CALLBACK_PREFIX, fail_message, release_db_connection, settle_failed_attempt, status_callback_url, take_for_sending,
)
from leads.models import Contact, Organization
from swiftex import metrics
from swiftex.db import prepared_cursor

logger = logging.getLogger(__name__)


def queue(*, conversation: Conversation, lead_id: int | None, body: str, template_name: str = "",
          reply: Reply | None = None, scheduled_job: ScheduledJob | None = None) -> Message:
    """The QUEUED message carrying `reply` or `scheduled_job`: created once, found again on a redelivery."""
    owner = {"reply": reply} if reply is not None else {"scheduled_job": scheduled_job}
    try:
        with transaction.atomic():
            message, _ = Message.objects.get_or_create(
                **owner,
                defaults={
                    "organization_id": conversation.organization_id, "conversation": conversation, "lead_id": lead_id,
                    "direction": Message.Direction.OUTBOUND, "channel": conversation.channel, "body": body,
                    "template_name": template_name, "status": Message.Status.QUEUED, "created_at": timezone.now(),
                },
            )
    except IntegrityError:  # a concurrent delivery created it between our SELECT and INSERT
        message = Message.objects.get(**owner)
    return message


def deliver(message: Message, org: Organization, *, phone: str, template_language: str = "", needs_consent: bool = True) -> bool:
    """Send a QUEUED message; True once a provider accepted it (now or by an earlier delivery).

    Raises RetryLater when the provider failed transiently and the message is
    QUEUED again. A permanent failure marks it (and what it carries) failed.
    """
    if message.status != Message.Status.QUEUED:
        return message.status not in (Message.Status.FAILED, Message.Status.SENDING)
    if not take_for_sending(message):
        return False
    if needs_consent and not Contact.objects.filter(pk=message.conversation.contact_id, consent=True).exists():
        fail_message(message, ProviderError(message.channel, "the contact has opted out or never opted in", code="no_consent", permanent=True))
        return False
    release_db_connection()
    try:
        sent = _send(message, org, phone, template_language or org.whatsapp_template_language)
    except ProviderError as exc:
        settle_failed_attempt(message, exc)
        return False
    _accepted(message, sent.provider_message_id)
    return True


def withdraw(message: Message, reason: str) -> bool:
    """Fail a QUEUED message that no longer should go (code `withdrawn`, `reason` as its title);
    False if it is not QUEUED any more (a worker took it for sending)."""
    return Message.objects.filter(pk=message.pk, status=Message.Status.QUEUED).update(
        status=Message.Status.FAILED, error_code="withdrawn", error_title=reason[:300], failed_at=timezone.now(),
    ) == 1


def _send(message: Message, org: Organization, phone: str, language: str):
    if message.channel == Channel.SMS:
        return twilio.send_sms(org=org, to=phone, body=message.body, status_callback=status_callback_url(message))
    callback = f"{CALLBACK_PREFIX}{message.pk}"
    if message.template_name:
        return whatsapp.send_template(
            org=org, to=phone, name=message.template_name, language=language, parameter=message.body or None, callback_data=callback
        )
    return whatsapp.send_text(org=org, to=phone, body=message.body, callback_data=callback)


def channel_configured(org: Organization | None, channel: str) -> bool:
    if org is None:
        return False
    return whatsapp.is_configured(org) if channel == Channel.WHATSAPP else twilio.is_configured(org)


_ACCEPTED = f"""
UPDATE {Message._meta.db_table} SET provider_message_id = %(pid)s, accepted_at = COALESCE(accepted_at, %(now)s),
    status = CASE WHEN status IN ('sending', 'queued') THEN 'accepted' ELSE status END,
    error_code = CASE WHEN status = 'failed' THEN error_code ELSE '' END,
    error_title = CASE WHEN status = 'failed' THEN error_title ELSE '' END
WHERE id = %(id)s
"""


def _accepted(message: Message, provider_message_id: str) -> None:
    now = timezone.now()
    with transaction.atomic():
        with prepared_cursor() as cursor:
            cursor.execute(_ACCEPTED, {"pid": provider_message_id, "now": now, "id": message.pk})
        message.provider_message_id, message.status = provider_message_id, Message.Status.ACCEPTED
        if message.reply_id is not None:  # with the acceptance: a worker dying next cannot leave it "sending"
            Reply.objects.filter(pk=message.reply_id, state=Reply.State.SENDING).update(state=Reply.State.DONE)
        data = {"channel": message.channel, "provider_message_id": provider_message_id, "what": _what(message)}
        timeline.record(message.lead_id, ("message.accepted", data, now))
    metrics.MESSAGES_ACCEPTED.labels(channel=message.channel, kind=_KIND.get(data["what"], data["what"])).inc()


# The timeline's words for what a message carried, as short metric labels.
_KIND = {"rep message": "rep", "message": "other"}


def _what(message: Message) -> str:
    if message.reply_id is not None:
        return "reply"
    if message.scheduled_job_id is not None:
        return "followup"
    if message.sent_by_id is not None:
        return "rep message"
    return "message"

