"""The first touch as a service: claim, send, retry, fall back, never twice.

Provider HTTP is faked at the client seam with `responses` (every expected
request must fire); the database is real.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import timedelta
from urllib.parse import parse_qs

import pytest
import requests
import responses
from django.conf import settings
from django.utils import timezone

from conversations import services
from conversations.models import Conversation, Greeting, Message
from leads.models import Lead, LeadEvent
from swiftex.models import OutboxEvent
from tests.factories import PROVIDER_CREDENTIALS, org_with_providers
from tests.support import api_client, post_json

pytestmark = pytest.mark.django_db

PNID = PROVIDER_CREDENTIALS["whatsapp_phone_number_id"]
SID = PROVIDER_CREDENTIALS["twilio_account_sid"]
WA_URL = f"{settings.WHATSAPP_API_URL}/{PNID}/messages"
SMS_URL = f"{settings.TWILIO_API_URL}/2010-04-01/Accounts/{SID}/Messages.json"
ANA = {"name": "Ana Lima", "phone": "+14155550123", "source": "web", "campaign": "spring", "consent": True}


def wa_ok(wamid: str = "wamid.ONE") -> dict:
    return {"status": 200, "json": {"messaging_product": "whatsapp", "contacts": [{"input": "14155550123", "wa_id": "14155550123"}],
                                    "messages": [{"id": wamid, "message_status": "accepted"}]}}


def wa_error(code: int, http: int = 400, title: str = "error") -> dict:
    return {"status": http, "json": {"error": {"message": title, "type": "OAuthException", "code": code, "fbtrace_id": "x"}}}


def sms_ok(sid: str = "SM" + "a" * 32) -> dict:
    return {"status": 201, "json": {"sid": sid, "status": "queued"}}


@pytest.fixture
def org(settings):
    settings.OPENAI_API_KEY = ""  # the organization's fallback text; model tests set their own
    return org_with_providers()


@pytest.fixture
def lead(org):
    org, key = org
    response = post_json(api_client(key), "/api/v1/leads", ANA)
    assert response.status_code == 201
    return Lead.objects.get(pk=response.json()["id"])


@pytest.fixture
def provider():
    with responses.RequestsMock(assert_all_requests_are_fired=True) as mock:
        yield mock


def sms_form(call) -> dict:
    return {key: values[0] for key, values in parse_qs(call.request.body).items()}


def greet(lead: Lead, event_id: str | None = None) -> None:
    services.first_touch(event_id=event_id or str(uuid.uuid4()), lead_id=lead.pk, published_at=timezone.now().isoformat())


def kinds(lead: Lead) -> list[str]:
    return list(LeadEvent.objects.filter(lead=lead).values_list("kind", flat=True))


def test_new_lead_gets_one_template_greeting_on_whatsapp_and_the_timeline_shows_each_step(lead, provider):
    provider.add(responses.POST, WA_URL, **wa_ok())
    greet(lead)

    sent = json.loads(provider.calls[0].request.body)
    assert provider.calls[0].request.headers["Authorization"] == "Bearer wa-token"
    assert sent["type"] == "template" and sent["to"] == "14155550123"  # no inbound yet: outside the 24 h window
    assert sent["template"]["name"] == "lead_greeting"
    parameter = sent["template"]["components"][0]["parameters"][0]["text"]
    assert parameter.startswith("Hi Ana, thanks for contacting")
    message = Message.objects.get()
    assert (message.status, message.provider_message_id, message.template_name) == ("accepted", "wamid.ONE", "lead_greeting")
    assert sent["biz_opaque_callback_data"] == f"swx-msg-{message.pk}"
    lead.refresh_from_db()
    assert lead.first_response_at is not None and lead.status == "contacted"
    assert Greeting.objects.get().state == "done"
    assert kinds(lead) == ["lead.created", "submission.received", "event.published", "first_touch.started", "greeting.composed", "message.accepted"]
    accepted = LeadEvent.objects.get(lead=lead, kind="message.accepted")
    assert accepted.data["since_capture_ms"] >= 0
    assert OutboxEvent.objects.filter(event_type="lead.status_changed", payload__lead_id=lead.pk).count() == 1


def test_the_same_lead_event_delivered_twice_or_duplicated_greets_once(lead, provider):
    provider.add(responses.POST, WA_URL, **wa_ok())
    event_id = str(uuid.uuid4())
    greet(lead, event_id)
    greet(lead, event_id)  # redelivery
    greet(lead)  # a duplicate event with another id

    assert len(provider.calls) == 1
    assert Message.objects.count() == 1
    assert kinds(lead).count("first_touch.started") == 2  # one per distinct event, never one per delivery


def test_a_worker_that_died_between_the_claim_and_the_call_leaves_it_queued_and_the_redelivery_sends_it(lead, provider, monkeypatch):
    with monkeypatch.context() as patched:
        patched.setattr(services, "_deliver", lambda *args, **kwargs: None)  # the process died right after the claim committed
        greet(lead)
    assert Message.objects.get().status == "queued"
    provider.add(responses.POST, WA_URL, **wa_ok())
    greet(lead)
    message = Message.objects.get()
    assert (message.status, message.attempts, len(provider.calls)) == ("accepted", 1, 1)


def test_a_contact_without_consent_gets_no_message_and_the_reason_is_recorded(org, provider):
    _, key = org
    lead_id = post_json(api_client(key), "/api/v1/leads", {**ANA, "consent": False}).json()["id"]
    services.first_touch(event_id=str(uuid.uuid4()), lead_id=lead_id)

    assert len(provider.calls) == 0
    greeting = Greeting.objects.get(lead_id=lead_id)
    assert (greeting.state, greeting.reason) == ("skipped", "no_consent")
    skipped = LeadEvent.objects.get(lead_id=lead_id, kind="first_touch.skipped")
    assert "opted in" in skipped.data["detail"]


def test_not_on_whatsapp_131026_falls_back_to_exactly_one_sms(lead, provider):
    provider.add(responses.POST, WA_URL, **wa_error(131026, title="Message undeliverable"))
    provider.add(responses.POST, SMS_URL, **sms_ok())
    greet(lead)
    greet(lead)

    assert len(provider.calls) == 2
    form = sms_form(provider.calls[1])
    assert form["To"] == "+14155550123" and form["From"] == "+15550002222"
    wa, sms = Message.objects.get(channel="whatsapp"), Message.objects.get(channel="sms")
    assert (wa.status, wa.error_code) == ("failed", "131026")
    assert sms.status == "accepted" and sms.body == form["Body"] == Greeting.objects.get().text
    assert Greeting.objects.get().state == "done"
    assert "greeting.fallback" in kinds(lead)
    assert OutboxEvent.objects.filter(event_type="message.failed").count() == 1


@pytest.mark.parametrize("code", [190, 131047, 132001, 368])
def test_permanent_whatsapp_errors_are_not_retried(lead, provider, code):
    provider.add(responses.POST, WA_URL, **wa_error(code))
    provider.add(responses.POST, SMS_URL, **sms_ok())
    greet(lead)
    assert [c.request.url for c in provider.calls] == [WA_URL, SMS_URL]
    assert Message.objects.get(channel="whatsapp").error_code == str(code)


def test_transient_errors_retry_with_backoff_and_honour_retry_after(lead, provider):
    provider.add(responses.POST, WA_URL, **wa_error(130429, http=400, title="Rate limit hit"), headers={"Retry-After": "7"})
    provider.add(responses.POST, WA_URL, status=503, body="upstream down")
    provider.add(responses.POST, WA_URL, **wa_ok())

    with pytest.raises(services.RetryLater) as first:
        greet(lead)
    assert first.value.countdown >= 7
    assert Message.objects.get().status == "queued"
    with pytest.raises(services.RetryLater):
        greet(lead)  # the task's retry: re-claims the message
    greet(lead)

    message = Message.objects.get()
    assert (message.status, message.attempts) == ("accepted", 3)
    assert kinds(lead).count("message.retrying") == 2


def test_transient_errors_give_up_after_the_attempt_cap_then_fall_back(lead, provider, settings):
    settings.SEND_MAX_ATTEMPTS = 2
    provider.add(responses.POST, WA_URL, status=500, json={"error": {"code": 1, "message": "unknown"}})
    provider.add(responses.POST, WA_URL, status=500, json={"error": {"code": 1, "message": "unknown"}})
    provider.add(responses.POST, SMS_URL, **sms_ok())
    with pytest.raises(services.RetryLater):
        greet(lead)
    greet(lead)

    wa = Message.objects.get(channel="whatsapp")
    assert wa.status == "failed" and "gave up after 2 attempts" in wa.error_title
    assert Message.objects.get(channel="sms").status == "accepted"


def test_no_answer_from_whatsapp_is_never_resent_and_the_sweep_falls_back_to_sms(lead, provider, settings):
    provider.add(responses.POST, WA_URL, body=requests.ReadTimeout("read timed out"))
    greet(lead)
    greet(lead)  # a redelivery must not send again: Meta may have it
    assert len(provider.calls) == 1
    assert Message.objects.get().status == "sending"
    assert "message.outcome_unknown" in kinds(lead)

    assert services.expire_unsent_greetings() == 0  # not overdue yet
    later = timezone.now() + timedelta(seconds=settings.WHATSAPP_SENT_TIMEOUT_SECONDS + 1)
    assert services.expire_unsent_greetings(now=later) == 1
    wa = Message.objects.get(channel="whatsapp")
    assert (wa.status, wa.error_code) == ("failed", "timeout")
    failed = OutboxEvent.objects.get(event_type="message.failed")

    provider.add(responses.POST, SMS_URL, **sms_ok())
    services.greeting_fallback(greeting_id=failed.payload["greeting_id"])  # what the subscriber enqueues
    services.greeting_fallback(greeting_id=failed.payload["greeting_id"])
    assert Message.objects.filter(channel="sms").count() == 1


def test_inside_the_24_hour_window_the_greeting_is_free_form_text(lead, provider):
    Conversation.objects.create(organization=lead.organization, contact=lead.contact, channel="whatsapp",
                                last_inbound_at=timezone.now() - timedelta(hours=2))
    provider.add(responses.POST, WA_URL, **wa_ok())
    greet(lead)
    sent = json.loads(provider.calls[0].request.body)
    assert sent["type"] == "text" and sent["text"]["body"].startswith("Hi Ana")
    assert Message.objects.get().template_name == ""


def test_without_a_template_outside_the_window_whatsapp_is_skipped_for_sms(org, provider):
    org, key = org
    org.whatsapp_template_name = ""
    org.save()
    lead_id = post_json(api_client(key), "/api/v1/leads", ANA).json()["id"]
    provider.add(responses.POST, SMS_URL, **sms_ok())
    services.first_touch(event_id=str(uuid.uuid4()), lead_id=lead_id)
    assert Message.objects.get(channel="whatsapp").error_code == "no_template"
    assert Message.objects.get(channel="sms").status == "accepted"


def test_sms_only_organizations_greet_by_sms(org, provider):
    org, key = org
    org.whatsapp_phone_number_id = ""
    org.save()
    lead_id = post_json(api_client(key), "/api/v1/leads", ANA).json()["id"]
    provider.add(responses.POST, SMS_URL, **sms_ok())
    services.first_touch(event_id=str(uuid.uuid4()), lead_id=lead_id)
    message = Message.objects.get()
    assert message.channel == "sms"
    assert sms_form(provider.calls[0])["StatusCallback"] == f"http://127.0.0.1:8000/webhooks/twilio/status?m={message.pk}"


def test_the_fallback_text_fills_the_organizations_placeholders(lead):
    org = lead.organization
    org.greeting_fallback = "Olá {first_name}! {organization} · {campaign} via {source}"
    assert services.render_fallback(org, lead, lead.contact) == f"Olá Ana! {org.name} · spring via web"


def test_an_unknown_placeholder_in_the_fallback_is_rejected_by_validation(org):
    from django.core.exceptions import ValidationError

    org, _ = org
    org.greeting_fallback = "Hi {nmae}"
    with pytest.raises(ValidationError, match=r"\{nmae\}"):
        org.full_clean()


def test_a_placeholder_with_formatting_is_rejected_and_never_expanded(org, lead):
    """{first_name:>2000000000} would have every greeting allocate gigabytes in the lane."""
    from django.core.exceptions import ValidationError

    org, _ = org
    org.greeting_fallback = "Hi {first_name:>2000000000}{name!r}"
    with pytest.raises(ValidationError, match=r"without formatting: \{first_name:>2000000000\}, \{name!r\}"):
        org.full_clean()
    # A row saved before validation refused it renders with the formatting ignored.
    assert services.render_text(org.greeting_fallback, org, lead.contact, lead) == "Hi AnaAna Lima"


@pytest.mark.parametrize("field, value, message", [
    ("phone_region", "us", "two capital letters"),
    ("phone_region", "ZZ", "two capital letters"),
    ("ingest_rate_per_minute", 0, "greater than or equal to 1"),
    ("inactivity_timeout_hours", 99_999_999, "less than or equal to 87600"),
])
def test_organization_settings_that_would_break_every_lead_are_refused(org, field, value, message):
    from django.core.exceptions import ValidationError

    org, _ = org
    setattr(org, field, value)
    with pytest.raises(ValidationError, match=message):
        org.full_clean()


@pytest.fixture
def model(fakes, settings):
    """The fake OpenAI-compatible server, with its answer time set per test."""
    settings.OPENAI_BASE_URL = fakes.env()["OPENAI_BASE_URL"]
    settings.OPENAI_API_KEY = "test-openai-key"
    return fakes


def test_the_model_writes_the_greeting_when_it_answers_within_the_budget(lead, provider, model):
    model.configure(model_latency_ms=50)
    provider.add(responses.POST, WA_URL, **wa_ok())
    greet(lead)

    greeting = Greeting.objects.get()
    assert greeting.text_source == "ai" and greeting.text.startswith("Hi Ana Lima!")
    [call] = model.requests("openai")
    assert call["body"]["model"] == "gpt-4o-mini" and "Campaign: spring" in call["body"]["messages"][1]["content"]
    assert json.loads(provider.calls[-1].request.body)["template"]["components"][0]["parameters"][0]["text"] == greeting.text


def test_a_slow_model_is_abandoned_at_the_budget_and_the_fallback_text_goes_out(lead, provider, model, settings):
    settings.GREETING_MODEL_BUDGET_SECONDS = 0.3
    model.configure(model_latency_ms=3000)
    provider.add(responses.POST, WA_URL, **wa_ok())
    greet(lead)

    greeting = Greeting.objects.get()
    assert greeting.text_source == "template" and "0.30s budget" in greeting.model_error
    assert greeting.model_ms < 3000  # it did not wait for the model's answer
    composed = LeadEvent.objects.get(lead=lead, kind="greeting.composed")
    assert composed.data["source"] == "template" and "budget" in composed.data["model_error"]


def test_a_failing_model_falls_back_to_the_template(lead, provider, model):
    model.configure(model_latency_ms=0, model_error_rate=1.0)
    provider.add(responses.POST, WA_URL, **wa_ok())
    greet(lead)
    greeting = Greeting.objects.get()
    assert greeting.text_source == "template" and "HTTP 500" in greeting.model_error


def test_the_length_limit_and_temperature_are_sent_as_configured_for_reasoning_models(lead, provider, model, settings):
    settings.OPENAI_MAX_TOKENS_PARAMETER, settings.OPENAI_MAX_TOKENS, settings.OPENAI_TEMPERATURE = "max_completion_tokens", 2000, None
    model.configure(model_latency_ms=0)
    provider.add(responses.POST, WA_URL, **wa_ok())
    greet(lead)
    [call] = model.requests("openai")
    assert call["body"]["max_completion_tokens"] == 2000
    assert "max_tokens" not in call["body"] and "temperature" not in call["body"]


def test_a_refused_request_says_which_parameter_without_the_servers_message(monkeypatch, settings):
    import httpx2
    import openai

    from conversations.providers import model as model_client

    class Refuses:
        def post(self, path, *, body, cast_to):
            response = httpx2.Response(400, request=httpx2.Request("POST", "http://model.test/chat/completions"))
            raise openai.BadRequestError("Unsupported parameter: 'max_tokens' (key sk-abc***xyz)", response=response, body={
                "message": "Unsupported parameter: 'max_tokens' (key sk-abc***xyz)", "type": "invalid_request_error",
                "param": "max_tokens", "code": "unsupported_parameter"})

    settings.OPENAI_API_KEY = "test-openai-key"
    monkeypatch.setattr(model_client, "_client", lambda budget: Refuses())
    with pytest.raises(model_client.ModelUnavailable) as caught:
        model_client.write_greeting(model="o3-mini", system_prompt="Greet.", lead_facts="Name: Ana")
    assert caught.value.reason == "model server answered HTTP 400 (unsupported_parameter: max_tokens)"


def test_a_greeting_whatsapp_accepted_is_not_also_sent_by_sms_just_because_statuses_are_late(lead, provider, settings):
    provider.add(responses.POST, WA_URL, **wa_ok())
    greet(lead)
    much_later = timezone.now() + timedelta(hours=1)
    assert services.expire_unsent_greetings(now=much_later) == 0  # accepted: waits for a status by default

    settings.WHATSAPP_ACCEPTED_TIMEOUT_SECONDS = 600  # opt in to giving up on accepted ones too
    greeting = Message.objects.get()
    reply = Message.objects.create(organization=lead.organization, conversation=greeting.conversation, lead=lead,
                                   direction="outbound", channel="whatsapp", body="Thanks!", status="accepted",
                                   provider_message_id="wamid.reply", accepted_at=greeting.accepted_at)
    assert services.expire_unsent_greetings(now=much_later) == 1
    greeting.refresh_from_db()
    assert greeting.status == "failed" and "accepted" in greeting.error_title
    assert Message.objects.get(pk=reply.pk).status == "accepted"  # the setting is about greetings only


def test_no_sms_fallback_goes_to_a_lead_closed_meanwhile_and_its_greeting_ends_failed(lead, provider, monkeypatch):
    provider.add(responses.POST, WA_URL, **wa_error(131026, title="Message undeliverable"))
    with monkeypatch.context() as later:
        later.setattr(services, "_fall_back_to_sms", lambda *args: None)  # the fallback task is still queued
        greet(lead)
    Lead.objects.filter(pk=lead.pk).update(status="lost")  # when it runs, a rep has closed the lead
    services.greeting_fallback(greeting_id=Greeting.objects.get().pk)  # no Twilio mock: an SMS would fail the test
    greeting = Greeting.objects.get()
    assert greeting.state == "failed" and "lead was closed" in greeting.reason
    assert not Message.objects.filter(channel="sms").exists()


def test_a_lead_closed_before_its_delayed_event_arrives_is_not_greeted(lead):
    Lead.objects.filter(pk=lead.pk).update(status="lost")  # a rep closed it while RabbitMQ was down
    greet(lead)  # no provider mock: a send would fail the test
    greeting = Greeting.objects.get()
    assert (greeting.state, greeting.reason) == ("skipped", "lead_closed") and not Message.objects.exists()


def test_a_connection_lost_after_sending_counts_as_maybe_delivered_and_is_not_resent(lead, provider):
    from urllib3.exceptions import ProtocolError

    provider.add(responses.POST, WA_URL, body=requests.ConnectionError(ProtocolError("Connection aborted.", ConnectionResetError())))
    greet(lead)
    greet(lead)
    assert len(provider.calls) == 1
    assert Message.objects.get().status == "sending"


def lead_of(org_and_key, **settings_changed) -> Lead:
    """Ana's new lead, submitted after the organization's settings were changed."""
    org, key = org_and_key
    for name, value in settings_changed.items():
        setattr(org, name, value)
    org.save()
    return Lead.objects.get(pk=post_json(api_client(key), "/api/v1/leads", ANA).json()["id"])


def test_a_token_pasted_with_a_line_break_fails_at_once_without_leaking_it_and_falls_back(org, provider):
    """requests refuses the header before anything is sent: not "maybe delivered" (which
    would block the SMS for a minute and any resend for ever), and the token stays out
    of the error text."""
    provider.add(responses.POST, SMS_URL, **sms_ok())
    greet(lead_of(org, whatsapp_access_token="wa-secret-token\n"))

    wa = Message.objects.get(channel="whatsapp")
    assert wa.status == "failed" and "credentials" in wa.error_title and "wa-secret-token" not in wa.error_title
    assert Message.objects.get(channel="sms").status == "accepted"
    assert [c.request.url for c in provider.calls] == [SMS_URL]


def test_a_multi_line_fallback_text_goes_into_the_template_as_one_line(org, provider):
    """Meta refuses a template parameter with a newline, a tab or a run of spaces."""
    provider.add(responses.POST, WA_URL, **wa_ok())
    greet(lead_of(org, greeting_fallback="Hi {first_name}!\n\nThanks for reaching out.\tWe will call you     soon."))

    parameter = json.loads(provider.calls[0].request.body)["template"]["components"][0]["parameters"][0]["text"]
    assert parameter == "Hi Ana! Thanks for reaching out. We will call you soon."


def test_a_retry_that_cannot_read_the_window_leaves_the_message_queued_not_sending(lead, provider, monkeypatch):
    """The database work a retry does before sending happens before the claim: a failure
    there must not strand the message in SENDING, which is never resent."""
    from django.db import OperationalError

    provider.add(responses.POST, WA_URL, status=503, body="upstream down")
    with pytest.raises(services.RetryLater):
        greet(lead)
    with monkeypatch.context() as patched:
        patched.setattr(Conversation, "window_open", lambda self: (_ for _ in ()).throw(OperationalError("connection lost")))
        with pytest.raises(OperationalError):
            greet(lead)
    assert Message.objects.get().status == "queued"
    provider.add(responses.POST, WA_URL, **wa_ok())
    greet(lead)
    assert Message.objects.get().status == "accepted"


def test_a_retry_after_longer_than_the_backoff_cap_is_capped(settings):
    settings.SEND_RETRY_BACKOFF_MAX_SECONDS = 120
    assert services.backoff(1, retry_after=7) >= 7
    assert services.backoff(1, retry_after=86_400) == 120  # the task would wait unacked in a worker for a day


def test_the_sweep_times_a_send_from_its_latest_attempt_not_from_the_claim(lead, provider, settings):
    provider.add(responses.POST, WA_URL, body=requests.ReadTimeout("read timed out"))
    greet(lead)
    long_claimed = timezone.now() - timedelta(seconds=settings.WHATSAPP_SENT_TIMEOUT_SECONDS * 3)
    Message.objects.update(created_at=long_claimed)  # e.g. retried for minutes before this attempt
    assert services.expire_unsent_greetings() == 0


def test_the_sweep_waits_while_delivery_statuses_are_still_to_be_applied(lead, provider, settings):
    from conversations.models import StatusReceipt

    provider.add(responses.POST, WA_URL, body=requests.ReadTimeout("read timed out"))
    greet(lead)
    StatusReceipt.objects.create(organization=lead.organization, channel="whatsapp", provider_message_id="wamid.X", status="sent",
                                 at=timezone.now() - timedelta(minutes=5))
    later = timezone.now() + timedelta(seconds=settings.WHATSAPP_SENT_TIMEOUT_SECONDS + 1)
    assert services.expire_unsent_greetings(now=later) == 0
    assert Message.objects.get().status == "sending"


def test_an_answer_arriving_after_the_message_failed_keeps_the_failure(lead, provider):
    provider.add(responses.POST, WA_URL, body=requests.ReadTimeout("read timed out"))
    greet(lead)  # in flight; meanwhile a `failed` status for it is applied
    message = Message.objects.get()
    Message.objects.filter(pk=message.pk).update(status="failed", error_code="131026", error_title="undeliverable")

    services._accepted(message, lead, "wamid.LATE")  # then the provider's answer is stored
    message.refresh_from_db()
    assert (message.status, message.error_code, message.provider_message_id) == ("failed", "131026", "wamid.LATE")
    assert Greeting.objects.get().state != "done"
    lead.refresh_from_db()
    assert lead.first_response_at is None and lead.status == "new"  # a failed message is no first response


def test_a_greeting_left_queued_by_a_lost_task_is_found_for_re_enqueueing(lead, provider, monkeypatch, settings):
    with monkeypatch.context() as patched:
        patched.setattr(services, "_deliver", lambda *args, **kwargs: None)
        greet(lead)
    assert services.stalled_greetings() == []
    much_later = timezone.now() + timedelta(seconds=settings.SEND_RETRY_BACKOFF_MAX_SECONDS * 2 + 61)
    assert services.stalled_greetings(now=much_later) == [Greeting.objects.get().pk]


def _choice(content, finish_reason="stop") -> dict:
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish_reason}]}


def _unreadable_body():
    raise json.JSONDecodeError("Expecting value", "<html>", 0)  # what the client raises for a 200 that is not JSON


@pytest.mark.parametrize("answer, reason", [
    (lambda: {"choices": []}, "without a message"),
    (_unreadable_body, "unreadable: JSONDecodeError"),
    (lambda: _choice([{"type": "text", "text": "Hi"}]), "not text"),
    (lambda: _choice("Hi Ana, thanks for reaching out about", "length"), "stopped early (length)"),
    (lambda: _choice("", "content_filter"), "stopped early (content_filter)"),
])
def test_a_model_answer_that_cannot_be_used_is_reported_and_falls_back(monkeypatch, settings, answer, reason):
    """Whatever the model server answers, the caller gets ModelUnavailable (the fallback
    text goes out), never an exception that would leave the lead ungreeted."""
    from conversations.providers import model as model_client

    class Answers:
        def post(self, path, *, body, cast_to):
            assert path == "/chat/completions" and body["messages"][1]["content"] == "Name: Ana"
            return answer()

    settings.OPENAI_API_KEY = "test-openai-key"
    monkeypatch.setattr(model_client, "_client", lambda budget: Answers())
    with pytest.raises(model_client.ModelUnavailable, match=re.escape(reason)):
        model_client.write_greeting(model="gpt-4o-mini", system_prompt="Greet.", lead_facts="Name: Ana")
