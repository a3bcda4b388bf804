"""After the greeting: debounced replies, durable follow-ups, timeouts, opt-out, business hours.

Services against the real PostgreSQL and Redis; provider HTTP faked at the
client seam with `responses`. The whole path through real processes is in
tests/test_conversations_e2e.py.
"""

from __future__ import annotations

import threading
import uuid
from datetime import datetime, time, timedelta, timezone as dt_timezone
from zoneinfo import ZoneInfo

import pytest
import responses
from django.conf import settings
from django.db import connection
from django.utils import timezone

from conversations import debounce, followups, quiet_hours, replies, services
from conversations.models import Conversation, FollowUpSequence, FollowUpStep, Message, Reply, ScheduledJob
from conversations.receipts import Inbound, receive
from leads.models import Lead, LeadEvent
from swiftex import redis as swx_redis
from swiftex.models import OutboxEvent
from tests.factories import PROVIDER_CREDENTIALS, org_with_providers
from tests.support import api_client, post_json

pytestmark = pytest.mark.django_db(transaction=True)

PNID = PROVIDER_CREDENTIALS["whatsapp_phone_number_id"]
SID = PROVIDER_CREDENTIALS["twilio_account_sid"]
WA_URL = f"{settings.WHATSAPP_API_URL}/{PNID}/messages"
SMS_URL = f"{settings.TWILIO_API_URL}/2010-04-01/Accounts/{SID}/Messages.json"
PHONE = "+14155550123"
Job = ScheduledJob


def wa_ok(wamid: str | None = None) -> dict:
    return {"status": 200, "json": {"messaging_product": "whatsapp", "messages": [{"id": wamid or f"wamid.{uuid.uuid4().hex}"}]}}


@pytest.fixture
def org(settings):
    settings.ORGANIZATION_CACHE_SECONDS = 0  # tests edit the organization between steps
    settings.OPENAI_API_KEY = ""  # the organization's fallback texts; the e2e tests use the fake model
    org, key = org_with_providers(quiet_hours_enabled=False)
    org.api_key = key
    return org


@pytest.fixture
def lead(org):
    response = post_json(api_client(org.api_key), "/api/v1/leads", {"name": "Ana Lima", "phone": PHONE, "source": "web", "consent": True})
    assert response.status_code == 201
    return Lead.objects.select_related("contact").get(pk=response.json()["id"])


@pytest.fixture
def provider():
    with responses.RequestsMock(assert_all_requests_are_fired=True) as mock:
        yield mock


def inbound(org, body: str, *, at: datetime | None = None, channel: str = "whatsapp") -> Message | None:
    return receive(org, Inbound(channel=channel, provider_message_id=f"wamid.in.{uuid.uuid4().hex}", phone=PHONE, body=body, at=at or timezone.now()))


def sequence(org, *delays_minutes: int, channel: str = "whatsapp", **fields) -> FollowUpSequence:
    seq = FollowUpSequence.objects.create(organization=org, name="Nurture")
    for position, delay in enumerate(delays_minutes, start=1):
        FollowUpStep.objects.create(sequence=seq, position=position, delay_minutes=delay, channel=channel,
                                    text=f"Step {position}: still interested, {{first_name}}?", **fields)
    return seq


def kinds(lead: Lead) -> list[str]:
    return list(LeadEvent.objects.filter(lead=lead).order_by("id").values_list("kind", flat=True))


def make_due(*jobs: Job) -> None:
    """Time travel: the job is due now."""
    Job.objects.filter(pk__in=[job.pk for job in jobs]).update(due_at=timezone.now() - timedelta(seconds=1))


def run_due() -> list[int]:
    ids = followups.dispatch_due()
    for job_id in ids:
        followups.run(job_id)
    return ids


# --- Debounce -------------------------------------------------------------------------------------


def test_each_message_restarts_the_quiet_window_and_the_burst_is_taken_once():
    conversation_id = 900_000 + uuid.uuid4().int % 1000
    debounce.forget(conversation_id)
    first = debounce.push(conversation_id, 1, quiet_seconds=0.4, max_wait_seconds=5)
    assert 0.3 < first <= 0.4
    assert debounce.take(conversation_id).wait_seconds > 0  # not due: nothing taken
    debounce.push(conversation_id, 2, quiet_seconds=0.4, max_wait_seconds=5)
    import time as clock

    clock.sleep(0.25)
    debounce.push(conversation_id, 3, quiet_seconds=0.4, max_wait_seconds=5)
    clock.sleep(0.25)  # 0.5 s after the first message, 0.25 s after the last: still inside the window
    assert debounce.take(conversation_id).wait_seconds > 0
    clock.sleep(0.2)
    results = []
    threads = [threading.Thread(target=lambda: results.append(debounce.take(conversation_id))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    taken = [r.message_ids for r in results if r.message_ids]
    assert taken == [(1, 2, 3)]


def test_a_contact_who_keeps_typing_is_answered_at_the_maximum_wait():
    conversation_id = 910_000 + uuid.uuid4().int % 1000
    debounce.forget(conversation_id)
    debounce.push(conversation_id, 1, quiet_seconds=10, max_wait_seconds=1)
    assert debounce.push(conversation_id, 2, quiet_seconds=10, max_wait_seconds=1) <= 1.0


# --- Replies ----------------------------------------------------------------------------------------


def test_a_burst_is_one_reply_and_a_second_flush_finds_nothing_left(org, lead, provider):
    provider.add(responses.POST, WA_URL, **wa_ok())
    messages = [inbound(org, text) for text in ("Hi", "looking for a home loan", "budget 300k")]
    conversation_id = messages[0].conversation_id
    assert OutboxEvent.objects.filter(event_type="message.received").count() == 3

    reply = replies.answer(conversation_id, [m.pk for m in messages])
    assert replies.answer(conversation_id, [m.pk for m in messages]) is None  # a redelivered flush

    reply.refresh_from_db()
    assert reply.state == Reply.State.DONE and reply.text_source == "template"
    assert set(Message.objects.filter(answered_by=reply).values_list("pk", flat=True)) == {m.pk for m in messages}
    body = provider.calls[0].request.body
    assert b'"type": "text"' in body  # the contact just wrote: free-form inside the window
    assert kinds(lead)[-3:] == ["reply.started", "reply.composed", "message.accepted"]


def test_when_redis_is_down_the_flush_answers_every_unanswered_message_from_postgres(org, lead, provider, monkeypatch):
    provider.add(responses.POST, WA_URL, **wa_ok())
    messages = [inbound(org, "Hi"), inbound(org, "anyone there?")]

    def unavailable(*args, **kwargs):
        raise swx_redis.RedisUnavailable("down")

    monkeypatch.setattr(debounce, "_run", unavailable)
    assert replies.schedule(messages[0].conversation_id, messages[0].pk, org) == org.reply_debounce_seconds
    assert replies.flush(messages[0].conversation_id) == 0.0
    assert Reply.objects.get().answered_messages.count() == 2


def test_a_message_whose_burst_was_lost_is_found_by_the_sweep(org, lead):
    message = inbound(org, "Hi")
    Message.objects.filter(pk=message.pk).update(created_at=timezone.now() - timedelta(seconds=org.reply_debounce_max_seconds + 31))
    assert replies.orphaned_conversations() == [message.conversation_id]


def test_two_flushes_racing_for_one_burst_send_one_reply(org, lead, provider):
    provider.add(responses.POST, WA_URL, **wa_ok())
    messages = [inbound(org, "Hi"), inbound(org, "budget 300k")]
    barrier = threading.Barrier(2)
    results = []

    def flush_now():
        barrier.wait()
        try:
            results.append(replies.answer(messages[0].conversation_id, [m.pk for m in messages]))
        finally:
            connection.close()

    threads = [threading.Thread(target=flush_now) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(1 for r in results if r is not None) == 1
    assert Message.objects.filter(direction="outbound", reply__isnull=False).count() == 1


def test_the_model_sees_the_conversation_with_roles(org, lead):
    inbound(org, "Hi")
    conversation = Conversation.objects.get(contact=lead.contact)
    Message.objects.create(organization=org, conversation=conversation, direction="outbound", channel="whatsapp", body="Hello Ana!", status="read")
    inbound(org, "budget 300k")
    assert replies.conversation_history(conversation) == [("user", "Hi"), ("assistant", "Hello Ana!"), ("user", "budget 300k")]


# --- Opt-out ------------------------------------------------------------------------------------------


def test_stop_revokes_consent_cancels_everything_and_sends_one_confirmation(org, lead, provider):
    sequence(org, 60, 1440)
    followups.start_sequences([(lead.pk, org.pk, timezone.now())])
    stop = inbound(org, "STOP")
    lead.contact.refresh_from_db()
    assert lead.contact.consent is False
    assert set(Job.objects.filter(lead=lead).values_list("status", flat=True)) == {"cancelled"}
    event = OutboxEvent.objects.filter(event_type="message.received").last()
    assert event.payload["opt_out"] is True

    provider.add(responses.POST, WA_URL, **wa_ok())
    confirmation = replies.confirm_opt_out(stop.pk)
    assert replies.confirm_opt_out(stop.pk) is None  # redelivered: still one
    assert confirmation.kind == "opt_out" and confirmation.state == "done"
    assert f"from {org.name}" in confirmation.text
    assert "consent.revoked" in kinds(lead) and "followups.cancelled" in kinds(lead)

    later = inbound(org, "hello?")  # nothing more is ever sent: the reply is skipped, no provider call
    reply = replies.answer(later.conversation_id, [later.pk])
    assert reply.state == "skipped" and "opted out" in reply.reason


def test_an_opt_out_is_undone_only_by_an_opt_in_given_after_it(org, lead):
    from dataclasses import replace

    from leads.services import LeadInput, lead_ingest

    stop_at = timezone.now() - timedelta(minutes=10)
    inbound(org, "STOP", at=stop_at)
    contact = lead.contact
    contact.refresh_from_db()
    assert (contact.consent, contact.consent_revoked_at) == (False, stop_at)
    Lead.objects.filter(pk=lead.pk).update(status="lost")  # an old list or a backfill would open a new lead
    opt_in = LeadInput(source="import", name="Ana Lima", phone=PHONE, consent=True)

    lead_ingest(org=org, data=opt_in, payload={}, imported=True)  # "everyone on this list opted in"
    lead_ingest(org=org, data=replace(opt_in, source="meta", consent_given_at=stop_at - timedelta(days=3)), payload={})
    contact.refresh_from_db()
    assert contact.consent is False

    response = post_json(api_client(org.api_key), "/api/v1/leads", {"phone": PHONE, "source": "web", "consent": True})
    assert response.status_code in (200, 201)
    contact.refresh_from_db()
    assert contact.consent is True and contact.consent_at > stop_at  # they ticked the box again, today


def test_a_stop_from_someone_who_never_opted_in_is_remembered_too(org):
    stop_at = timezone.now() - timedelta(minutes=1)
    inbound(org, "STOP", at=stop_at)
    from leads.models import Contact
    from leads.services import LeadInput, lead_ingest

    contact = Contact.objects.get(phone=PHONE)
    assert (contact.consent, contact.consent_revoked_at) == (False, stop_at)
    lead_ingest(org=org, data=LeadInput(source="import", phone=PHONE, consent=True), payload={}, imported=True)
    contact.refresh_from_db()
    assert contact.consent is False


def test_opt_outs_from_before_the_column_existed_are_filled_in_by_the_migration(org, lead):
    import importlib

    from leads.models import Contact

    migration = importlib.import_module("leads.migrations.0015_backfill_consent_revoked_at")
    stop_at = timezone.now() - timedelta(days=30)
    inbound(org, " Stop! ", at=stop_at)  # the lead's contact: a timeline entry and the message
    stranger = "+14155550999"
    receive(org, Inbound(channel="whatsapp", provider_message_id="wamid.in.x", phone=stranger, body="PARAR", at=stop_at))
    once = Contact.objects.create(organization=org, phone="+14155550998", consent=False, consent_at=stop_at - timedelta(days=9))
    never = Contact.objects.create(organization=org, phone="+14155550997", consent=False)
    Contact.objects.update(consent_revoked_at=None)  # as the data stood before the deploy

    with connection.cursor() as cursor:
        cursor.execute(migration.FROM_STOPS)
        cursor.execute(migration.FALLBACK)
    revoked = dict(Contact.objects.values_list("phone", "consent_revoked_at"))
    assert revoked[PHONE] == stop_at and revoked[stranger] == stop_at
    assert revoked[once.phone] is not None and revoked[never.phone] is None


def test_the_opt_out_keywords_are_the_organizations(org, lead):
    org.opt_out_keywords = "basta, nao quero"
    org.save()
    inbound(org, "stop")
    lead.contact.refresh_from_db()
    assert lead.contact.consent is True
    inbound(org, "Não quero".replace("ã", "a"))
    lead.contact.refresh_from_db()
    assert lead.contact.consent is False


def test_twilio_confirms_its_own_standard_keywords_so_we_send_nothing_by_sms(org, lead):
    stop = inbound(org, "STOP", channel="sms")
    reply = replies.confirm_opt_out(stop.pk)
    assert reply.state == "skipped" and "Twilio" in reply.reason


def test_a_message_queued_before_the_stop_is_not_sent_after_it(org, lead):
    conversation = Conversation.objects.create(organization=org, contact=lead.contact, channel="whatsapp")
    job = Job.objects.create(organization=org, lead=lead, kind="followup", due_at=timezone.now(), status="running")
    from conversations import outbound

    message = outbound.queue(conversation=conversation, lead_id=lead.pk, body="Still there?", scheduled_job=job)
    lead.contact.__class__.objects.filter(pk=lead.contact.pk).update(consent=False)
    assert outbound.deliver(message, org, phone=PHONE) is False  # no provider call (responses would refuse it)
    message.refresh_from_db()
    job.refresh_from_db()
    assert (message.status, message.error_code, job.status) == ("failed", "no_consent", "failed")


# --- Follow-ups ------------------------------------------------------------------------------------------


def test_a_lead_deleted_before_its_sequence_starts_is_skipped_not_an_error(org, lead):
    """Its event was still queued when an admin deleted it: the batch it is in must go through."""
    sequence(org, 60, template_name="followup_1")
    gone = lead.pk
    Lead.objects.filter(pk=gone).delete()
    assert followups.start_sequences([(gone, org.pk, timezone.now())]) == 0
    assert not Job.objects.filter(lead_id=gone).exists()


def test_a_sequence_starts_once_per_lead_and_sends_each_step_once(org, lead, provider):
    sequence(org, 60, 2880, template_name="followup_1")
    started = timezone.now()
    assert followups.start_sequences([(lead.pk, org.pk, started)]) == 2
    assert followups.start_sequences([(lead.pk, org.pk, started)]) == 0  # the event redelivered
    first, second = Job.objects.filter(kind="followup").order_by("due_at")
    assert first.due_at == started + timedelta(minutes=60) and second.due_at == started + timedelta(days=2)
    assert run_due() == []  # nothing due yet

    provider.add(responses.POST, WA_URL, **wa_ok())
    make_due(first)
    assert run_due() == [first.pk]
    first.refresh_from_db()
    assert first.status == "done" and first.message.template_name == "followup_1"  # window closed: an approved template
    first.status = "enqueued"  # a stale task for the same job runs again
    first.save()
    followups.run(first.pk)
    assert Message.objects.filter(scheduled_job=first).count() == 1 and len(provider.calls) == 1
    assert "followup.sent" in kinds(lead)


def test_inside_the_window_a_follow_up_is_free_form(org, lead, provider):
    sequence(org, 60)
    followups.start_sequences([(lead.pk, org.pk, timezone.now())])
    Conversation.objects.create(organization=org, contact=lead.contact, channel="whatsapp", last_inbound_at=timezone.now() - timedelta(hours=2))
    provider.add(responses.POST, WA_URL, **wa_ok())
    make_due(*Job.objects.filter(kind="followup"))
    run_due()
    assert b'"type": "text"' in provider.calls[0].request.body and b"Step 1: still interested, Ana?" in provider.calls[0].request.body


def test_a_reply_cancels_the_pending_follow_ups_and_the_worker_checks_again(org, lead):
    sequence(org, 60, 1440)
    followups.start_sequences([(lead.pk, org.pk, timezone.now() - timedelta(minutes=1))])
    inbound(org, "yes, call me")
    assert set(Job.objects.filter(kind="followup").values_list("status", flat=True)) == {"cancelled"}
    assert Job.objects.get(kind="followup", step__position=1).reason == "the lead replied"

    # Enqueued before the reply arrived: the worker sees the reply and sends nothing.
    job = Job.objects.get(kind="followup", step__position=1)
    Job.objects.filter(pk=job.pk).update(status="enqueued")
    followups.run(job.pk)
    job.refresh_from_db()
    assert (job.status, job.reason) == ("cancelled", "the lead replied")


def test_a_follow_up_retrying_after_a_provider_error_is_withdrawn_when_the_lead_replied_meanwhile(org, lead, provider):
    """reply → cancel() cannot reach a RUNNING job waiting out its backoff; its retry checks again."""
    sequence(org, 60, template_name="followup_1")
    followups.start_sequences([(lead.pk, org.pk, timezone.now() - timedelta(minutes=2))])
    job = Job.objects.get(kind="followup")
    make_due(job)
    provider.add(responses.POST, WA_URL, status=503, body="upstream down")
    with pytest.raises(services.RetryLater):
        run_due()
    assert Message.objects.get(scheduled_job=job).status == "queued"

    inbound(org, "yes please call me")  # while the retry waits
    followups.run(job.pk)  # the retry: no second provider call (responses would refuse one)
    job.refresh_from_db()
    message = Message.objects.get(scheduled_job=job)
    assert (job.status, job.reason) == ("cancelled", "the lead replied")
    assert (message.status, message.error_code, message.error_title) == ("failed", "withdrawn", "the lead replied")
    assert len(provider.calls) == 1


def test_a_reply_arriving_while_the_follow_up_is_being_written_cancels_it(org, lead, monkeypatch):
    sequence(org, 60, template_name="followup_1")
    followups.start_sequences([(lead.pk, org.pk, timezone.now() - timedelta(minutes=2))])
    job = Job.objects.get(kind="followup")
    make_due(job)
    real_compose = followups._compose

    def the_lead_writes_meanwhile(*args):
        inbound(org, "just saw your message, call me")  # cancel() cannot touch the RUNNING job
        return real_compose(*args)

    monkeypatch.setattr(followups, "_compose", the_lead_writes_meanwhile)
    run_due()  # no provider mock: a send would fail the test
    job.refresh_from_db()
    message = Message.objects.get(scheduled_job=job)
    assert (job.status, job.reason) == ("cancelled", "the lead replied")
    assert (message.status, message.error_code) == ("failed", "withdrawn")


def test_the_dispatcher_keeps_at_most_the_in_flight_cap_enqueued_and_re_enqueues_lost_ones(org, lead, settings):
    settings.FOLLOWUP_MAX_IN_FLIGHT = 3
    other_leads = [lead]
    for n in range(4):
        response = post_json(api_client(org.api_key), "/api/v1/leads", {"phone": f"+1415555020{n}", "source": "web", "consent": True})
        other_leads.append(Lead.objects.get(pk=response.json()["id"]))
    sequence(org, 1)
    followups.start_sequences([(l.pk, org.pk, timezone.now() - timedelta(minutes=5)) for l in other_leads])
    assert len(followups.dispatch_due()) == 3
    assert followups.dispatch_due() == []  # full
    stuck = Job.objects.filter(status="enqueued").first()
    Job.objects.filter(pk=stuck.pk).update(enqueued_at=timezone.now() - followups.STUCK_AFTER - timedelta(seconds=1))
    assert followups.dispatch_due() == [stuck.pk]  # its task was lost: enqueued again


def test_follow_ups_yield_to_new_leads(org, lead, settings):
    settings.FOLLOWUP_DISPATCH_PER_SECOND = 20
    settings.FOLLOWUP_DISPATCH_FLOOR_PER_SECOND = 1
    settings.FOLLOWUP_YIELD_AT_LEADS_PER_MIN = 3000
    assert followups.dispatch_rate(0) == 20
    assert followups.dispatch_rate(1500) == 10
    assert followups.dispatch_rate(9000) == 1  # a rush never stalls follow-ups entirely

    leads = [lead]
    for n in range(4):
        response = post_json(api_client(org.api_key), "/api/v1/leads", {"phone": f"+1415555030{n}", "source": "web", "consent": True})
        leads.append(Lead.objects.get(pk=response.json()["id"]))
    assert followups.lead_intake_per_minute() == 5 * 60 / followups.INTAKE_WINDOW_SECONDS
    sequence(org, 1)
    followups.start_sequences([(l.pk, org.pk, timezone.now() - timedelta(minutes=5)) for l in leads])
    settings.FOLLOWUP_YIELD_AT_LEADS_PER_MIN = 30  # these five leads are a rush now
    assert len(followups.dispatch_due()) == 1  # the floor: one a second
    settings.FOLLOWUP_YIELD_AT_LEADS_PER_MIN = 3000
    assert len(followups.dispatch_due()) == 4  # the rest, now that there is room


def test_the_inactivity_timeout_closes_a_silent_lead_and_activity_moves_it(org, lead):
    org.inactivity_timeout_hours = 48
    org.save()
    started = timezone.now()
    followups.start_sequences([(lead.pk, org.pk, started)])
    timeout = Job.objects.get(kind="inactivity")
    assert timeout.due_at == started + timedelta(hours=48)
    inbound(org, "I'll think about it")
    timeout.refresh_from_db()
    assert timeout.due_at > started + timedelta(hours=48) and Job.objects.filter(kind="inactivity").count() == 1

    make_due(timeout)
    run_due()
    lead.refresh_from_db()
    assert lead.status == "lost" and lead.closed_at is not None
    assert "lead.closed" in kinds(lead)
    assert OutboxEvent.objects.filter(event_type="lead.status_changed", payload__status="lost").exists()


def test_session_expiry_notes_when_the_24_hour_window_closes(org, lead):
    message = inbound(org, "Hi", at=timezone.now() - timedelta(hours=25))
    expiry = Job.objects.get(kind="session_expiry")
    assert expiry.due_at == message.created_at + timedelta(hours=24)
    run_due()
    assert "conversation.window_closed" in kinds(lead)


# --- Business hours ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "local, expected",
    [
        (datetime(2026, 11, 27, 20, 30), datetime(2026, 11, 30, 9, 0)),  # Friday evening -> Monday morning
        (datetime(2026, 11, 28, 11, 0), datetime(2026, 11, 30, 9, 0)),  # Saturday -> Monday
        (datetime(2026, 11, 25, 7, 15), datetime(2026, 11, 25, 9, 0)),  # Wednesday early -> that morning
        (datetime(2026, 11, 25, 10, 0), datetime(2026, 11, 25, 10, 0)),  # inside: at once
    ],
)
def test_quiet_hours_move_a_follow_up_to_the_next_business_morning_in_the_organizations_time_zone(org, local, expected):
    org.quiet_hours_enabled, org.timezone = True, "America/Sao_Paulo"
    org.business_hours_start, org.business_hours_end, org.business_days = time(9), time(18), "1,2,3,4,5"
    tz = ZoneInfo("America/Sao_Paulo")
    at = local.replace(tzinfo=tz).astimezone(dt_timezone.utc)
    assert quiet_hours.next_allowed(org, at) == expected.replace(tzinfo=tz)


def test_a_follow_up_due_at_night_is_deferred_by_the_worker_not_sent(org, lead):
    sequence(org, 1)
    followups.start_sequences([(lead.pk, org.pk, timezone.now() - timedelta(minutes=5))])
    org.quiet_hours_enabled = True
    tomorrow = (timezone.now() + timedelta(days=1)).date()
    org.business_days, org.business_hours_start, org.business_hours_end = str(tomorrow.isoweekday()), time(9), time(10)
    org.save()
    job = Job.objects.get(kind="followup")
    run_due()
    job.refresh_from_db()
    assert job.status == "pending" and job.due_at == datetime.combine(tomorrow, time(9), tzinfo=dt_timezone.utc)
    assert "followup.deferred" in kinds(lead) and not Message.objects.filter(scheduled_job=job).exists()


def test_business_hours_and_keywords_are_validated(org):
    from django.core.exceptions import ValidationError

    org.business_hours_start, org.business_hours_end, org.business_days, org.opt_out_keywords = time(18), time(9), "1,8", " , "
    with pytest.raises(ValidationError) as error:
        org.full_clean()
    assert {"business_hours_end", "business_days", "opt_out_keywords"} <= set(error.value.message_dict)


def test_the_sweep_fails_a_reply_whose_provider_never_answered(org, lead, settings):
    settings.WHATSAPP_SENT_TIMEOUT_SECONDS = 60
    message = inbound(org, "Hi")
    reply = Reply.objects.create(organization=org, conversation_id=message.conversation_id, lead=lead, state="sending", text="Hello")
    sent = Message.objects.create(organization=org, conversation_id=message.conversation_id, lead=lead, reply=reply, direction="outbound",
                                  channel="whatsapp", body="Hello", status="sending", sending_at=timezone.now() - timedelta(minutes=5))
    assert services.expire_unsent_greetings() == 1
    sent.refresh_from_db()
    reply.refresh_from_db()
    assert sent.status == "failed" and reply.state == "failed"


def test_a_reply_that_cannot_be_finished_is_resumed_then_given_up_on_the_timeline(org, lead):
    message = inbound(org, "Hi")
    now = timezone.now()
    composing = Reply.objects.create(organization=org, conversation_id=message.conversation_id, lead=lead,
                                     created_at=now - timedelta(minutes=5))
    assert replies.unfinished_replies(now=now) == [composing.pk] and replies.give_up_stale_replies(now=now) == 0

    stuck = Reply.objects.create(organization=org, conversation_id=message.conversation_id, lead=lead, state="sending",
                                 text="Hello", created_at=now - timedelta(hours=2))  # its compose or send failed every time
    queued = Message.objects.create(organization=org, conversation_id=message.conversation_id, lead=lead, reply=stuck,
                                    direction="outbound", channel="whatsapp", body="Hello", status="queued")
    assert replies.unfinished_replies(now=now) == [composing.pk]  # not retried again
    assert replies.give_up_stale_replies(now=now) == 1 and replies.give_up_stale_replies(now=now) == 0
    stuck.refresh_from_db()
    queued.refresh_from_db()
    assert stuck.state == "failed" and "within 60 minutes" in stuck.reason
    assert (queued.status, queued.error_code) == ("failed", "withdrawn")
    entry = LeadEvent.objects.get(lead=lead, kind="reply.failed")
    assert entry.data["reply_id"] == stuck.pk


def test_a_reply_given_up_while_it_was_being_composed_is_not_sent(org, lead, monkeypatch):
    message = inbound(org, "Hi")
    reply = Reply.objects.create(organization=org, conversation_id=message.conversation_id, lead=lead)
    real_history = replies.conversation_history

    def given_up_meanwhile(conversation):
        Reply.objects.filter(pk=reply.pk).update(state="failed")  # the sweep, in another process
        return real_history(conversation)

    monkeypatch.setattr(replies, "conversation_history", given_up_meanwhile)
    replies.resume(reply.pk)  # no provider mock: a send would fail the test
    reply.refresh_from_db()
    assert reply.state == "failed" and not Message.objects.filter(reply=reply).exists()
