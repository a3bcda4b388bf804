"""Answering the contact: one reply per burst of their messages, and the opt-out confirmation.

The path of an inbound message: the webhook stores it (`receipts.receive`)
with a `message.received` event; the replies subscriber adds it to its
conversation's debounce burst in Redis and schedules a flush for the burst's
deadline (`debounce.py`); the flush takes the burst and `answer()` claims its
messages in PostgreSQL (`answered_by`, set once), so one burst is one Reply
whichever worker gets there, and a message is never answered twice. The
model writes the reply from the conversation so far, within the greeting's
latency budget, else the organization's fallback text goes.

No loss when Redis drops: the flush then claims every unanswered message of
the conversation straight from PostgreSQL, and a sweep answers any message
whose burst was lost (Redis restarted between push and flush).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.db import connection, transaction
from django.utils import timezone

from conversations import debounce, outbound, timeline
from conversations.models import Channel, Conversation, Greeting, Message, Reply
from conversations.providers import model
from conversations.services import RetryLater, release_db_connection, render_text
from leads import selectors
from leads.models import Contact, Lead, Organization
from swiftex import redis as swx_redis

logger = logging.getLogger(__name__)

HISTORY_MESSAGES = 20  # the conversation the model sees, newest last
# Twilio answers these itself on SMS (and then refuses our messages to that number, 21610):
# its default opt-out list, https://www.twilio.com/docs/messaging/tutorials/advanced-opt-out.
TWILIO_OPT_OUT_KEYWORDS = frozenset({"stop", "stopall", "unsubscribe", "cancel", "end", "quit", "revoke", "optout"})
# A reply still composing or sending after this long lost its worker: the sweep resumes it.
UNFINISHED_AFTER = timedelta(seconds=120)
# ... and after this long the sweep gives it up: a reply that fails every time it is composed
# or sent is not retried for ever, and an answer an hour late would confuse more than help.
GIVE_UP_AFTER = timedelta(hours=1)
_IN_FLIGHT = [Message.Status.SENDING, Message.Status.ACCEPTED, Message.Status.SENT, Message.Status.DELIVERED,
              Message.Status.READ, Message.Status.FAILED]  # a reply whose message is here is the message's business


class ReplyRetryLater(RetryLater):
    """A reply's provider failed transiently: `send_reply(reply_id)` retries it after `countdown`."""

    def __init__(self, reply_id: int, countdown: float) -> None:
        super().__init__(countdown)
        self.reply_id = reply_id


def schedule(conversation_id: int, message_id: int, org: Organization) -> float:
    """Add an inbound message to its burst; seconds until the flush is due."""
    try:
        return debounce.push(
            conversation_id, message_id, quiet_seconds=org.reply_debounce_seconds, max_wait_seconds=org.reply_debounce_max_seconds
        )
    except swx_redis.RedisUnavailable:
        # The flush will answer from PostgreSQL: whatever arrived by then is one burst.
        return org.reply_debounce_seconds


def flush(conversation_id: int) -> float:
    """Answer the conversation's burst if it is due; else the seconds left to wait (0 when done)."""
    try:
        taken = debounce.take(conversation_id)
    except swx_redis.RedisUnavailable:
        return answer_all(conversation_id)
    if taken.wait_seconds > 0:
        return taken.wait_seconds
    if taken.message_ids:
        answer(conversation_id, list(taken.message_ids))
    return 0.0


def answer_all(conversation_id: int) -> float:
    """Answer every unanswered message of the conversation, from PostgreSQL alone."""
    answer(conversation_id, None)
    return 0.0


def answer(conversation_id: int, message_ids: list[int] | None) -> Reply | None:
    """Claim these inbound messages (None: every unanswered one) and reply to them once."""
    claimed = _claim(conversation_id, message_ids)
    if claimed is None:
        return None
    reply, conversation, bodies = claimed
    org = selectors.organization(conversation.organization_id)
    contact = conversation.contact
    if not contact.consent:
        _skip(reply, "the contact has opted out or never opted in")
        return reply
    if not outbound.channel_configured(org, conversation.channel):
        _skip(reply, f"{conversation.channel} is not configured for the organization")
        return reply
    if _compose(reply, org, conversation, contact):
        _send_or_hand_over(reply)
    return reply


def _send_or_hand_over(reply: Reply) -> None:
    try:
        send(reply)
    except RetryLater as exc:
        raise ReplyRetryLater(reply.pk, exc.countdown) from None


def send(reply: Reply) -> None:
    """Send a composed reply (or resume one). Raises RetryLater on a transient provider failure."""
    conversation = reply.conversation
    org = selectors.organization(reply.organization_id)
    message = outbound.queue(conversation=conversation, lead_id=reply.lead_id, body=reply.text, reply=reply)
    if outbound.deliver(message, org, phone=conversation.contact.phone, needs_consent=reply.kind == Reply.Kind.REPLY):
        reply.state = Reply.State.DONE  # stored with the acceptance (outbound._accepted)


def confirm_opt_out(message_id: int) -> Reply | None:
    """The one confirmation for a STOP: sent although the contact no longer consents."""
    inbound = Message.objects.filter(pk=message_id, direction=Message.Direction.INBOUND).first()
    if inbound is None:
        return None
    claimed = _claim(inbound.conversation_id, [message_id], kind=Reply.Kind.OPT_OUT)
    if claimed is None:
        return None
    reply, conversation, _ = claimed
    org = selectors.organization(conversation.organization_id)
    keyword = inbound.body.strip().strip(".!").lower()
    if conversation.channel == Channel.SMS and keyword in TWILIO_OPT_OUT_KEYWORDS:
        _skip(reply, "Twilio confirms its standard opt-out keywords by SMS itself")
        return reply
    if not outbound.channel_configured(org, conversation.channel):
        _skip(reply, f"{conversation.channel} is not configured for the organization")
        return reply
    text = render_text(org.opt_out_confirmation, org, conversation.contact)
    Reply.objects.filter(pk=reply.pk).update(text=text, state=Reply.State.SENDING)
    reply.text, reply.state = text, Reply.State.SENDING
    _send_or_hand_over(reply)
    return reply


def orphaned_conversations(*, now: datetime | None = None, limit: int = 200) -> list[int]:
    """Conversations with an inbound message no burst took in time (its Redis state was lost)."""
    now = now or timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            SELECT DISTINCT m.conversation_id FROM {Message._meta.db_table} m
            JOIN {Organization._meta.db_table} o ON o.id = m.organization_id
            WHERE m.direction = 'inbound' AND m.answered_by_id IS NULL
              AND m.created_at < %(now)s - make_interval(secs => o.reply_debounce_max_seconds + 30)
              AND m.created_at > %(now)s - interval '24 hours'
            LIMIT %(limit)s
            """,
            {"now": now, "limit": limit},
        )
        return [row[0] for row in cursor.fetchall()]


def _unfinished(older_than: datetime):
    return Reply.objects.filter(state__in=[Reply.State.COMPOSING, Reply.State.SENDING], created_at__lt=older_than).exclude(
        message__status__in=_IN_FLIGHT)


def unfinished_replies(*, now: datetime | None = None, limit: int = 200) -> list[int]:
    """Replies whose worker died while composing or sending (the message, if any, still QUEUED)."""
    now = now or timezone.now()
    stuck = _unfinished(now - UNFINISHED_AFTER).filter(created_at__gte=now - GIVE_UP_AFTER)
    return list(stuck.values_list("pk", flat=True)[:limit])


def give_up_stale_replies(*, now: datetime | None = None, limit: int = 200) -> int:
    """Fail the replies still unfinished after GIVE_UP_AFTER, on the lead's timeline; how many."""
    now = now or timezone.now()
    reason = f"not composed and sent within {int(GIVE_UP_AFTER.total_seconds() // 60)} minutes; the worker's log has the error"
    given_up = 0
    for reply_id, lead_id in _unfinished(now - GIVE_UP_AFTER).values_list("pk", "lead_id")[:limit]:
        with transaction.atomic():
            if not _unfinished(now - GIVE_UP_AFTER).filter(pk=reply_id).update(state=Reply.State.FAILED, reason=reason):
                continue  # finished, or its message went out, meanwhile
            queued = Message.objects.filter(reply_id=reply_id, status=Message.Status.QUEUED).first()
            if queued is not None and not outbound.withdraw(queued, f"the reply was given up: {reason}"):
                # A worker took the message for sending just now: its own outcome decides.
                transaction.set_rollback(True)
                continue
            timeline.record(lead_id, ("reply.failed", {"reply_id": reply_id, "reason": reason}, now))
        given_up += 1
    if given_up:
        logger.warning("gave up %d replies unfinished after %s", given_up, GIVE_UP_AFTER)
    return given_up


def resume(reply_id: int) -> None:
    reply = Reply.objects.select_related("conversation__contact").filter(pk=reply_id).first()
    if reply is None or reply.state not in (Reply.State.COMPOSING, Reply.State.SENDING):
        return
    org = selectors.organization(reply.organization_id)
    if reply.state == Reply.State.COMPOSING:
        if not reply.conversation.contact.consent and reply.kind == Reply.Kind.REPLY:
            _skip(reply, "the contact has opted out or never opted in")
            return
        if not _compose(reply, org, reply.conversation, reply.conversation.contact):
            return
    send(reply)


# --- Steps --------------------------------------------------------------------------------


def _claim(conversation_id: int, message_ids: list[int] | None, kind: str = Reply.Kind.REPLY):
    """(reply, conversation, the claimed messages' bodies) or None if nothing was left to answer."""
    with transaction.atomic():
        conversation = Conversation.objects.select_related("contact").filter(pk=conversation_id).first()
        if conversation is None:
            return None
        lead = Lead.objects.filter(contact_id=conversation.contact_id, status__in=Lead.OPEN_STATUSES).only("id").first()
        reply = Reply.objects.create(
            organization_id=conversation.organization_id, conversation=conversation, lead=lead, kind=kind, created_at=timezone.now()
        )
        # One UPDATE whose own WHERE says "not answered yet": two flushes racing for the
        # same messages serialize on their rows, and the second finds them answered.
        only = "AND id = ANY(%s)" if message_ids is not None else ""
        with connection.cursor() as cursor:
            cursor.execute(
                f"UPDATE {Message._meta.db_table} SET answered_by_id = %s WHERE conversation_id = %s "
                f"AND direction = 'inbound' AND answered_by_id IS NULL {only} RETURNING body",
                [reply.pk, conversation_id, *([list(message_ids)] if message_ids is not None else [])],
            )
            bodies = [row[0] for row in cursor.fetchall()]
        if not bodies:
            transaction.set_rollback(True)
            return None
        if lead is not None and kind == Reply.Kind.REPLY:
            timeline.record(lead.pk, ("reply.started", {"reply_id": reply.pk, "channel": conversation.channel, "messages": len(bodies)}, reply.created_at))
    return reply, conversation, bodies


def _skip(reply: Reply, reason: str) -> None:
    Reply.objects.filter(pk=reply.pk).update(state=Reply.State.SKIPPED, reason=reason[:300])
    reply.state, reply.reason = Reply.State.SKIPPED, reason
    timeline.record(reply.lead_id, ("reply.skipped", {"reply_id": reply.pk, "kind": reply.kind, "reason": reason}, timezone.now()))


def _compose(reply: Reply, org: Organization, conversation: Conversation, contact: Contact) -> bool:
    """Write the reply's text; False if the reply was given up meanwhile (nothing to send)."""
    history = conversation_history(conversation)
    release_db_connection()
    started = timezone.now()
    try:
        text = model.write_reply(model=org.ai_model, system_prompt=org.reply_prompt.replace("{organization}", org.name), history=history)
        source, error = Greeting.TextSource.AI, ""
    except model.ModelUnavailable as exc:
        lead = Lead.objects.filter(pk=reply.lead_id).first() if reply.lead_id else None
        text, source, error = render_text(org.reply_fallback, org, contact, lead), Greeting.TextSource.TEMPLATE, exc.reason
    model_ms = int((timezone.now() - started).total_seconds() * 1000)
    with transaction.atomic():
        if not Reply.objects.filter(pk=reply.pk, state=Reply.State.COMPOSING).update(
            text=text, text_source=source, model_ms=model_ms, model_error=error[:300], state=Reply.State.SENDING
        ):
            return False
        composed = {"reply_id": reply.pk, "source": source, "model_ms": model_ms}
        if error:
            composed["model_error"] = error
        timeline.record(reply.lead_id, ("reply.composed", composed, timezone.now()))
    reply.text, reply.text_source, reply.model_ms, reply.state = text, source, model_ms, Reply.State.SENDING
    return True


def conversation_history(conversation: Conversation) -> list[tuple[str, str]]:
    """The conversation as chat turns, oldest first: the contact is `user`, we are `assistant`."""
    rows = list(
        Message.objects.filter(conversation__contact_id=conversation.contact_id)
        .exclude(direction=Message.Direction.OUTBOUND, status=Message.Status.FAILED)
        .order_by("-created_at", "-id")
        .values_list("direction", "body", "greeting__text")[:HISTORY_MESSAGES]
    )
    turns = []
    for direction, body, greeting_text in reversed(rows):
        text = body or greeting_text or ""
        if text:
            turns.append(("user" if direction == Message.Direction.INBOUND else "assistant", text))
    return turns

