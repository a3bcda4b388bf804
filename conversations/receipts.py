"""What providers tell us after the fact: delivery statuses and inbound messages.

Statuses arrive out of order and more than once. Webhooks store them
(`enqueue`, one statement) and the conversations lane applies them in
batches (`apply_pending`). Each is applied by one UPDATE that only moves the
status forward and records each moment (sent, delivered, read, failed) the
first time it is seen, so a duplicate or a late `delivered` after `read`
leaves one correct state and one timeline entry. A Redis fingerprint per
(provider id, status) skips known repeats cheaply; the database stays the
source of truth when Redis is down.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime

from django.db import InterfaceError, OperationalError, connection, transaction
from django.utils import timezone

from conversations import followups, timeline
from conversations.models import FORWARD_ORDER, Channel, Conversation, Message, StatusReceipt, WebhookDelivery
from conversations.providers import whatsapp
from conversations.services import CALLBACK_PREFIX, greeting_went_out, mark_first_response, message_failed
from leads.models import Contact, Lead, LeadEvent, Organization
from swiftex import redis as swx_redis
from swiftex.db import prepared_cursor
from swiftex.events import emit

logger = logging.getLogger(__name__)

# Repeats come within minutes; later ones (Meta retries for days) fall through to the
# database, which is right anyway. An hour keeps ~1M keys at 15,000 statuses a minute.
FINGERPRINT_TTL_SECONDS = 3600
_RANKED = "ARRAY[" + ", ".join(f"'{status}'" for status in FORWARD_ORDER) + "]"
_MOMENT_COLUMN = {"sent": "sent_at", "delivered": "delivered_at", "read": "read_at", "failed": "failed_at", "accepted": "accepted_at"}


@dataclass(frozen=True)
class StatusReport:
    channel: str
    provider_message_id: str
    status: str  # accepted, sent, delivered, read or failed
    at: datetime
    callback: str = ""  # our message id as echoed by the provider, if any
    error_code: str = ""
    error_title: str = ""


@dataclass(frozen=True)
class Applied:
    message_id: int
    lead_id: int | None
    greeting_id: int | None
    channel: str
    status: str  # the message's status after this report


def apply_status(org: Organization, report: StatusReport) -> Applied | None:
    """Apply one status report; None if it changed nothing (a repeat, or not our message).

    Call it inside a transaction (apply_pending does): the status, a
    `message.failed` event and the first response are written together.
    """
    applied, needs_first_response = _apply(org, report)
    if applied is None:
        return None
    if report.status == "failed" and applied.status == "failed":
        message_failed(Message.objects.get(pk=applied.message_id))
    if needs_first_response:
        # A worker may have died before storing the provider's answer: this
        # status proves the greeting went out.
        mark_first_response(applied.lead_id, report.at)
        if applied.greeting_id is not None and applied.status != "failed":
            greeting_went_out(applied.greeting_id)
    return applied


def enqueue(org: Organization, reports: list[StatusReport]) -> None:
    """Store reported statuses for the conversations lane to apply: one statement."""
    if not reports:
        return
    # Plain VALUES rows: with client-side binding, array parameters cost ~0.4 ms
    # of Python quoting per call (profiled), more than the rest of the insert.
    rows = ", ".join(["(%s, %s, %s, %s, %s, %s, %s, %s)"] * len(reports))
    params = [
        value
        for r in reports
        for value in (org.pk, r.channel, r.provider_message_id, r.status, r.at, r.callback[:64], r.error_code[:32], r.error_title[:300])
    ]
    with prepared_cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {StatusReceipt._meta.db_table} "
            f"(organization_id, channel, provider_message_id, status, at, callback, error_code, error_title) VALUES {rows}",
            params,
        )


def apply_pending(*, batch_size: int = 500, max_batches: int = 20) -> int:
    """Apply stored statuses in arrival order, a batch per transaction; returns how many.

    Rows are claimed with SKIP LOCKED (any number of workers may drain) and
    deleted in the transaction that applies them. Repeats are skipped by their
    Redis fingerprint (one round trip per batch), remembered only once the
    batch committed; the database's "each moment once" guard is the truth when
    Redis is down or two workers race. If one status fails, the batch is redone
    one status at a time, so a bad row is recorded and dropped, not retried forever.
    """
    done = 0
    for _ in range(max_batches):
        with transaction.atomic():
            rows = list(
                # of=self: lock the inbox rows only, never the organization (that would
                # stall the tenant's ingest and greetings behind this batch).
                StatusReceipt.objects.select_for_update(skip_locked=True, of=("self",))
                .select_related("organization").order_by("id")[:batch_size]
            )
            if not rows:
                break
            fingerprints = [_fingerprint(row) for row in rows]
            fresh = [row for row, seen in zip(rows, _already_applied(fingerprints)) if not seen]
            # Messages locked in one order by every applier: two batches holding statuses of
            # the same messages in arrival order could each wait on the other (deadlock, seen
            # in the chaos run). Each status only moves forward, so the order does not change
            # the outcome; the sort is stable, so one message's statuses keep theirs.
            fresh.sort(key=lambda row: (row.channel, row.provider_message_id))
            try:
                with transaction.atomic():
                    applied = [(row, apply_status(row.organization, _report(row))) for row in fresh]
            except Exception:  # noqa: BLE001 - isolated below
                logger.exception("applying %d statuses failed; retrying them one at a time", len(fresh))
                applied = [(row, _apply_alone(row)) for row in fresh]
            _tell_analytics(applied)
            StatusReceipt.objects.filter(pk__in=[row.pk for row in rows]).delete()
            transaction.on_commit(lambda keys=fingerprints: _remember(keys))
        done += len(rows)
        if len(rows) < batch_size:
            break
    return done


def _fingerprint(row: StatusReceipt) -> str:
    return swx_redis.key("status", row.channel, row.provider_message_id, row.status)


def _apply_alone(row: StatusReceipt) -> Applied | None:
    try:
        with transaction.atomic():
            return apply_status(row.organization, _report(row))
    except (OperationalError, InterfaceError):
        raise  # the database, not the row: roll back and keep every row for the next run
    except Exception as exc:  # noqa: BLE001 - kept for a human, not retried forever
        logger.exception("status %s could not be applied", row.pk)
        WebhookDelivery.objects.create(
            provider=row.channel, organization=row.organization, outcome=WebhookDelivery.Outcome.FAILED,
            detail=f"{type(exc).__name__}: {exc}"[:300], body=str(_report(row)),
        )
        return None


def _tell_analytics(applied: list[tuple[StatusReceipt, Applied | None]]) -> None:
    """One `message.statuses` event per batch for the leads whose messages were delivered or read.

    Receipts are the busiest stream (up to three per message); an event each
    would triple the relay's traffic for facts that are not urgent.
    """
    lead_ids = sorted({a.lead_id for row, a in applied if a is not None and a.lead_id is not None and row.status in ("delivered", "read")})
    if lead_ids:
        emit("message.statuses", organization_id=None, data={"lead_ids": lead_ids})


def _report(row: StatusReceipt) -> StatusReport:
    return StatusReport(
        channel=row.channel, provider_message_id=row.provider_message_id, status=row.status, at=row.at,
        callback=row.callback, error_code=row.error_code, error_title=row.error_title,
    )


# One statement in the common case: the status only moves forward, each moment
# is stamped once, and only then is the timeline entry written (with a note when
# the status arrived late or a failure came after delivery).
_APPLY = f"""
WITH m AS (
    UPDATE {Message._meta.db_table} SET
        provider_message_id = COALESCE(provider_message_id, %(pid)s),
        {{column}} = COALESCE({{column}}, %(at)s),
        status = CASE
            WHEN status = 'failed' THEN status
            WHEN %(new)s::text = 'failed' THEN CASE WHEN status IN ('delivered', 'read') THEN status ELSE 'failed' END
            WHEN array_position({_RANKED}, %(new)s::text) > array_position({_RANKED}, status) THEN %(new)s::text
            ELSE status END,
        error_code = CASE WHEN %(new)s::text = 'failed' AND status NOT IN ('delivered', 'read', 'failed') THEN %(code)s ELSE error_code END,
        error_title = CASE WHEN %(new)s::text = 'failed' AND status NOT IN ('delivered', 'read', 'failed') THEN %(title)s ELSE error_title END
    WHERE organization_id = %(org)s AND channel = %(channel)s AND direction = 'outbound'
      AND (provider_message_id = %(pid)s OR (provider_message_id IS NULL AND id = %(callback_id)s))
      AND {{column}} IS NULL
    RETURNING id, lead_id, greeting_id, channel, status
), entry AS (
    INSERT INTO {LeadEvent._meta.db_table} (lead_id, kind, data, occurred_at)
    SELECT m.lead_id, %(kind)s::text,
           %(data)s::jsonb
           || CASE WHEN %(new)s::text <> 'failed' AND m.status <> %(new)s::text THEN jsonb_build_object('status_now', m.status) ELSE '{{{{}}}}'::jsonb END
           || CASE WHEN %(new)s::text = 'failed' AND m.status <> 'failed' THEN jsonb_build_object('ignored', 'already ' || m.status) ELSE '{{{{}}}}'::jsonb END
           || jsonb_build_object('since_capture_ms', {timeline.ms_between("lead.captured_at", "%(at)s")}),
           %(at)s
    FROM m JOIN {Lead._meta.db_table} AS lead ON lead.id = m.lead_id
)
SELECT m.id, m.lead_id, m.greeting_id, m.channel, m.status,
       m.greeting_id IS NOT NULL AND %(new)s::text <> 'failed'
           AND (SELECT first_response_at IS NULL FROM {Lead._meta.db_table} WHERE id = m.lead_id)
FROM m
"""


def _apply(org: Organization, report: StatusReport) -> tuple[Applied | None, bool]:
    data = {"channel": report.channel, "provider_message_id": report.provider_message_id}
    if report.status == "failed":
        data |= {"error_code": report.error_code, "error": report.error_title}
    with prepared_cursor() as cursor:
        cursor.execute(
            _APPLY.format(column=_MOMENT_COLUMN[report.status]),
            {
                "pid": report.provider_message_id, "at": report.at, "new": report.status, "code": report.error_code[:32],
                "title": report.error_title[:300], "org": org.pk, "channel": report.channel,
                "callback_id": _callback_message_id(report.callback), "kind": f"message.{report.status}", "data": json.dumps(data),
            },
        )
        row = cursor.fetchone()
    if row is None:
        return None, False
    return Applied(*row[:5]), bool(row[5])


def _callback_message_id(callback: str) -> int | None:
    if callback.startswith(CALLBACK_PREFIX):
        tail = callback[len(CALLBACK_PREFIX):]
        if tail.isdigit():
            return int(tail)
    return None


def _already_applied(fingerprints: list[str]) -> list[bool]:
    """Which of these statuses were applied before (fast path); all False when unsure."""
    values = swx_redis.attempt(lambda: swx_redis.client().mget(fingerprints))
    if values is swx_redis.UNAVAILABLE:
        return [False] * len(fingerprints)
    return [value is not None for value in values]


def _remember(fingerprints: list[str]) -> None:
    def store():
        pipe = swx_redis.client().pipeline(transaction=False)
        for fingerprint in fingerprints:
            pipe.set(fingerprint, 1, ex=FINGERPRINT_TTL_SECONDS)
        return pipe.execute()

    swx_redis.attempt(store)  # unremembered, a status is checked against the database instead


# --- Inbound -----------------------------------------------------------------------


@dataclass(frozen=True)
class Inbound:
    channel: str
    provider_message_id: str
    phone: str  # E.164
    body: str
    at: datetime
    profile_name: str = ""


def receive(org: Organization, inbound: Inbound) -> Message | None:
    """Store an inbound message once and act on it, in one transaction; None for a redelivery.

    It opens the 24-hour window and raises `message.received`, which the replies
    subscriber answers (debounced). One of the organization's opt-out keywords
    revokes consent and cancels everything scheduled for the contact (the
    confirmation is the one message still sent); any other message cancels the
    lead's pending follow-ups: they replied.
    """
    with transaction.atomic():
        known = _known_whatsapp_contact(org, inbound.phone) if inbound.channel == Channel.WHATSAPP else None
        contact = known or Contact.objects.get_or_create(
            organization=org, phone=inbound.phone, defaults={"name": inbound.profile_name[:200]}
        )[0]
        conversation, _ = Conversation.objects.get_or_create(contact=contact, channel=inbound.channel, defaults={"organization": org})
        lead = Lead.objects.filter(contact=contact, status__in=Lead.OPEN_STATUSES).only("id").first()
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {Message._meta.db_table} (organization_id, conversation_id, lead_id, direction, channel, body, "
                "template_name, provider_message_id, status, attempts, error_code, error_title, created_at) "
                "VALUES (%s, %s, %s, 'inbound', %s, %s, '', %s, 'received', 0, '', '', %s) "
                "ON CONFLICT (provider_message_id) WHERE provider_message_id IS NOT NULL DO NOTHING RETURNING id",
                [org.pk, conversation.pk, lead.pk if lead else None, inbound.channel, inbound.body, inbound.provider_message_id, inbound.at],
            )
            row = cursor.fetchone()
        if row is None:
            return None
        Conversation.objects.filter(pk=conversation.pk).exclude(last_inbound_at__gte=inbound.at).update(last_inbound_at=inbound.at)
        # Conditional: of two STOPs handled at once, only one revokes (and gets a confirmation).
        # Any STOP is remembered, consent or not: an older opt-in (a list, a Meta lead) cannot undo it.
        stop = is_stop_word(inbound.body, org)
        opted_out = stop and bool(Contact.objects.filter(pk=contact.pk, consent=True).update(
            consent=False, consent_revoked_at=inbound.at, updated_at=timezone.now()))
        if stop and not opted_out:
            Contact.objects.filter(pk=contact.pk).exclude(consent_revoked_at__gte=inbound.at).update(consent_revoked_at=inbound.at)
        if opted_out:
            followups.cancel(lead_ids=list(contact.leads.values_list("pk", flat=True)), reason="the contact opted out")
        elif lead is not None:
            followups.contact_wrote(org, lead.pk, inbound.channel, inbound.at)
        if lead is not None:
            entries = [("message.received", {"channel": inbound.channel, "body": inbound.body[:500]}, inbound.at)]
            if opted_out:
                entries.append(("consent.revoked", {"channel": inbound.channel, "keyword": inbound.body.strip()[:40]}, inbound.at))
            timeline.record(lead.pk, *entries)
        emit("message.received", organization_id=org.pk, data={
            "message_id": row[0], "conversation_id": conversation.pk, "contact_id": conversation.contact_id,
            "lead_id": lead.pk if lead else None,
            "channel": inbound.channel, "opt_out": opted_out,
        })
    return Message.objects.get(pk=row[0])


def note(org: Organization, phone: str, kind: str, data: dict, at: datetime) -> None:
    """Something a contact did that is not a message to answer (a reaction, a message type
    WhatsApp cannot show us): on their open lead's timeline, nothing more. It neither
    counts as a reply (follow-ups go on, no AI answer) nor opens the 24-hour window."""
    contact = _known_whatsapp_contact(org, phone)
    lead_id = contact and Lead.objects.filter(contact=contact, status__in=Lead.OPEN_STATUSES).values_list("pk", flat=True).first()
    if lead_id:
        timeline.record(lead_id, (kind, data, at))


def _known_whatsapp_contact(org: Organization, phone: str) -> Contact | None:
    """The contact a WhatsApp number belongs to: the number itself first, then the other ways
    WhatsApp writes it (conversations.providers.whatsapp.number_variants). By SMS the number is
    the number, and get_or_create finds it."""
    phones = [phone, *whatsapp.number_variants(phone)]
    found = {contact.phone: contact for contact in Contact.objects.filter(organization=org, phone__in=phones)}
    return next((found[p] for p in phones if p in found), None)


def is_stop_word(body: str, org: Organization) -> bool:
    return body.strip().strip(".!").lower() in org.opt_out_words()
