"""Durable scheduled work: follow-up sequences, inactivity timeouts, session expiry.

Every job is a `ScheduledJob` row with its `due_at`, days ahead if need be.
Nothing waits in a worker's memory or in RabbitMQ: the scheduler's tick
(`dispatch_due`) claims due rows with `FOR UPDATE SKIP LOCKED`, marks them
ENQUEUED and puts one task each on the follow-up lane, at most
FOLLOWUP_MAX_IN_FLIGHT at a time and at a rate that yields to new leads
(`dispatch_rate`); the rest stay in PostgreSQL, in order. So a
follow-up due in two days survives any number of worker, scheduler and broker
restarts, and a job enqueued twice (a lost task re-enqueued, a redelivery)
still sends once: its message is unique per job and sent only from QUEUED.

The worker re-checks everything before acting: the lead still open, the
contact still consenting, no reply since the sequence began, business hours
(else the job is deferred to the next business morning).
"""

from __future__ import annotations

import logging
import random
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from conversations import debounce, outbound, quiet_hours, timeline
from conversations.models import CUSTOMER_SERVICE_WINDOW, Channel, Conversation, FollowUpStep, Message, ScheduledJob, window_open
from conversations.providers import model
from conversations.replies import conversation_history
from conversations.services import conversation_for, release_db_connection, render_text
from leads import selectors
from leads.models import Lead, Organization
from swiftex.events import emit

logger = logging.getLogger(__name__)

Job = ScheduledJob
# An ENQUEUED or RUNNING job untouched for this long lost its task (publish failed
# after commit, worker killed): it is enqueued again. Longer than any retry wait.
STUCK_AFTER = timedelta(seconds=300)


# --- Scheduling ---------------------------------------------------------------------------


def start_sequences(greeted: list[tuple[int, int, datetime]]) -> int:
    """(lead id, organization id, first response at) for newly greeted leads: schedule each
    active sequence's steps and the inactivity timeout. A few statements per batch of
    events, however many leads; idempotent (a redelivered event adds nothing). Returns
    the follow-ups created."""
    orgs = {org_id: selectors.organization(org_id) for org_id in {org_id for _, org_id, _ in greeted}}
    steps: dict[int, list[FollowUpStep]] = {org_id: [] for org_id in orgs}
    for step in FollowUpStep.objects.filter(sequence__organization_id__in=list(orgs), sequence__active=True).select_related("sequence"):
        steps[step.sequence.organization_id].append(step)
    followups, timeouts = [], {}
    for lead_id, org_id, started in greeted:
        org = orgs[org_id]
        if org is None:
            continue
        for step in steps[org_id]:
            due = quiet_hours.next_allowed(org, started + timedelta(minutes=step.delay_minutes))
            followups.append((org_id, lead_id, step.pk, due, started))
        if org.inactivity_timeout_hours:
            timeouts[lead_id] = (org_id, started + timedelta(hours=org.inactivity_timeout_hours))
    created = _insert_followups(followups)
    if timeouts:
        _schedule_timeouts(Job.Kind.INACTIVITY, timeouts)
    return created


def _insert_followups(rows: list[tuple[int, int, int, datetime, datetime]]) -> int:
    if not rows:
        return 0
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            INSERT INTO {Job._meta.db_table} (organization_id, lead_id, kind, step_id, due_at, status, attempts, reason, created_at)
            SELECT org, lead, 'followup', step, due, 'pending', 0, '', created
            FROM unnest(%s::bigint[], %s::bigint[], %s::bigint[], %s::timestamptz[], %s::timestamptz[]) AS r(org, lead, step, due, created)
            -- a lead or step deleted since its event was published drops out (not a foreign-key error)
            WHERE EXISTS (SELECT 1 FROM {Lead._meta.db_table} l WHERE l.id = r.lead)
              AND EXISTS (SELECT 1 FROM {FollowUpStep._meta.db_table} s WHERE s.id = r.step)
            ON CONFLICT (lead_id, step_id) WHERE step_id IS NOT NULL DO NOTHING
            RETURNING id
            """,
            [list(column) for column in zip(*rows)],
        )
        return len(cursor.fetchall())


# One live timeout per lead and kind: an activity moves it later (never earlier).
_UPSERT_TIMEOUTS = f"""
INSERT INTO {Job._meta.db_table} (organization_id, lead_id, kind, step_id, due_at, status, attempts, reason, created_at)
SELECT org, lead, %(kind)s, NULL, due, 'pending', 0, '', %(now)s FROM unnest(%(orgs)s::bigint[], %(leads)s::bigint[], %(dues)s::timestamptz[]) AS r(org, lead, due)
WHERE EXISTS (SELECT 1 FROM {Lead._meta.db_table} l WHERE l.id = r.lead)
ON CONFLICT (lead_id, kind) WHERE kind IN ('inactivity', 'session_expiry') AND status IN ('pending', 'enqueued', 'running')
DO UPDATE SET due_at = GREATEST({Job._meta.db_table}.due_at, EXCLUDED.due_at), status = 'pending', enqueued_at = NULL
"""


def _schedule_timeouts(kind: str, due_by_lead: dict[int, tuple[int, datetime]]) -> None:
    """{lead id: (organization id, due)}: one statement (each lead once: a row may be upserted once per statement)."""
    leads = list(due_by_lead)
    with connection.cursor() as cursor:
        cursor.execute(_UPSERT_TIMEOUTS, {
            "kind": kind, "now": timezone.now(), "leads": leads,
            "orgs": [due_by_lead[lead][0] for lead in leads], "dues": [due_by_lead[lead][1] for lead in leads],
        })


def touch_inactivity(org: Organization, lead_id: int, at: datetime) -> None:
    if org.inactivity_timeout_hours:
        _schedule_timeouts(Job.Kind.INACTIVITY, {lead_id: (org.pk, at + timedelta(hours=org.inactivity_timeout_hours))})


def contact_wrote(org: Organization, lead_id: int, channel: str, at: datetime) -> int:
    """Inside the transaction storing the lead's message: cancel the sequence (they
    replied), push the inactivity timeout, and watch the 24-hour window they opened."""
    cancelled = cancel(lead_ids=[lead_id], reason="the lead replied", kinds=[Job.Kind.FOLLOWUP])
    touch_inactivity(org, lead_id, at)
    if channel == Channel.WHATSAPP:
        _schedule_timeouts(Job.Kind.SESSION_EXPIRY, {lead_id: (org.pk, at + CUSTOMER_SERVICE_WINDOW)})
    return cancelled


def cancel(*, lead_ids: list[int], reason: str, kinds: list[str] | None = None) -> int:
    """Cancel live jobs of these leads (every kind unless `kinds`), with a timeline entry per lead."""
    if not lead_ids:  # e.g. a STOP from a number that never was a lead (an empty IN cannot be written)
        return 0
    live = Job.objects.filter(lead_id__in=lead_ids, status__in=[Job.Status.PENDING, Job.Status.ENQUEUED])
    if kinds is not None:
        live = live.filter(kind__in=kinds)
    now = timezone.now()
    with connection.cursor() as cursor:
        sql, params = live.values("pk").query.sql_with_params()
        cursor.execute(
            f"UPDATE {Job._meta.db_table} SET status = 'cancelled', reason = %s, finished_at = %s "
            f"WHERE id IN ({sql}) AND status IN ('pending', 'enqueued') RETURNING lead_id, kind",
            [reason[:300], now, *params],
        )
        rows = cursor.fetchall()
    followups: dict[int, int] = {}
    for lead_id, kind in rows:
        if kind == Job.Kind.FOLLOWUP:
            followups[lead_id] = followups.get(lead_id, 0) + 1
    for lead_id, count in followups.items():
        timeline.record(lead_id, ("followups.cancelled", {"count": count, "reason": reason}, now))
    return len(rows)


# --- The scheduler's tick -------------------------------------------------------------------


INTAKE_WINDOW_SECONDS = 10
_INTAKE_SAMPLE = 5000  # newest leads looked at: enough to see 30,000 leads/min in the window


def lead_intake_per_minute() -> float:
    """New leads a minute over the last INTAKE_WINDOW_SECONDS, from the newest rows by primary key."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            SELECT count(*) FROM (SELECT created_at FROM {Lead._meta.db_table} ORDER BY id DESC LIMIT %s) newest
            WHERE created_at > now() - make_interval(secs => %s)
            """,
            [_INTAKE_SAMPLE, INTAKE_WINDOW_SECONDS],
        )
        return cursor.fetchone()[0] * 60 / INTAKE_WINDOW_SECONDS


def dispatch_rate(intake_per_minute: float) -> float:
    """Scheduled jobs a second while `intake_per_minute` leads arrive: new leads come first.

    The full FOLLOWUP_DISPATCH_PER_SECOND when no lead arrives, falling linearly to the
    floor at FOLLOWUP_YIELD_AT_LEADS_PER_MIN; never below the floor, so follow-ups
    keep moving through any rush.
    """
    spare = max(0.0, 1 - intake_per_minute / settings.FOLLOWUP_YIELD_AT_LEADS_PER_MIN)
    return max(settings.FOLLOWUP_DISPATCH_FLOOR_PER_SECOND, settings.FOLLOWUP_DISPATCH_PER_SECOND * spare)


def _per_tick(rate: float) -> int:
    """Jobs for one tick; a fraction becomes one more job with that probability, so 0.3 a
    tick is 0.3 a tick on average."""
    exact = rate * settings.SCHEDULED_JOBS_TICK_SECONDS
    whole = int(exact)
    return whole + (random.random() < exact - whole)


def dispatch_due(*, now: datetime | None = None) -> list[int]:
    """Claim due jobs (up to this tick's share of `dispatch_rate` and the in-flight cap) and
    stuck ones; returns the ids to enqueue.

    The caller publishes one task per id after this commits.
    """
    now = now or timezone.now()
    per_tick = _per_tick(dispatch_rate(lead_intake_per_minute()))
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(
                f"""
                WITH stuck AS (
                    SELECT id FROM {Job._meta.db_table}
                    WHERE status IN ('enqueued', 'running') AND enqueued_at < %(stuck)s
                    ORDER BY enqueued_at LIMIT 100 FOR UPDATE SKIP LOCKED
                ), room AS (
                    SELECT LEAST(%(per_tick)s, GREATEST(0, %(cap)s - (
                        SELECT count(*) FROM {Job._meta.db_table} WHERE status IN ('enqueued', 'running')))) AS n
                ), due AS (
                    SELECT id FROM {Job._meta.db_table}
                    WHERE status = 'pending' AND due_at <= %(now)s
                    ORDER BY due_at LIMIT (SELECT n FROM room) FOR UPDATE SKIP LOCKED
                )
                UPDATE {Job._meta.db_table} SET status = CASE WHEN status = 'pending' THEN 'enqueued' ELSE status END,
                    enqueued_at = %(now)s
                WHERE id IN (SELECT id FROM stuck UNION ALL SELECT id FROM due)
                RETURNING id
                """,
                {"now": now, "stuck": now - STUCK_AFTER, "cap": settings.FOLLOWUP_MAX_IN_FLIGHT, "per_tick": per_tick},
            )
            return [row[0] for row in cursor.fetchall()]


# --- Running one job ----------------------------------------------------------------------------


def run(job_id: int) -> None:
    """Do one due job. Raises RetryLater when a follow-up's provider failed transiently."""
    if not _claim(job_id):
        return
    job = Job.objects.select_related("lead__contact", "step__sequence").get(pk=job_id)
    org = selectors.organization(job.organization_id)
    if org is None:
        _finish(job, Job.Status.CANCELLED, "the organization no longer exists")
        return
    if job.kind == Job.Kind.FOLLOWUP:
        _run_followup(job, org)
    else:
        _run_timeout(job, org)


def _claim(job_id: int) -> bool:
    # RUNNING too: a job whose worker died (or whose task is retrying) is resumed;
    # its message decides whether anything is still to send.
    return Job.objects.filter(pk=job_id, status__in=[Job.Status.ENQUEUED, Job.Status.RUNNING]).update(
        status=Job.Status.RUNNING, attempts=F("attempts") + 1, enqueued_at=timezone.now()
    ) == 1


def _finish(job: Job, status: str, reason: str = "") -> bool:
    done = Job.objects.filter(pk=job.pk, status=Job.Status.RUNNING).update(status=status, reason=reason[:300], finished_at=timezone.now())
    return done == 1


def _run_followup(job: Job, org: Organization) -> None:
    lead, step = job.lead, job.step
    existing = Message.objects.filter(scheduled_job=job).select_related("conversation").first()
    # First run, or a retry whose message never reached the provider: while the retry waited
    # out a backoff (two minutes at most) the lead may have replied, closed or opted out.
    why_not = _why_not(job, lead, step) if existing is None or existing.status == Message.Status.QUEUED else ""
    if why_not:
        _cancel(job, existing, why_not)
        return
    if existing is not None:  # only finish what was started (a retry minutes after a first attempt in business hours)
        _send(job, org, existing, step)
        return
    now = timezone.now()
    allowed = quiet_hours.next_allowed(org, now)
    if allowed > now:
        reason = f"deferred to business hours ({quiet_hours.describe(org)})"
        Job.objects.filter(pk=job.pk, status=Job.Status.RUNNING).update(status=Job.Status.PENDING, due_at=allowed, reason=reason, enqueued_at=None)
        timeline.record(lead.pk, ("followup.deferred", {"step": step.position, "until": allowed.isoformat()}, now))
        return
    if not outbound.channel_configured(org, step.channel):
        _finish(job, Job.Status.FAILED, f"{step.channel} is not configured for the organization")
        return
    conversation = conversation_for(lead, step.channel)
    composed = _compose(org, lead, step, conversation)
    if composed is None:
        _finish(job, Job.Status.FAILED, "outside the 24-hour window and no approved WhatsApp template to use")
        return
    template, body = composed
    message = outbound.queue(conversation=conversation, lead_id=lead.pk, body=body, template_name=template, scheduled_job=job)
    # Writing the text can take the model's whole budget: the lead may have replied (or closed,
    # or opted out) meanwhile, and a follow-up right after their reply would ignore it.
    if why_not := _why_not(job, Lead.objects.select_related("contact").get(pk=lead.pk), step):  # as it is now
        _cancel(job, message, why_not)
        return
    _send(job, org, message, step)


def _cancel(job: Job, queued: Message | None, why_not: str) -> None:
    with transaction.atomic():
        if queued is not None and not outbound.withdraw(queued, why_not):
            return  # another worker is sending it right now
        _finish(job, Job.Status.CANCELLED, why_not)
        step = job.step
        timeline.record(job.lead_id, ("followup.cancelled", {"step": step.position if step else None, "reason": why_not}, timezone.now()))


def _send(job: Job, org: Organization, message: Message, step: FollowUpStep | None) -> None:
    language = (step.template_language if step else "") or org.whatsapp_template_language
    if outbound.deliver(message, org, phone=job.lead.contact.phone, template_language=language):
        with transaction.atomic():
            if _finish(job, Job.Status.DONE):
                data = {"step": step.position if step else None, "channel": message.channel, "template": message.template_name or None}
                timeline.record(job.lead_id, ("followup.sent", data, timezone.now()))
                touch_inactivity(org, job.lead_id, timezone.now())


def _why_not(job: Job, lead: Lead, step: FollowUpStep | None) -> str:
    if step is None or not step.sequence.active:
        return "the follow-up step was removed or its sequence deactivated"
    if lead.status not in Lead.OPEN_STATUSES:
        return f"the lead is {lead.status}"
    if not lead.contact.consent:
        return "the contact has opted out"
    if not lead.contact.phone:
        return "the contact has no phone number"
    if Message.objects.filter(conversation__contact_id=lead.contact_id, direction=Message.Direction.INBOUND, created_at__gte=job.created_at).exists():
        return "the lead replied"
    return ""


def _compose(org: Organization, lead: Lead, step: FollowUpStep, conversation: Conversation) -> tuple[str, str] | None:
    """(template name or "", body): free-form inside the 24-hour window (the model's, if the
    step asks for it), an approved template outside it, plain text by SMS; None if impossible."""
    text = render_text(step.text, org, lead.contact, lead)
    if step.channel == Channel.SMS:
        return "", text
    if conversation.window_open():
        if step.use_ai:
            text = _ai_text(org, conversation, text)
        return "", text
    if step.template_name:
        return step.template_name, text  # a step's own template takes the text as its one parameter
    if org.whatsapp_template_name:
        return org.whatsapp_template_name, text if org.whatsapp_template_has_parameter else ""
    return None


def _ai_text(org: Organization, conversation: Conversation, guidance: str) -> str:
    history = conversation_history(conversation)
    release_db_connection()
    prompt = org.reply_prompt.replace("{organization}", org.name)
    history.append(("system", f"The lead has not answered yet. Write one short follow-up along these lines: {guidance}"))
    try:
        return model.write_reply(model=org.ai_model, system_prompt=prompt, history=history)
    except model.ModelUnavailable:
        return guidance


def _run_timeout(job: Job, org: Organization) -> None:
    """Inactivity and session expiry: database changes only, in one transaction holding the
    job's row, so an activity moving the job meanwhile waits and then reschedules it."""
    with transaction.atomic():
        locked = Job.objects.select_for_update().filter(pk=job.pk, status=Job.Status.RUNNING).first()
        if locked is None:
            return
        now = timezone.now()
        if locked.due_at > now:  # moved by an activity since it was enqueued
            Job.objects.filter(pk=job.pk).update(status=Job.Status.PENDING, enqueued_at=None)
            return
        if job.kind == Job.Kind.INACTIVITY:
            _close_inactive(job, org, now)
        else:
            _window_closed(job, now)
        _finish(job, Job.Status.DONE)


def _close_inactive(job: Job, org: Organization, now: datetime) -> None:
    closed = Lead.objects.filter(pk=job.lead_id, status__in=Lead.OPEN_STATUSES).update(status=Lead.Status.LOST, closed_at=now)
    if not closed:
        return
    reason = f"no message either way for {org.inactivity_timeout_hours} h"
    cancel(lead_ids=[job.lead_id], reason="the lead was closed as inactive", kinds=[Job.Kind.FOLLOWUP, Job.Kind.SESSION_EXPIRY])
    timeline.record(job.lead_id, ("lead.closed", {"status": Lead.Status.LOST, "reason": reason}, now))
    emit("lead.status_changed", organization_id=org.pk, data={"lead_id": job.lead_id, "status": Lead.Status.LOST, "reason": "inactive"})


def _window_closed(job: Job, now: datetime) -> None:
    conversation = Conversation.objects.filter(contact_id=job.lead.contact_id, channel=Channel.WHATSAPP).first()
    if conversation is None or window_open(conversation.last_inbound_at, now):
        return
    debounce.forget(conversation.pk)
    timeline.record(job.lead_id, (
        "conversation.window_closed",
        {"channel": Channel.WHATSAPP, "last_inbound_at": conversation.last_inbound_at.isoformat(),
         "detail": "24 hours since the lead's last message: WhatsApp messages now need an approved template"},
        now,
    ))
