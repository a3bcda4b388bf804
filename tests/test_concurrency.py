"""Races against the real database: many requests at the same instant."""

import pytest

from leads.models import Contact, Lead, Submission
from swiftex.models import OutboxEvent
from tests.support import api_client, post_json, race

pytestmark = pytest.mark.django_db(transaction=True)


def test_fifty_concurrent_submissions_of_one_person_from_two_sources(org_and_key):
    _, key = org_and_key
    client = api_client(key)

    def submit(i):
        body = {"name": "Ana", "phone": "+14155550123", "email": "ana@example.com", "source": ("web", "facebook")[i % 2]}
        return post_json(client, "/api/v1/leads", body)

    responses = race(50, submit)

    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 49 + [201]
    assert len({r.json()["id"] for r in responses}) == 1
    assert Contact.objects.count() == 1
    assert Lead.objects.count() == 1
    assert Submission.objects.count() == 50
    assert set(Submission.objects.values_list("source", flat=True)) == {"web", "facebook"}
    assert OutboxEvent.objects.filter(event_type="lead.created").count() == 1


def test_concurrent_phone_and_email_submissions_converge_on_one_contact(org_and_key):
    _, key = org_and_key
    client = api_client(key)
    bodies = [{"phone": "+14155550123"}, {"email": "ana@example.com"}, {"phone": "+14155550123", "email": "ana@example.com"}]

    responses = race(30, lambda i: post_json(client, "/api/v1/leads", bodies[i % 3]))

    assert all(r.status_code in (200, 201) for r in responses)
    # Phone-only and email-only people may be two contacts, never more than one each.
    assert Contact.objects.filter(phone="+14155550123").count() == 1
    assert Contact.objects.filter(email="ana@example.com").count() == 1
    assert Lead.objects.count() == Contact.objects.count()
    assert Submission.objects.count() == 30


def test_concurrent_retries_with_one_idempotency_key_store_one_submission(org_and_key):
    _, key = org_and_key
    client = api_client(key)
    body = {"phone": "+14155550123", "source": "web"}

    responses = race(20, lambda i: post_json(client, "/api/v1/leads", body, HTTP_IDEMPOTENCY_KEY="retry-me"))

    assert {r.status_code for r in responses} == {201}
    assert len({r.json()["submission_id"] for r in responses}) == 1
    assert Submission.objects.count() == 1


def test_two_stop_messages_at_the_same_instant_revoke_consent_once():
    """Only one opt-out (and one confirmation): the revocation is a conditional update."""
    import uuid

    from django.db import connection
    from django.utils import timezone

    from conversations import receipts
    from tests.factories import org_with_providers

    org, _ = org_with_providers()
    Contact.objects.create(organization=org, name="Ana", phone="+14155550123", consent=True)

    def stop(i):
        try:
            inbound = receipts.Inbound(channel="whatsapp", provider_message_id=f"wamid.{uuid.uuid4().hex}", phone="+14155550123",
                                       body="STOP", at=timezone.now())
            return receipts.receive(org, inbound)
        finally:
            connection.close()

    race(8, stop)
    assert OutboxEvent.objects.filter(event_type="message.received", payload__opt_out=True).count() == 1
    assert Contact.objects.get(phone="+14155550123").consent is False


def test_batches_naming_the_same_new_people_in_opposite_orders_do_not_deadlock(org_and_key):
    """Each batch is one transaction: in request order, one would wait on the other's first
    new contact while holding the one the other needs next, and PostgreSQL would abort it."""
    _, key = org_and_key
    people = [{"phone": f"+1415777{i:04d}", "source": "partner"} for i in range(20)]

    def send(i):
        return post_json(api_client(key), "/api/v1/leads/batch", {"leads": people if i % 2 else people[::-1]})

    responses = race(6, send)
    assert [r.status_code for r in responses] == [200] * 6
    assert Contact.objects.count() == 20 and Lead.objects.count() == 20 and Submission.objects.count() == 120
