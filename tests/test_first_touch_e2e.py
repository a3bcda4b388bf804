"""The first touch end to end: real web (gunicorn), relay, first-touch lane, RabbitMQ,
Redis, PostgreSQL and the fake provider server, which answers like OpenAI, WhatsApp
and Twilio and sends signed status webhooks back to the web process.
"""

from __future__ import annotations

import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from conversations.models import Greeting, Message
from leads.models import Lead, LeadEvent
from swiftex.models import OutboxEvent
from tests.factories import org_with_providers
from tests.support import Stack, queue_depth, unacked, wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

TIMEOUT = 30


@pytest.fixture(scope="module")
def stack(django_db_setup, django_db_blocker, fake_providers, tmp_path_factory):
    running = Stack(fake_providers, tmp_path_factory.mktemp("e2e"))
    yield running
    running.stop()


@pytest.fixture
def e2e(stack, fakes):
    fakes.configure(webhook_url=stack.url)
    org, key = org_with_providers()
    return stack, key


def submit(stack: Stack, key: str, phone: str, **fields) -> int:
    body = {"name": "Ana Lima", "phone": phone, "source": "web", "consent": True, **fields}
    response = requests.post(f"{stack.url}/api/v1/leads", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def whatsapp_sends(fakes, phone: str) -> list[dict]:
    return [r for r in fakes.requests("whatsapp") if r["body"].get("to", "").lstrip("+") == phone.lstrip("+") and r["status"] == 200]


def sms_sends(fakes, phone: str) -> list[dict]:
    return [r for r in fakes.requests("twilio") if r["body"].get("To") == phone and r["status"] == 201]


def timeline(lead_id: int) -> list[str]:
    return list(LeadEvent.objects.filter(lead_id=lead_id).values_list("kind", flat=True))


def message_reaches(lead_id: int, channel: str, status: str) -> Message | None:
    return Message.objects.filter(lead_id=lead_id, channel=channel, status=status).first()


def test_a_lead_gets_one_whatsapp_greeting_statuses_flow_back_and_the_timeline_shows_every_step(e2e):
    stack, key = e2e
    lead_id = submit(stack, key, "+14155550101")

    wait_until(lambda: message_reaches(lead_id, "whatsapp", "read"), timeout=TIMEOUT, what="the greeting to be read")
    [sent] = whatsapp_sends(stack.fakes, "+14155550101")
    assert sent["body"]["type"] == "template"
    assert sent["body"]["template"]["components"][0]["parameters"][0]["text"].startswith("Hi Ana Lima!")  # the fake model's text
    for step in ("lead.created", "event.published", "first_touch.started", "greeting.composed", "message.accepted",
                 "message.sent", "message.delivered", "message.read"):
        assert timeline(lead_id).count(step) == 1, step

    detail = requests.get(f"{stack.url}/api/v1/leads/{lead_id}", headers={"Authorization": f"Bearer {key}"}, timeout=10).json()
    assert detail["first_response_at"] is not None and detail["status"] == "contacted"
    steps = {entry["kind"]: entry["data"].get("since_capture_ms") for entry in detail["timeline"]}
    assert steps["event.published"] <= steps["first_touch.started"] <= steps["greeting.composed"] <= steps["message.accepted"]
    assert not sms_sends(stack.fakes, "+14155550101")


def test_the_webs_metrics_merge_what_the_lanes_observed(e2e):
    """The greeting is timed in the first-touch lane, another process: its samples reach the
    web's /metrics through the shared PROMETHEUS_MULTIPROC_DIR."""
    stack, key = e2e
    submit(stack, key, "+14155550109")

    def merged() -> dict:
        text = requests.get(f"{stack.url}/metrics", timeout=10).text
        return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(text) for s in f.samples}

    def greeted(samples: dict) -> bool:
        return samples.get(("swiftex_first_response_seconds_count", ()), 0) >= 1 and samples.get(
            ("swiftex_provider_call_duration_seconds_count", (("outcome", "ok"), ("provider", "whatsapp"))), 0) >= 1

    def merged_once_greeted() -> dict | None:
        samples = merged()
        return samples if greeted(samples) else None

    samples = wait_until(merged_once_greeted, timeout=TIMEOUT, what="the lane's samples on /metrics")
    assert samples[("swiftex_provider_call_duration_seconds_count", (("outcome", "ok"), ("provider", "openai")))] >= 1
    assert samples[("swiftex_messages_accepted_total", (("channel", "whatsapp"), ("kind", "greeting")))] >= 1
    assert samples[("swiftex_broker_up", ())] == 1
    assert samples[("swiftex_queue_consumers", (("queue", "first_touch"),))] >= 1


def test_a_number_not_on_whatsapp_gets_exactly_one_sms(e2e):
    stack, key = e2e
    stack.fakes.configure(whatsapp_undeliverable=["14155550102"])
    lead_id = submit(stack, key, "+14155550102")

    wait_until(lambda: message_reaches(lead_id, "sms", "delivered"), timeout=TIMEOUT, what="the SMS fallback to be delivered")
    time.sleep(1)  # room for a wrong second SMS to show up
    assert len(whatsapp_sends(stack.fakes, "+14155550102")) == 1
    assert len(sms_sends(stack.fakes, "+14155550102")) == 1
    assert Message.objects.get(lead_id=lead_id, channel="whatsapp").error_code == "131026"
    assert Greeting.objects.get(lead_id=lead_id).state == "done"


def test_a_rate_limited_greeting_is_retried_by_the_lanes_task_and_sent_once(e2e):
    stack, key = e2e
    phone = "+14155550108"
    stack.fakes.configure(whatsapp_errors={phone[1:]: {"http": 400, "code": 130429, "title": "Rate limit hit"}})
    tasks_before = stack.lane.log().count("conversations.tasks.first_touch[")
    lead_id = submit(stack, key, phone)
    refused = lambda: [r for r in stack.fakes.requests("whatsapp") if r["body"].get("to", "").lstrip("+") == phone[1:]]  # noqa: E731
    wait_until(refused, timeout=TIMEOUT, what="WhatsApp to refuse the first attempt")
    stack.fakes.configure(whatsapp_errors={})

    wait_until(lambda: Lead.objects.get(pk=lead_id).first_response_at, timeout=TIMEOUT, what="the retried greeting")
    assert len(whatsapp_sends(stack.fakes, phone)) == 1
    assert "message.retrying" in timeline(lead_id)
    assert stack.lane.log().count("conversations.tasks.first_touch[") > tasks_before  # the handler handed the retry to the task
    [message] = Message.objects.filter(lead_id=lead_id)
    assert message.attempts >= 2 and message.provider_message_id  # 3 if the error was still set at the first retry


def test_a_slow_model_still_yields_a_template_greeting_within_two_seconds(e2e):
    stack, key = e2e
    stack.fakes.configure(model_latency_ms=3000)
    lead_id = submit(stack, key, "+14155550103")

    accepted = wait_until(
        lambda: LeadEvent.objects.filter(lead_id=lead_id, kind="message.accepted").first(), timeout=TIMEOUT, what="the greeting"
    )
    greeting = Greeting.objects.get(lead_id=lead_id)
    assert greeting.text_source == "template" and "budget" in greeting.model_error
    assert accepted.data["since_capture_ms"] < 2000


def test_duplicated_and_out_of_order_status_webhooks_give_the_right_final_state(e2e):
    stack, key = e2e
    stack.fakes.configure(duplicate_statuses=True, reverse_statuses=True)  # read, read, delivered, delivered, sent, sent
    lead_id = submit(stack, key, "+14155550104")

    message = wait_until(lambda: Message.objects.filter(lead_id=lead_id, sent_at__isnull=False).first(), timeout=TIMEOUT, what="all statuses")
    wait_until(lambda: len([w for w in webhooks(stack) if w["status"] == 200]) >= 6, timeout=TIMEOUT, what="six webhooks answered")
    message.refresh_from_db()
    assert message.status == "read" and message.delivered_at and message.read_at
    kinds = timeline(lead_id)
    assert (kinds.count("message.sent"), kinds.count("message.delivered"), kinds.count("message.read")) == (1, 1, 1)


def webhooks(stack: Stack) -> list[dict]:
    return stack.fakes._call("GET", "/_fake/webhooks?provider=whatsapp")["webhooks"]


def test_unsigned_webhooks_are_rejected_by_the_running_web_process(e2e):
    stack, _ = e2e
    body = b'{"object": "whatsapp_business_account", "entry": []}'
    assert requests.post(f"{stack.url}/webhooks/whatsapp", data=body, headers={"Content-Type": "application/json"}, timeout=10).status_code == 403
    assert requests.post(f"{stack.url}/webhooks/twilio/status", data={"MessageSid": "SM1", "MessageStatus": "sent"}, timeout=10).status_code == 403


@pytest.mark.parametrize("moment", ["while the model writes", "while WhatsApp answers"])
def test_a_worker_killed_while_greeting_ends_with_exactly_one_greeting(e2e, moment):
    stack, key = e2e
    phone = "+14155550105" if moment == "while the model writes" else "+14155550106"
    if moment == "while the model writes":
        stack.fakes.configure(model_latency_ms=900)
        started = lambda: LeadEvent.objects.filter(kind="first_touch.started").exists()  # noqa: E731
    else:
        stack.fakes.configure(whatsapp_latency_ms=2000)
        # The fake has the whole request (it records on arrival, then waits): killing on
        # our own "sending" row instead could land before the body left, a different case.
        started = lambda: any(r["body"].get("to", "").lstrip("+") == phone.lstrip("+") for r in stack.fakes.requests("whatsapp"))  # noqa: E731
    lead_id = submit(stack, key, phone)
    wait_until(started, timeout=TIMEOUT, interval=0.02, what=f"the greeting to be under way ({moment})")

    stack.restart_lane(kill=True)  # SIGKILL: the unacked task goes back to RabbitMQ

    wait_until(lambda: Lead.objects.get(pk=lead_id).first_response_at, timeout=TIMEOUT, what="the greeting to go out")
    wait_until(lambda: message_reaches(lead_id, "whatsapp", "read"), timeout=TIMEOUT, what="the statuses")
    time.sleep(1)
    [sent] = whatsapp_sends(stack.fakes, phone)
    [message] = Message.objects.filter(lead_id=lead_id)
    assert message.provider_message_id == sent["message_id"]  # learned from the answer, or from the webhook's callback data
    assert Greeting.objects.get(lead_id=lead_id).state == "done"
    assert not sms_sends(stack.fakes, phone)


def test_a_deploy_while_greeting_lets_the_greeting_finish_and_nobody_redoes_it(e2e):
    stack, key = e2e
    phone = "+14155550109"
    stack.fakes.configure(model_latency_ms=900)
    lead_id = submit(stack, key, phone)
    wait_until(lambda: LeadEvent.objects.filter(lead_id=lead_id, kind="first_touch.started").exists(), timeout=TIMEOUT,
               interval=0.02, what="the greeting to be under way")
    event_id = OutboxEvent.objects.get(event_type="lead.created", payload__lead_id=lead_id).event_id
    old = stack.lane

    stack.restart_lane(kill=False)  # SIGTERM: a warm shutdown, as in a rolling deploy

    assert Lead.objects.get(pk=lead_id).first_response_at  # sent before the old worker exited
    assert f"lead.created {event_id} handled" in old.log()
    time.sleep(1)
    assert f"lead.created {event_id}" not in stack.lane.log()  # acked: not redelivered to the new worker
    assert queue_depth("conversations.events")[0] == 0 and unacked("conversations.events") == 0
    assert len(whatsapp_sends(stack.fakes, phone)) == 1


def test_a_duplicated_lead_created_event_greets_once(e2e):
    stack, key = e2e
    lead_id = submit(stack, key, "+14155550107")
    wait_until(lambda: Lead.objects.get(pk=lead_id).first_response_at, timeout=TIMEOUT, what="the greeting")

    event_id = OutboxEvent.objects.get(event_type="lead.created", payload__lead_id=lead_id).event_id
    handled = lambda: stack.lane.log().count(f"lead.created {event_id} handled")  # noqa: E731
    wait_until(lambda: handled() == 1, timeout=TIMEOUT, what="the first delivery to be handled")
    # As if the relay died after RabbitMQ confirmed but before marking the row: published again.
    OutboxEvent.objects.filter(event_id=event_id).update(published_at=None)
    wait_until(lambda: handled() == 2, timeout=TIMEOUT, what="the duplicate to be received and handled")
    assert len(whatsapp_sends(stack.fakes, "+14155550107")) == 1
    assert timeline(lead_id).count("first_touch.started") == 1  # same event id: the ledger saw it
