"""Two complete deployments side by side (web, relay, first-touch and conversations lanes),
sharing only PostgreSQL, Redis and RabbitMQ: what docs/scaling.md says about running
N web and worker machines behind a load balancer with no sticky sessions.

One scheduler for both: beat is a singleton per installation (docs/scaling.md).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from conversations.models import Greeting, Message, Reply
from leads.models import Contact, Lead
from swiftex.models import OutboxEvent
from tests.factories import org_with_providers
from tests.support import Stack, contact_writes, wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

TIMEOUT = 30


@pytest.fixture(scope="module")
def pair(django_db_setup, django_db_blocker, fake_providers, tmp_path_factory):
    a = Stack(fake_providers, tmp_path_factory.mktemp("a"))
    b = Stack(fake_providers, tmp_path_factory.mktemp("b"), scheduler=False)
    yield a, b
    b.stop()
    a.stop()


@pytest.fixture
def deployments(pair, fakes):
    a, b = pair
    fakes.configure(webhook_url=b.url)  # statuses for messages either one sent come in through b's web
    _, key = org_with_providers()
    return a, b, key


def post_lead(url: str, key: str, phone: str) -> requests.Response:
    body = {"name": "Ana Lima", "phone": phone, "source": "web", "consent": True}
    return requests.post(f"{url}/api/v1/leads", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=10)


def accepted_sends(fakes, phone: str) -> int:
    return sum(1 for r in fakes.requests("whatsapp") if r["body"].get("to", "").lstrip("+") == phone.lstrip("+") and r["status"] == 200)


def test_one_form_submitted_twice_through_both_deployments_at_once_is_one_lead_greeted_once(deployments):
    a, b, key = deployments
    phone = "+14155550141"
    start = threading.Barrier(2)

    def submit(url: str) -> requests.Response:
        start.wait()
        return post_lead(url, key, phone)

    with ThreadPoolExecutor(2) as pool:
        first, second = pool.map(submit, [a.url, b.url])

    assert sorted([first.status_code, second.status_code]) == [200, 201], (first.text, second.text)
    assert first.json()["id"] == second.json()["id"]
    lead_id = first.json()["id"]
    wait_until(lambda: Message.objects.filter(lead_id=lead_id, status="read").exists(), timeout=TIMEOUT,
               what="the greeting, and its statuses applied from the other deployment's web")
    time.sleep(1)  # room for a wrong second greeting
    assert Contact.objects.filter(phone=phone).count() == 1 and Lead.objects.filter(contact__phone=phone).count() == 1
    assert accepted_sends(a.fakes, phone) == 1


def test_leads_spread_over_both_deployments_are_each_greeted_once_by_either(deployments):
    a, b, key = deployments
    phones = [f"+1415555016{n}" for n in range(10)]
    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(lambda i: post_lead((a, b)[i % 2].url, key, phones[i]), range(len(phones))))
    assert [r.status_code for r in responses] == [201] * len(phones)

    lead_ids = [r.json()["id"] for r in responses]
    wait_until(lambda: Greeting.objects.filter(lead_id__in=lead_ids, state="done").count() == len(phones), timeout=TIMEOUT,
               what="every lead greeted")
    wait_until(lambda: Message.objects.filter(lead_id__in=lead_ids, status="read").count() == len(phones), timeout=TIMEOUT,
               what="every greeting's statuses")
    time.sleep(1)
    assert [accepted_sends(a.fakes, phone) for phone in phones] == [1] * len(phones)
    # RabbitMQ hands the events round-robin to the first-touch lanes: both did some, none twice.
    events = [str(e) for e in OutboxEvent.objects.filter(event_type="lead.created", payload__lead_id__in=lead_ids)
              .values_list("event_id", flat=True)]
    by_a = [e for e in events if f"lead.created {e} handled" in a.lane.log()]
    by_b = [e for e in events if f"lead.created {e} handled" in b.lane.log()]
    assert by_a and by_b and sorted(by_a + by_b) == sorted(events)


def test_a_burst_written_through_both_deployments_is_answered_once(deployments):
    a, b, key = deployments
    phone = "+14155550171"
    lead_id = post_lead(a.url, key, phone).json()["id"]
    wait_until(lambda: Lead.objects.filter(pk=lead_id, first_response_at__isnull=False).exists(), timeout=TIMEOUT, what="the greeting")

    for web, text in ((a.url, "Hi"), (b.url, "is the flat still available?"), (a.url, "I can visit on Saturday")):
        contact_writes(web, phone, text)
        time.sleep(0.3)

    reply = wait_until(lambda: Reply.objects.filter(lead_id=lead_id, state="done").first(), timeout=TIMEOUT, what="the reply")
    time.sleep(4)  # another quiet window: a second reply would be here by now
    assert Reply.objects.filter(lead_id=lead_id).count() == 1 and reply.answered_messages.count() == 3
    assert accepted_sends(a.fakes, phone) == 2  # the greeting and one reply
