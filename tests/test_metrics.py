"""The four golden signals on /metrics: latency, traffic, errors, saturation.

In-process here (no PROMETHEUS_MULTIPROC_DIR: the default registry);
tests/test_first_touch_e2e.py checks that the web's /metrics merges the
lanes' samples. Counters only grow within a test session, so these tests
compare before and after.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
import requests
import responses
from django.conf import settings
from django.test import Client
from django.utils import timezone
from kombu import Connection, Producer
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from conversations import services
from conversations.models import ScheduledJob
from leads.models import Lead
from swiftex import metrics
from swiftex import redis as swx_redis
from swiftex.celery import app as celery_app
from swiftex.events.topology import DEAD_LETTER_QUEUE, declare_all
from tests.factories import PROVIDER_CREDENTIALS, org_with_providers
from tests.support import api_client, post_json

pytestmark = pytest.mark.django_db

WA_URL = f"{settings.WHATSAPP_API_URL}/{PROVIDER_CREDENTIALS['whatsapp_phone_number_id']}/messages"
SMS_URL = f"{settings.TWILIO_API_URL}/2010-04-01/Accounts/{PROVIDER_CREDENTIALS['twilio_account_sid']}/Messages.json"

GOLDEN_SIGNALS = {
    # latency
    "swiftex_http_request_duration_seconds", "swiftex_first_response_seconds", "swiftex_provider_call_duration_seconds",
    # traffic (counter families are named without _total)
    "swiftex_leads_ingested", "swiftex_messages_accepted", "swiftex_webhooks",
    # errors
    "swiftex_provider_errors", "swiftex_messages_failed", "swiftex_task_failures", "swiftex_task_retries",
    # saturation
    "swiftex_queue_messages_ready", "swiftex_queue_consumers", "swiftex_broker_up", "swiftex_outbox_backlog",
    "swiftex_outbox_oldest_unpublished_age_seconds", "swiftex_scheduled_jobs_due", "swiftex_scheduled_jobs_lag_seconds",
    "swiftex_redis_up",
}


def scrape() -> dict:
    response = Client().get("/metrics")
    assert response.status_code == 200
    return {family.name: family for family in text_string_to_metric_families(response.content.decode())}


def value(families: dict, name: str, **labels) -> float | None:
    """The sample `name` (a histogram's `_count`, a counter's `_total`) with exactly these labels."""
    return next((s.value for f in families.values() for s in f.samples if s.name == name and s.labels == labels), None)


def sample(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def lead(settings):
    settings.OPENAI_API_KEY = ""  # the organization's fallback text: no model call
    org, key = org_with_providers()
    response = post_json(api_client(key), "/api/v1/leads", {"name": "Ana", "phone": "+14155550123", "consent": True})
    assert response.status_code == 201
    return Lead.objects.get(pk=response.json()["id"])


def greet(lead: Lead) -> None:
    services.first_touch(event_id=str(uuid.uuid4()), lead_id=lead.pk, published_at=timezone.now().isoformat())


def test_metrics_carry_each_golden_signal_even_before_anything_happened():
    """Beside tests/test_platform.py's parse of a scrape after a lead: every family is declared up front."""
    families = scrape()
    assert GOLDEN_SIGNALS <= families.keys(), GOLDEN_SIGNALS - families.keys()
    assert families["swiftex_first_response_seconds"].type == "histogram"
    assert families["swiftex_provider_call_duration_seconds"].type == "histogram"


def test_a_whatsapp_refusal_is_timed_counted_by_its_code_and_the_sms_fallback_is_the_first_response(
    lead, django_capture_on_commit_callbacks
):
    before = {
        "refused": sample("swiftex_provider_call_duration_seconds_count", provider="whatsapp", outcome="client_error"),
        "sms_ok": sample("swiftex_provider_call_duration_seconds_count", provider="twilio", outcome="ok"),
        "code": sample("swiftex_provider_errors_total", provider="whatsapp", code="131026"),
        "failed": sample("swiftex_messages_failed_total", channel="whatsapp", code="131026"),
        "accepted": sample("swiftex_messages_accepted_total", channel="sms", kind="greeting"),
        "first": sample("swiftex_first_response_seconds_count"),
    }
    with responses.RequestsMock(assert_all_requests_are_fired=True) as provider, \
            django_capture_on_commit_callbacks(execute=True):
        provider.add(responses.POST, WA_URL, status=400, json={"error": {"code": 131026, "message": "Message undeliverable"}})
        provider.add(responses.POST, SMS_URL, status=201, json={"sid": "SM" + "a" * 32})
        greet(lead)
        greet(lead)  # a redelivery: no second first response

    families = scrape()
    assert value(families, "swiftex_provider_call_duration_seconds_count", provider="whatsapp", outcome="client_error") == before["refused"] + 1
    assert value(families, "swiftex_provider_call_duration_seconds_count", provider="twilio", outcome="ok") == before["sms_ok"] + 1
    assert value(families, "swiftex_provider_errors_total", provider="whatsapp", code="131026") == before["code"] + 1
    assert value(families, "swiftex_messages_failed_total", channel="whatsapp", code="131026") == before["failed"] + 1
    assert value(families, "swiftex_messages_accepted_total", channel="sms", kind="greeting") == before["accepted"] + 1
    assert value(families, "swiftex_first_response_seconds_count") == before["first"] + 1


def test_a_provider_that_does_not_answer_is_a_timeout(lead):
    before = sample("swiftex_provider_errors_total", provider="whatsapp", code="timeout")
    timed_out = sample("swiftex_provider_call_duration_seconds_count", provider="whatsapp", outcome="timeout")
    with responses.RequestsMock(assert_all_requests_are_fired=True) as provider:
        provider.add(responses.POST, WA_URL, body=requests.ConnectTimeout("connect timed out"))
        with pytest.raises(services.RetryLater):
            greet(lead)

    assert sample("swiftex_provider_errors_total", provider="whatsapp", code="timeout") == before + 1
    assert sample("swiftex_provider_call_duration_seconds_count", provider="whatsapp", outcome="timeout") == timed_out + 1


def test_error_codes_stay_few():
    assert metrics.error_code_label("test-a", 131026) == "131026"
    assert metrics.error_code_label("test-a", "no_consent") == "no_consent"
    assert metrics.error_code_label("test-a", "") == "none"
    assert metrics.error_code_label("test-a", "Bad things at https://example.com") == "other"
    for code in range(metrics.MAX_CODES):
        metrics.error_code_label("test-b", 1000 + code)
    assert metrics.error_code_label("test-b", 1000) == "1000"  # already a label
    assert metrics.error_code_label("test-b", 999999) == "other"  # one too many


def test_task_failures_and_retries_are_counted_per_task():
    @celery_app.task(name="tests.flaky", bind=True, max_retries=1, default_retry_delay=0)
    def flaky(self):
        raise self.retry(exc=RuntimeError("still broken"))

    retries, failures = sample("swiftex_task_retries_total", task="tests.flaky"), sample("swiftex_task_failures_total", task="tests.flaky")
    flaky.apply()

    assert sample("swiftex_task_retries_total", task="tests.flaky") == retries + 1
    assert sample("swiftex_task_failures_total", task="tests.flaky") == failures + 1


def test_queue_depth_and_consumers_are_read_from_rabbitmq():
    with Connection(settings.CELERY_BROKER_URL) as conn:
        channel = conn.channel()
        # Declared here, not left to whichever earlier test started a worker: on a new broker
        # the lane queues exist only once something declared them.
        for lane_queue in settings.CELERY_TASK_QUEUES:
            lane_queue(channel).declare()
        declare_all(channel)
        producer = Producer(channel)
        for i in range(5):  # nothing consumes the dead letters
            producer.publish({"n": i}, exchange="", routing_key=DEAD_LETTER_QUEUE.name)
        conn.channel().basic_consume(queue="bulk", callback=lambda message: None)  # an idle consumer on the (empty) lane queue
        families = scrape()

    assert value(families, "swiftex_broker_up") == 1
    assert value(families, "swiftex_queue_messages_ready", queue="swiftex.dead") >= 5
    assert value(families, "swiftex_queue_consumers", queue="bulk") >= 1
    names = {s.labels["queue"] for s in families["swiftex_queue_messages_ready"].samples}
    assert {"first_touch", "conversations.events", "crmsync.events", "swiftex.dead"} <= names


def test_with_the_broker_unreachable_metrics_still_answer_with_broker_up_0(settings):
    settings.CELERY_BROKER_URL = "amqp://guest:guest@127.0.0.1:1//"
    families = scrape()

    assert value(families, "swiftex_broker_up") == 0
    assert families["swiftex_queue_messages_ready"].samples == []
    assert "swiftex_outbox_backlog" in families  # everything else still there


def test_redis_availability_honours_the_breaker():
    assert value(scrape(), "swiftex_redis_up") == 1
    swx_redis.breaker.trip(ConnectionError("test"))
    assert value(scrape(), "swiftex_redis_up") == 0


def test_scheduled_job_lag_is_how_late_the_oldest_due_job_is(lead):
    now = timezone.now()
    for minutes_late, status in ((10, "pending"), (1, "pending"), (3, "enqueued"), (0, "running"), (-60, "pending")):
        ScheduledJob.objects.create(organization=lead.organization, lead=lead, kind="followup",
                                    due_at=now - timedelta(minutes=minutes_late), status=status)

    families = scrape()
    assert value(families, "swiftex_scheduled_jobs_due", state="pending") == 2
    assert value(families, "swiftex_scheduled_jobs_due", state="enqueued") == 1
    # The oldest is ten minutes late (PostgreSQL's now() is the test transaction's start, a little earlier).
    assert 9 * 60 < value(families, "swiftex_scheduled_jobs_lag_seconds") < 11 * 60
