"""After the greeting, through real processes: two web processes, relay, every lane, the
scheduler, RabbitMQ, Redis, PostgreSQL and the fake providers (model, WhatsApp, Twilio).

The contact's messages are signed WhatsApp webhooks posted to the web processes,
exactly as Meta sends them.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, time as clock_time, timedelta, timezone as dt_timezone
from zoneinfo import ZoneInfo

import pytest
import requests
from django.utils import timezone

from conversations.models import FollowUpSequence, FollowUpStep, Message, Reply, ScheduledJob
from leads.models import Contact, Lead, LeadEvent
from tests.factories import org_with_providers
from tests.support import Stack, contact_writes, rabbitmq, wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

TIMEOUT = 30


@pytest.fixture(scope="module")
def stack(django_db_setup, django_db_blocker, fake_providers, tmp_path_factory):
    running = Stack(fake_providers, tmp_path_factory.mktemp("conversations"))
    running.second_web = running.add_web()
    yield running
    running.stop()


@pytest.fixture
def e2e(stack, fakes):
    fakes.configure(webhook_url=stack.url)
    org, key = org_with_providers(quiet_hours_enabled=False)
    return stack, org, key


def greeted_lead(stack: Stack, key: str, phone: str) -> Lead:
    body = {"name": "Ana Lima", "phone": phone, "source": "web", "consent": True}
    response = requests.post(f"{stack.url}/api/v1/leads", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert response.status_code == 201, response.text
    lead_id = response.json()["id"]
    wait_until(lambda: Lead.objects.filter(pk=lead_id, first_response_at__isnull=False).exists(), timeout=TIMEOUT, what="the greeting")
    return Lead.objects.select_related("contact").get(pk=lead_id)


def sends_to(fakes, phone: str) -> list[dict]:
    return [r for r in fakes.requests("whatsapp") if r["body"].get("to", "") == phone.lstrip("+") and r["status"] == 200]


def model_calls_with(fakes, text: str) -> int:
    return sum(1 for r in fakes.requests("openai") if text in json.dumps(r["body"].get("messages", [])))


def kinds(lead: Lead) -> list[str]:
    return list(LeadEvent.objects.filter(lead=lead).order_by("id").values_list("kind", flat=True))


def sequence(org, delay_minutes: int) -> FollowUpStep:
    seq = FollowUpSequence.objects.create(organization=org, name="Nurture")
    return FollowUpStep.objects.create(sequence=seq, position=1, delay_minutes=delay_minutes, text="Still looking, {first_name}?",
                                       template_name="lead_followup")


def test_a_three_message_burst_across_two_web_processes_gets_one_model_call_and_one_reply(e2e, fakes):
    stack, org, key = e2e
    phone = "+14155550301"
    lead = greeted_lead(stack, key, phone)
    greeting_sends = len(sends_to(fakes, phone))

    for web, text in ((stack.url, "Hi"), (stack.second_web, "looking for a home loan"), (stack.url, "budget 300k")):
        contact_writes(web, phone, text)
        time.sleep(0.4)  # typing: well inside the 3 s quiet window

    reply = wait_until(lambda: Reply.objects.filter(lead=lead, state="done").first(), timeout=TIMEOUT, what="the reply")
    time.sleep(4)  # a second reply, if any, would come within another quiet window
    assert Reply.objects.filter(lead=lead).count() == 1
    assert sorted(reply.answered_messages.values_list("body", flat=True)) == sorted(["Hi", "looking for a home loan", "budget 300k"])
    assert model_calls_with(fakes, "budget 300k") == 1 and reply.text_source == "ai"
    replies_sent = sends_to(fakes, phone)[greeting_sends:]
    assert len(replies_sent) == 1 and replies_sent[0]["body"]["type"] == "text"
    assert {"reply.started", "reply.composed"} <= set(kinds(lead))


def test_a_follow_up_due_in_two_days_is_sent_once_after_scheduler_workers_and_rabbitmq_restarted(e2e, fakes):
    stack, org, key = e2e
    phone = "+14155550302"
    sequence(org, delay_minutes=2 * 24 * 60)
    lead = greeted_lead(stack, key, phone)
    job = wait_until(lambda: ScheduledJob.objects.filter(lead=lead, kind="followup").first(), timeout=TIMEOUT, what="the follow-up job")
    assert job.status == "pending" and job.due_at > timezone.now() + timedelta(days=1, hours=23)

    stack.stop_workers()
    rabbitmq("stop_app")
    rabbitmq("start_app")
    stack.start_workers()
    ScheduledJob.objects.filter(pk=job.pk).update(due_at=timezone.now() - timedelta(seconds=1))  # two days later

    wait_until(lambda: ScheduledJob.objects.filter(pk=job.pk, status="done").exists(), timeout=TIMEOUT, what="the follow-up to go out")
    time.sleep(3)  # the scheduler ticks every second: a second send would show by now
    followups = [r for r in sends_to(fakes, phone) if r["body"].get("template", {}).get("name") == "lead_followup"]
    assert len(followups) == 1
    assert Message.objects.filter(scheduled_job=job).count() == 1 and "followup.sent" in kinds(lead)


def test_a_reply_cancels_the_pending_follow_ups(e2e, fakes):
    stack, org, key = e2e
    phone = "+14155550303"
    sequence(org, delay_minutes=60)
    lead = greeted_lead(stack, key, phone)
    job = wait_until(lambda: ScheduledJob.objects.filter(lead=lead, kind="followup").first(), timeout=TIMEOUT, what="the follow-up job")

    contact_writes(stack.second_web, phone, "yes, call me tomorrow")
    job.refresh_from_db()
    assert (job.status, job.reason) == ("cancelled", "the lead replied")
    ScheduledJob.objects.filter(pk=job.pk).update(due_at=timezone.now() - timedelta(seconds=1))
    wait_until(lambda: Reply.objects.filter(lead=lead, state="done").exists(), timeout=TIMEOUT, what="the reply")
    time.sleep(2)
    assert not Message.objects.filter(scheduled_job=job).exists()


def test_stop_sends_one_confirmation_and_blocks_every_later_message(e2e, fakes):
    stack, org, key = e2e
    phone = "+14155550304"
    sequence(org, delay_minutes=60)
    lead = greeted_lead(stack, key, phone)
    job = wait_until(lambda: ScheduledJob.objects.filter(lead=lead, kind="followup").first(), timeout=TIMEOUT, what="the follow-up job")
    before = len(sends_to(fakes, phone))

    contact_writes(stack.url, phone, "STOP")
    wait_until(lambda: Reply.objects.filter(lead=lead, kind="opt_out", state="done").exists(), timeout=TIMEOUT, what="the confirmation")
    assert Contact.objects.get(pk=lead.contact_id).consent is False
    contact_writes(stack.second_web, phone, "hello? what about my loan")
    ScheduledJob.objects.filter(pk=job.pk).update(due_at=timezone.now() - timedelta(seconds=1))
    wait_until(lambda: Reply.objects.filter(lead=lead, kind="reply", state="skipped").exists(), timeout=TIMEOUT, what="the reply to be skipped")
    time.sleep(2)

    sent_after = sends_to(fakes, phone)[before:]
    assert len(sent_after) == 1 and "will not receive any more messages" in sent_after[0]["body"]["text"]["body"]
    assert ScheduledJob.objects.get(pk=job.pk).status == "cancelled"
    assert "consent.revoked" in kinds(lead)


def test_quiet_hours_defer_a_due_follow_up_to_the_next_business_morning_in_the_organizations_time_zone(e2e, fakes):
    stack, org, key = e2e
    tokyo = ZoneInfo("Asia/Tokyo")
    tomorrow = (timezone.now().astimezone(tokyo) + timedelta(days=1)).date()
    org.quiet_hours_enabled, org.timezone = True, "Asia/Tokyo"
    org.business_days, org.business_hours_start, org.business_hours_end = str(tomorrow.isoweekday()), clock_time(9), clock_time(10)
    org.save()
    phone = "+14155550305"
    sequence(org, delay_minutes=60)
    lead = greeted_lead(stack, key, phone)
    job = wait_until(lambda: ScheduledJob.objects.filter(lead=lead, kind="followup").first(), timeout=TIMEOUT, what="the follow-up job")
    morning = datetime.combine(tomorrow, clock_time(9), tzinfo=tokyo).astimezone(dt_timezone.utc)
    assert job.due_at == morning  # scheduled into business hours

    ScheduledJob.objects.filter(pk=job.pk).update(due_at=timezone.now() - timedelta(seconds=1))  # due now, at night in Tokyo
    wait_until(lambda: "followup.deferred" in kinds(lead), timeout=TIMEOUT, what="the worker to defer it")
    job.refresh_from_db()
    assert (job.status, job.due_at) == ("pending", morning)
    assert not Message.objects.filter(scheduled_job=job).exists()
