"""The first touch: greet a new lead once, on WhatsApp or by SMS, within two seconds.

How "exactly once" holds when events are redelivered and workers die:

1. The text is written first (model within its budget, else the
   organization's fallback): nothing is stored yet, so a crash here just
   means the redelivered task writes it again.
2. One transaction claims the greeting (`Greeting` is unique per lead) and
   its first `Message`, QUEUED. A duplicate task loses the claim and only
   resumes what is left to do (`resume`).
3. A QUEUED message is moved to SENDING by one conditional UPDATE (one worker
   wins), then the provider is called. Accepted: the id is stored. Definitely
   not taken (refused, 5xx, rate limit): back to QUEUED, and the task retries
   with backoff. Permanently refused: FAILED, and the greeting falls back to
   SMS once (unique greeting + channel). A worker that dies between the claim
   and the call leaves it QUEUED, and the redelivered task sends it.
4. No answer (read timeout, worker killed mid-call): the message stays
   SENDING and is never blindly resent. Meta echoes our message id in every
   status webhook (`biz_opaque_callback_data`), so a later status attaches
   the wamid; with no `sent` status within WHATSAPP_SENT_TIMEOUT_SECONDS the
   sweep fails it and the greeting goes by SMS.
"""

from __future__ import annotations

import json
import logging
import string
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from conversations import greeting_sql, timeline
from conversations.models import Channel, Conversation, Greeting, Message, Reply, ScheduledJob, StatusReceipt
from conversations.models import window_open as whatsapp_window_open
from conversations.providers import ProviderError, model, twilio, whatsapp
from conversations.providers.base import jittered_backoff
from leads import selectors
from leads.models import Contact, Lead, Organization
from swiftex import metrics
from swiftex.db import prepared_cursor
from swiftex.events import emit

logger = logging.getLogger(__name__)

FIRST_TOUCH_CONSUMER = "conversations.first_touch"
CALLBACK_PREFIX = "swx-msg-"


class RetryLater(Exception):
    """A send failed transiently; run the task again after `countdown` seconds."""

    def __init__(self, countdown: float) -> None:
        super().__init__(f"retry in {countdown:.1f}s")
        self.countdown = countdown


# --- Entry points (called by tasks) -------------------------------------------------


def first_touch(*, event_id: str, lead_id: int, published_at: str | None = None) -> None:
    """Handle one delivery of `lead.created`: greet the lead, or resume its greeting."""
    loaded = _load(event_id, lead_id, published_at, timezone.now())
    if loaded is None:
        logger.info("first touch: lead %s no longer exists", lead_id)
        return
    lead, greeting_id, first_message, window_open = loaded
    if greeting_id is not None:
        resume(Greeting.objects.get(pk=greeting_id), lead)
        return
    org, contact = lead.organization, lead.contact
    # A delayed lead.created (a broker outage) may find the lead already won or lost by a rep.
    channel, skip_reason = ("", "lead_closed") if lead.status not in Lead.OPEN_STATUSES else _first_channel(org, contact)
    if skip_reason:
        _skip(lead, skip_reason)
        return
    text, source, model_ms, model_error, composed_at = _compose(org, lead, contact, first_message)
    claimed = _claim(lead, channel, window_open, text, source, model_ms, model_error, composed_at)
    if claimed is None:
        logger.info("first touch: lead %s already claimed by another delivery", lead_id)
        return
    greeting, message = claimed
    _deliver(message, greeting, lead, window_open=window_open)


def greeting_fallback(*, greeting_id: int) -> None:
    """WhatsApp definitively failed (webhook or sweep): send the greeting by SMS once."""
    greeting = Greeting.objects.select_related("lead__contact", "lead__organization").filter(pk=greeting_id).first()
    if greeting is not None:
        resume(greeting, greeting.lead)


def resume(greeting: Greeting, lead: Lead) -> None:
    """Finish whatever a greeting still needs: a retry that is due, or the SMS fallback."""
    messages = {m.channel: m for m in greeting.messages.all()}
    for message in messages.values():
        if message.status == Message.Status.QUEUED:
            _deliver(message, greeting, lead)
            return
    wa = messages.get(Channel.WHATSAPP)
    if wa is not None and wa.status == Message.Status.FAILED and Channel.SMS not in messages:
        _fall_back_to_sms(greeting, lead, wa)


def expire_unsent_greetings(*, now: datetime | None = None, limit: int = 500) -> int:
    """Fail outbound messages stuck without an answer or a status; returns how many.

    SENDING (handed to the provider, no answer since) for WHATSAPP_SENT_TIMEOUT_SECONDS
    counted from that attempt: a WhatsApp greeting then goes by SMS; an SMS, a
    reply or a follow-up is shown as failed (never resent: the provider may have it). ACCEPTED WhatsApp
    greetings with no status only if WHATSAPP_ACCEPTED_TIMEOUT_SECONDS is set.
    Nothing is given up while delivery statuses are still waiting to be applied
    (the conversations lane is behind or down): they may be the answer.
    Durable: the state is in the database and the scheduler runs this every few
    seconds; rows are claimed with SKIP LOCKED, so sweeps never collide.
    """
    now = now or timezone.now()
    if StatusReceipt.objects.filter(at__lt=now - timedelta(seconds=RECEIPTS_LAG_TOLERANCE)).exists():
        logger.warning("greeting sweep skipped: delivery statuses are waiting to be applied")
        return 0
    stuck = Q(pk__in=[])
    if settings.WHATSAPP_SENT_TIMEOUT_SECONDS:
        stuck |= Q(status=Message.Status.SENDING, sending_at__lt=now - timedelta(seconds=settings.WHATSAPP_SENT_TIMEOUT_SECONDS))
    if settings.WHATSAPP_ACCEPTED_TIMEOUT_SECONDS:
        stuck |= Q(status=Message.Status.ACCEPTED, channel=Channel.WHATSAPP, greeting__isnull=False,  # greetings only
                   accepted_at__lt=now - timedelta(seconds=settings.WHATSAPP_ACCEPTED_TIMEOUT_SECONDS))
    with transaction.atomic():
        overdue = list(
            Message.objects.select_for_update(skip_locked=True)
            .filter(stuck, direction=Message.Direction.OUTBOUND)
            .order_by("created_at")[:limit]
        )
        for message in overdue:
            waited = (now - (message.accepted_at or message.sending_at or message.created_at)).total_seconds()
            reason = (f"no sent status {waited:.0f}s after WhatsApp accepted it" if message.status == Message.Status.ACCEPTED
                      else f"no answer from {message.channel} {waited:.0f}s after sending; not resent, it may have arrived")
            fail_message(message, ProviderError(message.channel, reason, code="timeout", permanent=True), now=now)
    return len(overdue)


def stalled_greetings(*, now: datetime | None = None, limit: int = 500) -> list[int]:
    """Greetings with a QUEUED message nobody is working on (its task was lost or gave
    up, e.g. Celery's retry limit); the scheduler re-enqueues them."""
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.SEND_RETRY_BACKOFF_MAX_SECONDS * 2 + 60)
    stalled = (
        Message.objects.filter(status=Message.Status.QUEUED, greeting__isnull=False)
        .filter(Q(sending_at__lt=cutoff) | Q(sending_at__isnull=True, created_at__lt=cutoff))
        .values_list("greeting_id", flat=True)
    )
    return list(stalled[:limit])


# Statuses this old still in the inbox mean the applier is behind.
RECEIPTS_LAG_TOLERANCE = 10.0


# --- Steps ------------------------------------------------------------------------------

def _load(event_id: str, lead_id: int, published_at: str | None, started: datetime):
    """(lead, greeting id or None, first submission's message, WhatsApp window open), or None.

    One statement, which also puts "event.published" and "first_touch.started"
    on the timeline once per event (the processed-event ledger). The ledger only
    keeps the timeline free of repeats; it does not gate the greeting, so a
    worker killed after this point still gets the lead greeted.
    """
    event = json.dumps({"event_id": event_id})
    params = {
        "consumer": FIRST_TOUCH_CONSUMER, "event_id": event_id, "lead_id": lead_id, "now": started,
        "started_data": event, "published_data": event, "published": parse_datetime(published_at) if published_at else None,
    }
    with prepared_cursor() as cursor:
        cursor.execute(greeting_sql.LOAD, params)
        row = cursor.fetchone()
    if row is None:
        return None
    org_id, contact_id, status, source, campaign, captured_at, name, phone, consent, greeting_id, first_message, last_inbound = row
    org = selectors.organization(org_id)
    if org is None:
        return None
    contact = Contact(pk=contact_id, organization_id=org_id, name=name, phone=phone, consent=consent)
    lead = Lead(pk=lead_id, organization=org, contact=contact, status=status, source=source, campaign=campaign, captured_at=captured_at)
    return lead, greeting_id, first_message or "", whatsapp_window_open(last_inbound)


def _first_channel(org: Organization, contact: Contact) -> tuple[str, str]:
    """(channel, "") to greet on, or ("", why not)."""
    if not contact.consent:
        return "", "no_consent"
    if not contact.phone:
        return "", "no_phone"
    if whatsapp.is_configured(org):
        return Channel.WHATSAPP, ""
    if twilio.is_configured(org):
        return Channel.SMS, ""
    return "", "no_channel_configured"


_SKIP_EXPLAINED = {
    "no_consent": "the contact has not opted in to WhatsApp/SMS messages",
    "no_phone": "the contact has no phone number",
    "no_channel_configured": "neither WhatsApp nor Twilio is configured for the organization",
    "lead_closed": "the lead was already won or lost when its greeting came to be sent",
}


def _skip(lead: Lead, reason: str) -> None:
    now = timezone.now()
    with transaction.atomic():
        greeting_id = _insert_greeting(lead, state=Greeting.State.SKIPPED, reason=reason, now=now)
        if greeting_id is not None:
            timeline.record(lead.pk, ("first_touch.skipped", {"reason": reason, "detail": _SKIP_EXPLAINED[reason]}, now))


def release_db_connection() -> None:
    """Hand this thread's database connection back to the pool before waiting on a
    provider: a lane runs dozens of greetings at once, each mostly waiting on the
    network, and the pool is sized for queries, not for waits."""
    if not connection.in_atomic_block and connection.settings_dict.get("OPTIONS", {}).get("pool"):
        connection.close()


def _compose(org: Organization, lead: Lead, contact: Contact, first_message: str):
    """(text, source, model_ms, model_error, composed_at): the AI's text, or the fallback in time."""
    facts = _lead_facts(org, lead, contact, first_message)
    release_db_connection()
    started = timezone.now()
    try:
        text = model.write_greeting(model=org.ai_model, system_prompt=org.ai_prompt, lead_facts=facts)
        source, error = Greeting.TextSource.AI, ""
    except model.ModelUnavailable as exc:
        text, source, error = render_fallback(org, lead, contact), Greeting.TextSource.TEMPLATE, exc.reason
    composed_at = timezone.now()
    return text, source, int((composed_at - started).total_seconds() * 1000), error, composed_at


def _lead_facts(org: Organization, lead: Lead, contact: Contact, message: str) -> str:
    facts = [f"Name: {contact.name or 'unknown'}", f"Business: {org.name}", f"Source: {lead.source}"]
    if lead.campaign:
        facts.append(f"Campaign: {lead.campaign}")
    if message:
        facts.append(f"Their message: {message[:500]}")
    return "\n".join(facts)


def render_fallback(org: Organization, lead: Lead, contact: Contact) -> str:
    return render_text(org.greeting_fallback, org, contact, lead)


def render_text(template: str, org: Organization, contact: Contact, lead: Lead | None = None) -> str:
    """An admin-written text with its placeholders filled (see leads.models.GREETING_PLACEHOLDERS)."""
    name = (contact.name or "").strip()
    values = {
        "first_name": name.split()[0] if name else "there",
        "name": name or "there",
        "organization": org.name,
        "campaign": lead.campaign if lead else "",
        "source": lead.source if lead else "",
    }
    try:
        # Bare substitution: a format spec or conversion (validation refuses them, older rows
        # may have one) is ignored, so no text can ask for gigabytes of padding.
        return "".join(literal + (values[field] if field is not None else "") for literal, field, _, _ in string.Formatter().parse(template))
    except (KeyError, ValueError):
        # Admin validation prevents this; never let a bad template cost a message.
        return f"Hi {values['first_name']}, thanks for contacting {org.name}!"


def _insert_greeting(lead: Lead, *, state: str, now: datetime, reason: str = "", text: str = "", source: str = "",
                     model_ms: int | None = None, model_error: str = "") -> int | None:
    """The per-lead claim: the new greeting's id, or None if the lead already has one."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {Greeting._meta.db_table} "
            "(organization_id, lead_id, state, reason, text, text_source, model_ms, model_error, created_at) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (lead_id) DO NOTHING RETURNING id",
            [lead.organization_id, lead.pk, state, reason, text, source, model_ms, model_error[:300], now],
        )
        row = cursor.fetchone()
    return row[0] if row else None


def conversation_for(lead: Lead, channel: str) -> Conversation:
    """The contact's conversation on `channel`, created on first use."""
    conversation, _ = Conversation.objects.get_or_create(
        contact_id=lead.contact_id, channel=channel, defaults={"organization_id": lead.organization_id}
    )
    return conversation


def _claim(lead, channel, window_open, text, source, model_ms, model_error, composed_at) -> tuple[Greeting, Message] | None:
    """One statement: the greeting (unique per lead), its conversation and QUEUED message,
    and "greeting.composed" on the timeline; None if another delivery claimed it first."""
    template, body = _what_to_send(lead.organization, channel, window_open, text)
    composed = {"source": source, "model_ms": model_ms, "since_capture_ms": _since_capture(lead, composed_at)}
    if model_error:
        composed["model_error"] = model_error
    with prepared_cursor() as cursor:
        cursor.execute(greeting_sql.CLAIM, {
            "org": lead.organization_id, "lead_id": lead.pk, "contact_id": lead.contact_id, "channel": channel,
            "text": text, "source": source, "model_ms": model_ms, "model_error": model_error[:300], "now": composed_at,
            "body": body, "template": template, "composed": json.dumps(composed),
        })
        row = cursor.fetchone()
    if row is None:
        return None
    greeting_id, message_id, conversation_id = row
    greeting = Greeting(
        pk=greeting_id, organization_id=lead.organization_id, lead=lead, state=Greeting.State.SENDING,
        text=text, text_source=source, model_ms=model_ms, model_error=model_error, created_at=composed_at,
    )
    message = Message(
        pk=message_id, organization_id=lead.organization_id, conversation_id=conversation_id, lead=lead, greeting=greeting,
        direction=Message.Direction.OUTBOUND, channel=channel, body=body, template_name=template,
        status=Message.Status.QUEUED, attempts=0, created_at=composed_at,
    )
    return greeting, message


def _since_capture(lead: Lead, at: datetime) -> float:
    return round((at - lead.captured_at).total_seconds() * 1000, 1)


def _new_message(greeting: Greeting, lead: Lead, channel: str, *, now: datetime) -> Message:
    """The greeting's message on `channel`, QUEUED: `_deliver` takes it from there."""
    conversation = conversation_for(lead, channel)
    template, body = _what_to_send(lead.organization, channel, conversation.window_open(), greeting.text)
    return Message.objects.create(
        organization_id=lead.organization_id,
        conversation=conversation,
        lead=lead,
        greeting=greeting,
        direction=Message.Direction.OUTBOUND,
        channel=channel,
        body=body,
        template_name=template,
        status=Message.Status.QUEUED,
        attempts=0,
        created_at=now,
    )


def _what_to_send(org: Organization, channel: str, window_open: bool, text: str) -> tuple[str, str]:
    """(template name or "", body actually sent). WhatsApp outside the 24-hour window
    takes an approved template, with the text as its parameter if it has one."""
    if channel != Channel.WHATSAPP or window_open or not org.whatsapp_template_name:
        return "", text
    return org.whatsapp_template_name, text if org.whatsapp_template_has_parameter else ""


def take_for_sending(message: Message) -> bool:
    """QUEUED -> SENDING for one attempt; False if another delivery took it first.

    Only a QUEUED message is ever sent, and this UPDATE lets exactly one worker
    move it: a message that crashed in SENDING is never sent again blindly.
    """
    with prepared_cursor() as cursor:
        cursor.execute(
            f"UPDATE {Message._meta.db_table} SET status = 'sending', attempts = attempts + 1, sending_at = %s "
            "WHERE id = %s AND status = 'queued' RETURNING attempts",
            [timezone.now(), message.pk],
        )
        row = cursor.fetchone()
    if row is None:
        return False
    message.status, message.attempts = Message.Status.SENDING, row[0]
    return True


def _deliver(message: Message, greeting: Greeting, lead: Lead, *, window_open: bool | None = None) -> None:
    if message.channel == Channel.WHATSAPP and window_open is None:
        # A retry or a resumed greeting: the window may have opened meanwhile. Read before
        # the claim, so a database error here leaves the message QUEUED for the retry,
        # not SENDING (which is never resent).
        window_open = _refresh_what_to_send(message, lead.organization, greeting)
    if not take_for_sending(message):
        return
    org, contact = lead.organization, lead.contact
    if not contact.consent:
        fail_message(message, ProviderError(message.channel, "contact withdrew consent before sending", code="no_consent", permanent=True))
        return
    try:
        sent = _send(message, greeting, org, contact, window_open)  # releases the connection while it waits
    except ProviderError as exc:
        _handle_send_error(message, greeting, lead, exc)
        return
    _accepted(message, lead, sent.provider_message_id)


def _send(message: Message, greeting: Greeting, org: Organization, contact: Contact, window_open: bool | None):
    callback = f"{CALLBACK_PREFIX}{message.pk}"
    release_db_connection()
    if message.channel == Channel.SMS:
        return twilio.send_sms(org=org, to=contact.phone, body=greeting.text, status_callback=status_callback_url(message))
    if window_open:
        return whatsapp.send_text(org=org, to=contact.phone, body=greeting.text, callback_data=callback)
    if not message.template_name:
        raise ProviderError("whatsapp", "outside the 24-hour window and no approved template configured", code="no_template", permanent=True)
    return whatsapp.send_template(
        org=org, to=contact.phone, name=message.template_name, language=org.whatsapp_template_language,
        parameter=greeting.text if org.whatsapp_template_has_parameter else None, callback_data=callback,
    )


def _refresh_what_to_send(message: Message, org: Organization, greeting: Greeting) -> bool:
    """Whether the 24-hour window is open now; the queued message's template and body follow it."""
    window_open = message.conversation.window_open()
    template, body = _what_to_send(org, message.channel, window_open, greeting.text)
    if (template, body) != (message.template_name, message.body):
        Message.objects.filter(pk=message.pk, status=Message.Status.QUEUED).update(template_name=template, body=body)
        message.template_name, message.body = template, body
    return window_open


def status_callback_url(message: Message) -> str:
    return f"{settings.PUBLIC_BASE_URL}/webhooks/twilio/status?m={message.pk}"


def _handle_send_error(message: Message, greeting: Greeting, lead: Lead, exc: ProviderError) -> None:
    if settle_failed_attempt(message, exc) and message.channel == Channel.WHATSAPP:
        _fall_back_to_sms(greeting, lead, message)


def settle_failed_attempt(message: Message, exc: ProviderError) -> bool:
    """After a send that raised: True if this call failed the message for good.

    Outcome unknown: left SENDING, never resent (a status or the sweep settles
    it). Permanent, or out of attempts: FAILED. Otherwise back to QUEUED, and
    RetryLater with the backoff.
    """
    if exc.maybe_delivered:  # a status applied meanwhile (a real failure, a delivery) is not overwritten
        Message.objects.filter(pk=message.pk, status=Message.Status.SENDING).update(error_code=exc.code, error_title=exc.title)
        timeline.record(message.lead_id, ("message.outcome_unknown", {"channel": message.channel, "error": exc.title}, timezone.now()))
        logger.warning("message %s: outcome unknown (%s); waiting for a status", message.pk, exc)
        return False
    if exc.permanent or message.attempts >= settings.SEND_MAX_ATTEMPTS:
        if not exc.permanent:
            exc = ProviderError(exc.provider, f"gave up after {message.attempts} attempts: {exc.title}", code=exc.code, permanent=True)
        return fail_message(message, exc)
    Message.objects.filter(pk=message.pk, status=Message.Status.SENDING).update(
        status=Message.Status.QUEUED, error_code=exc.code, error_title=exc.title
    )
    countdown = backoff(message.attempts, exc.retry_after)
    timeline.record(
        message.lead_id,
        ("message.retrying", {"channel": message.channel, "error": str(exc), "attempt": message.attempts, "in_s": round(countdown, 1)}, timezone.now()),
    )
    raise RetryLater(countdown)


def backoff(attempt: int, retry_after: float | None = None) -> float:
    """Exponential with jitter, capped; never sooner than the provider asked, unless it
    asked for longer than the cap: the task waits unacked in a worker until then, so a
    provider's hour-long Retry-After becomes more attempts at the cap instead."""
    cap = settings.SEND_RETRY_BACKOFF_MAX_SECONDS
    return min(cap, jittered_backoff(attempt, base=settings.SEND_RETRY_BACKOFF_SECONDS, cap=cap, retry_after=retry_after))


def _accepted(message: Message, lead: Lead, provider_message_id: str) -> None:
    now = timezone.now()
    data = {"channel": message.channel, "provider_message_id": provider_message_id, "since_capture_ms": _since_capture(lead, now)}
    with prepared_cursor() as cursor:
        cursor.execute(greeting_sql.ACCEPTED, {
            "provider_message_id": provider_message_id, "message_id": message.pk, "greeting_id": message.greeting_id,
            "lead_id": lead.pk, "data": json.dumps(data), "now": now, "now_iso": now.isoformat(),
        })
        _observe_first_response(cursor, now)
    metrics.MESSAGES_ACCEPTED.labels(channel=message.channel, kind="greeting").inc()


def greeting_went_out(greeting_id: int) -> None:
    """A status proved a greeting's message went out though its worker never stored the
    provider's answer (killed mid-call): the greeting is done, not left "sending"."""
    Greeting.objects.filter(pk=greeting_id, state=Greeting.State.SENDING).update(state=Greeting.State.DONE)


def mark_first_response(lead_id: int, at: datetime) -> None:
    """Set the lead's first response (once), move it from new to contacted, raise lead.status_changed."""
    with prepared_cursor() as cursor:
        cursor.execute(greeting_sql.FIRST_RESPONSE, {"lead_id": lead_id, "now": at, "now_iso": at.isoformat()})
        _observe_first_response(cursor, at)


def _observe_first_response(cursor, at: datetime) -> None:
    """After ACCEPTED or FIRST_RESPONSE: time capture -> first response, if that statement set it
    (once per lead, whichever path got there first)."""
    captured_at = cursor.fetchone()[0]
    if captured_at is not None:
        metrics.FIRST_RESPONSE.observe((at - captured_at).total_seconds())


def fail_message(message: Message, exc: ProviderError, *, now: datetime | None = None) -> bool:
    """Mark the message failed (unless already delivered/read/failed); True if this call did."""
    now = now or timezone.now()
    with transaction.atomic():
        updated = Message.objects.filter(pk=message.pk).exclude(
            status__in=[Message.Status.DELIVERED, Message.Status.READ, Message.Status.FAILED]
        ).update(status=Message.Status.FAILED, error_code=exc.code, error_title=exc.title, failed_at=now)
        if updated:
            message.status, message.error_code, message.error_title = Message.Status.FAILED, exc.code, exc.title
            timeline.record(
                message.lead_id, ("message.failed", {"channel": message.channel, "error_code": exc.code, "error": exc.title}, now)
            )
            message_failed(message)
    return bool(updated)


def message_failed(message: Message) -> None:
    """Inside the transaction that failed an outbound message: tell subscribers (the
    conversations subscriber sends a failed WhatsApp greeting by SMS), and mark the
    greeting failed when no channel is left, or the reply or follow-up it carried."""
    channel, code = message.channel, message.error_code
    transaction.on_commit(lambda: metrics.message_failed(channel, code))
    emit(
        "message.failed",
        organization_id=message.organization_id,
        data={
            "message_id": message.pk, "lead_id": message.lead_id, "greeting_id": message.greeting_id,
            "channel": message.channel, "error_code": message.error_code, "error": message.error_title,
        },
    )
    if message.reply_id is not None:
        Reply.objects.filter(pk=message.reply_id).exclude(state=Reply.State.FAILED).update(
            state=Reply.State.FAILED, reason=f"{message.channel} {message.error_code} {message.error_title}".strip()[:300]
        )
    if message.scheduled_job_id is not None:
        ScheduledJob.objects.filter(pk=message.scheduled_job_id).exclude(status=ScheduledJob.Status.FAILED).update(
            status=ScheduledJob.Status.FAILED, finished_at=timezone.now(),
            reason=f"{message.channel} {message.error_code} {message.error_title}".strip()[:300],
        )
    if message.greeting_id is None:
        return
    if message.channel == Channel.SMS or not _sms_possible(message):
        _greeting_failed(message.greeting_id, f"{message.channel} failed: {message.error_code} {message.error_title}".strip())


def _sms_possible(message: Message) -> bool:
    org = selectors.organization(message.organization_id)
    return org is not None and twilio.is_configured(org)


def _greeting_failed(greeting_id: int, reason: str) -> None:
    Greeting.objects.filter(pk=greeting_id).update(state=Greeting.State.FAILED, reason=reason[:200])


def _fall_back_to_sms(greeting: Greeting, lead: Lead, failed: Message) -> None:
    """Once WhatsApp definitively failed: the same text by SMS, at most once per greeting."""
    if not twilio.is_configured(lead.organization):
        return  # message_failed() already marked the greeting failed
    if not Lead.objects.filter(pk=lead.pk, status__in=Lead.OPEN_STATUSES).exists():
        # No SMS to a lead that was won or lost meanwhile (a retry, the sweep): the greeting ends here.
        _greeting_failed(greeting.pk, f"whatsapp failed: {failed.error_code}; no SMS, the lead was closed")
        return
    now = timezone.now()
    with transaction.atomic():
        with connection.cursor() as cursor:
            # Lock the greeting so two fallbacks (webhook + sweep) cannot both insert.
            cursor.execute(f"SELECT id FROM {Greeting._meta.db_table} WHERE id = %s FOR UPDATE", [greeting.pk])
        if greeting.messages.filter(channel=Channel.SMS).exists():
            return
        message = _new_message(greeting, lead, Channel.SMS, now=now)
        timeline.record(lead.pk, ("greeting.fallback", {"channel": Channel.SMS, "because": f"whatsapp {failed.error_code}".strip()}, now))
    _deliver(message, greeting, lead)
