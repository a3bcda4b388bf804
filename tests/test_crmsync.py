"""CRM sync: coalescing, batches, per-item failures, 429s, backoff, the shared bucket, the signed webhook.

Against the real PostgreSQL and Redis and the project's fake HubSpot (real
HTTP, real request and response shapes). The whole path through real
processes, with a worker killed and RabbitMQ restarted, is in
tests/test_crmsync_e2e.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import timedelta

import pytest
import responses
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from crmsync import push, queue
from crmsync.adapters.webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from crmsync.models import ContactSync, CrmPush
from leads.models import Lead, LeadEvent, Organization
from swiftex import ratelimit
from tests.factories import org_with_key
from tests.support import ROOT, api_client, child_env, post_json

pytestmark = pytest.mark.django_db(transaction=True)
State = ContactSync.State


@pytest.fixture
def crm(fakes, settings):
    settings.HUBSPOT_API_URL = f"{fakes.url}/hubspot"
    settings.CRM_SYNC_GATHER_SECONDS = 0
    return fakes


@pytest.fixture
def org(crm):
    org, key = org_with_key(crm_adapter="hubspot", hubspot_access_token="hs-token", crm_requests_per_second=50)
    org.api_key = key
    return org


def submit(org, **fields) -> Lead:
    body = {"source": "web", "campaign": "spring", "consent": True, **fields}
    response = post_json(api_client(org.api_key), "/api/v1/leads", body)
    assert response.status_code in (200, 201), response.content  # 200: a known contact's lead
    return Lead.objects.get(pk=response.json()["id"])


def contacts(crm) -> list[dict]:
    return crm.hubspot()["contacts"]


def test_many_changes_to_one_contact_are_one_upsert_with_the_latest_status(org, crm):
    lead = submit(org, name="Ana Lima", email="ana@example.com", phone="+14155550123")
    queue.mark_changed(lead_ids=[lead.pk])  # lead.created
    Lead.objects.filter(pk=lead.pk).update(status="contacted", first_response_at=timezone.now())
    queue.mark_changed(lead_ids=[lead.pk])  # lead.status_changed
    queue.mark_changed(lead_ids=[lead.pk])  # the lead's first reply

    assert push.push_due(org.pk) == 1
    [record] = contacts(crm)
    assert (record["idProperty"], record["idValue"]) == ("email", "ana@example.com")
    assert record["properties"]["swiftex_lead_status"] == "contacted"
    assert record["properties"]["firstname"] == "Ana" and record["properties"]["lastname"] == "Lima"
    assert record["properties"]["swiftex_phone"] == "+14155550123"
    assert record["writes"] == 1 and crm.hubspot()["stats"]["requests"] == 1
    sync = ContactSync.objects.get(contact=lead.contact)
    assert (sync.state, sync.version, sync.synced_version, sync.crm_id) == (State.SYNCED, 3, 3, record["id"])
    entry = LeadEvent.objects.get(lead=lead, kind="crm.synced")  # the state change, not every update
    assert entry.data["crm_id"] == record["id"] and entry.data["status"] == "contacted"
    detail = api_client(org.api_key).get(f"/api/v1/leads/{lead.pk}").json()
    assert detail["crm_sync"]["state"] == "synced" and detail["crm_sync"]["crm_id"] == record["id"]
    assert "hs-token" not in json.dumps(detail)


def test_a_change_during_a_push_is_pushed_again_and_a_phone_only_contact_keeps_its_record(org, crm):
    lead = submit(org, phone="+14155550124")
    queue.mark_changed(lead_ids=[lead.pk])
    claimed, claimed_at = queue.claim(org.pk, 100)
    [snapshot] = queue.snapshots(claimed)
    Lead.objects.filter(pk=lead.pk).update(status="engaged")
    queue.mark_changed(lead_ids=[lead.pk])  # lands while the push is in flight
    queue.settle_accepted("hubspot", claimed_at, [(snapshot.sync_id, "1001", "swiftex_phone", "+14155550124")])
    sync = ContactSync.objects.get(pk=snapshot.sync_id)
    assert sync.state == State.PENDING and sync.synced_version == 1 and sync.version == 2

    push.push_due(org.pk)
    submit(org, phone="+14155550124", email="late@example.com")  # the contact gives an email later
    queue.mark_changed(lead_ids=[lead.pk])
    push.push_due(org.pk)
    [record] = contacts(crm)  # still one record: the id property chosen first is kept
    assert record["idProperty"] == "swiftex_phone"
    assert record["properties"]["email"] == "late@example.com"
    assert ContactSync.objects.get(pk=snapshot.sync_id).state == State.SYNCED


def test_a_push_that_outlived_its_lease_cannot_overwrite_the_newer_claim(org, crm, settings):
    lead = submit(org, email="slow@example.com")
    queue.mark_changed(lead_ids=[lead.pk])
    [sync_id], old_claim = queue.claim(org.pk, 100)
    ContactSync.objects.filter(pk=sync_id).update(claimed_at=timezone.now() - timedelta(seconds=settings.CRM_SYNC_LEASE_SECONDS + 1))
    assert queue.reap_stuck() == 1  # the first worker looked dead
    [_], new_claim = queue.claim(org.pk, 100)
    assert queue.settle_accepted("hubspot", old_claim, [(sync_id, "1", "email", "slow@example.com")]) == []
    assert queue.retry_later([sync_id], old_claim, error="late") == []
    sync = ContactSync.objects.get(pk=sync_id)
    assert sync.state == State.IN_FLIGHT and sync.claimed_at == new_claim


def test_names_are_only_sent_when_known_and_a_stop_after_the_deal_closed_reaches_the_crm(org, crm):
    lead = submit(org, email="quiet@example.com")  # no name: HubSpot's own must not be cleared
    queue.mark_changed(lead_ids=[lead.pk])
    push.push_due(org.pk)
    [record] = contacts(crm)
    assert "firstname" not in record["properties"] and "lastname" not in record["properties"]

    Lead.objects.filter(pk=lead.pk).update(status="won")
    lead.contact.__class__.objects.filter(pk=lead.contact_id).update(consent=False)
    queue.mark_changed(contact_ids=[lead.contact_id])  # message.received without an open lead
    push.push_due(org.pk)
    [record] = contacts(crm)
    assert record["properties"]["swiftex_messaging_consent"] == "false"
    assert record["properties"]["swiftex_lead_status"] == "won"


def test_switching_from_the_webhook_to_hubspot_names_records_the_hubspot_way(crm):
    org, key = org_with_key(crm_adapter="webhook", crm_webhook_url=f"{crm.url}/crm-webhook/acme", crm_webhook_secret="s",
                            hubspot_access_token="hs-token", crm_requests_per_second=50)
    org.api_key = key
    lead = submit(org, phone="+14155550130")
    queue.mark_changed(lead_ids=[lead.pk])
    push.push_due(org.pk)
    assert ContactSync.objects.get().id_property == "contact_id"

    org.crm_adapter = "hubspot"
    org.save()
    queue.mark_changed(lead_ids=[lead.pk])
    push.push_due(org.pk)
    [record] = contacts(crm)
    assert record["idProperty"] == "swiftex_phone" and ContactSync.objects.get().state == State.SYNCED


def test_a_contact_the_crm_refuses_fails_alone_with_its_message(org, crm):
    leads = [submit(org, email=f"p{n}@example.com") for n in range(6)]
    crm.configure(hubspot_invalid_ids=["p4@example.com"])
    queue.mark_changed(lead_ids=[lead.pk for lead in leads])

    assert push.push_due(org.pk) == 6
    synced = {c["idValue"] for c in contacts(crm)}
    assert synced == {f"p{n}@example.com" for n in range(6)} - {"p4@example.com"}
    failed = ContactSync.objects.get(state=State.FAILED)
    assert failed.contact.email == "p4@example.com" and "p4@example.com" in failed.last_error
    assert ContactSync.objects.filter(state=State.SYNCED).count() == 5
    assert LeadEvent.objects.get(kind="crm.failed").data["error"] == failed.last_error
    assert crm.hubspot()["stats"]["requests"] <= 1 + 2 * 3  # halves down to the one at fault


def test_refused_credentials_fail_the_batch_at_once(org, crm):
    crm.configure(hubspot_token="the-real-token")
    leads = [submit(org, email=f"q{n}@example.com") for n in range(4)]
    queue.mark_changed(lead_ids=[lead.pk for lead in leads])

    push.push_due(org.pk)
    assert crm.hubspot()["stats"]["requests"] == 1  # not split: no contact is at fault
    assert set(ContactSync.objects.values_list("state", flat=True)) == {State.FAILED}
    assert "401" in ContactSync.objects.first().last_error

    crm.configure(hubspot_token="hs-token")  # fixed in HubSpot; an admin retries
    assert queue.retry_now(list(ContactSync.objects.values_list("pk", flat=True))) == 4
    push.push_due(org.pk)
    assert len(contacts(crm)) == 4


def test_a_token_that_cannot_be_sent_fails_the_batch_at_once_without_showing_it(org, crm):
    Organization.objects.filter(pk=org.pk).update(hubspot_access_token="hs-token\nsecret-tail")  # pasted with a line break
    lead = submit(org, email="nl@example.com")
    queue.mark_changed(lead_ids=[lead.pk])
    push.push_due(org.pk)
    sync = ContactSync.objects.get()
    assert sync.state == State.FAILED and sync.attempts == 0  # not 12 attempts over 50 minutes
    assert "request could not be sent" in sync.last_error and "secret-tail" not in sync.last_error
    assert crm.hubspot()["stats"]["requests"] == 0


def test_a_429_pauses_the_account_for_every_worker_and_spends_no_attempt(org, crm):
    lead = submit(org, email="r@example.com")
    queue.mark_changed(lead_ids=[lead.pk])
    crm.configure(hubspot_always_429=True)

    push.push_due(org.pk)
    sync = ContactSync.objects.get()
    assert sync.state == State.PENDING and sync.attempts == 0
    assert sync.next_attempt_at > timezone.now() + timedelta(seconds=0.5)  # Retry-After: 1
    assert CrmPush.objects.get().outcome == CrmPush.Outcome.RATE_LIMITED
    bucket = push._Batch(org, push.adapters.for_org(org)).bucket
    assert not ratelimit.take(bucket, rate_per_second=50, capacity=1).allowed  # paused in Redis, for everyone

    crm.configure(hubspot_always_429=False)
    time.sleep(1.1)
    push.push_due(org.pk)
    assert ContactSync.objects.get().state == State.SYNCED and len(contacts(crm)) == 1


def test_server_errors_back_off_then_dead_letter_and_an_admin_retry_recovers(org, crm, settings, admin_client):
    settings.CRM_SYNC_MAX_ATTEMPTS = 2
    lead = submit(org, email="s@example.com")
    queue.mark_changed(lead_ids=[lead.pk])
    crm.configure(hubspot_error_rate=1.0)

    push.push_due(org.pk)
    sync = ContactSync.objects.get()
    assert sync.state == State.PENDING and sync.attempts == 1
    wait = (sync.next_attempt_at - timezone.now()).total_seconds()
    assert settings.CRM_SYNC_BACKOFF_BASE_SECONDS * 0.5 - 1 <= wait <= settings.CRM_SYNC_BACKOFF_BASE_SECONDS
    assert push.push_due(org.pk) == 0  # not before its time

    ContactSync.objects.update(next_attempt_at=timezone.now())
    push.push_due(org.pk)
    sync.refresh_from_db()
    assert sync.state == State.DEAD and "500" in sync.last_error
    assert LeadEvent.objects.filter(lead=lead, kind="crm.dead_lettered").exists()

    crm.configure(hubspot_error_rate=0.0)
    page = admin_client.get("/admin/crmsync/contactsync/?state__exact=dead").content.decode()
    assert "s@example.com" in page
    admin_client.post("/admin/crmsync/contactsync/", {"action": "retry_now", "_selected_action": [sync.pk]})
    sync.refresh_from_db()
    assert sync.state == State.PENDING and sync.attempts == 0
    push.push_due(org.pk)
    assert ContactSync.objects.get().state == State.SYNCED


@pytest.mark.parametrize("status, headers, at_least", [(423, {}, 2.0), (477, {"Retry-After": "30"}, 30.0),
                                                       (503, {"Retry-After": "1"}, 2.5)])
def test_a_locked_record_or_a_portal_migration_is_retried_later_not_refused(org, settings, status, headers, at_least):
    """HubSpot's 423 (a record locked for 2 s) and 477 (portal migration) say nothing about the
    contacts: the batch waits and is sent again, no contact fails. A Retry-After shorter than
    the backoff (CRM_SYNC_BACKOFF_BASE_SECONDS, 5 s, times 0.5-1) does not shorten it."""
    lead = submit(org, email="l@example.com")
    queue.mark_changed(lead_ids=[lead.pk])
    with responses.RequestsMock() as mock:
        mock.add(responses.POST, f"{settings.HUBSPOT_API_URL}/crm/v3/objects/contacts/batch/upsert", status=status,
                 headers=headers, json={"status": "error", "message": "try later", "category": "LOCKED"})
        push.push_due(org.pk)
    sync = ContactSync.objects.get()
    assert sync.state == State.PENDING and str(status) in sync.last_error
    assert (sync.next_attempt_at - timezone.now()).total_seconds() > at_least - 1
    assert LeadEvent.objects.filter(lead=lead, kind="crm.failed").count() == 0


def test_a_207_fails_each_contact_with_its_own_error_and_never_anothers(org, settings):
    leads = [submit(org, email=f"{name}@example.com") for name in ("ok", "bad", "odd")]
    queue.mark_changed(lead_ids=[lead.pk for lead in leads])
    syncs = {s.contact.email: s for s in ContactSync.objects.select_related("contact")}
    body = {
        "status": "COMPLETE",
        "results": [{"id": "901", "objectWriteTraceId": str(syncs["ok@example.com"].pk), "properties": {}}],
        "errors": [
            {"status": "error", "category": "VALIDATION_ERROR", "message": "Property values were not valid: bad@example.com",
             "context": {"objectWriteTraceId": [str(syncs["bad@example.com"].pk)]}},
            {"status": "error", "category": "VALIDATION_ERROR", "message": "Something about odd@example.com"},
        ],
    }
    with responses.RequestsMock() as mock:
        mock.add(responses.POST, f"{settings.HUBSPOT_API_URL}/crm/v3/objects/contacts/batch/upsert", status=207, json=body)
        push.push_due(org.pk)
    state = {s.contact.email: (s.state, s.last_error) for s in ContactSync.objects.select_related("contact")}
    assert state["ok@example.com"][0] == State.SYNCED
    assert state["bad@example.com"] == (State.FAILED, "Property values were not valid: bad@example.com")
    odd_state, odd_error = state["odd@example.com"]
    assert odd_state == State.FAILED and "@" not in odd_error and "CRM pushes" in odd_error
    log = CrmPush.objects.get()
    assert log.outcome == CrmPush.Outcome.PARTIAL and "odd@example.com" in log.detail and "bad@example.com" in log.detail


def test_the_dispatcher_counts_no_further_than_one_tick_can_push(org, monkeypatch, settings):
    monkeypatch.setattr(queue, "MAX_BATCH", 2)
    Organization.objects.filter(pk=org.pk).update(crm_requests_per_second=1)
    settings.CRM_SYNC_TICK_SECONDS = 1
    leads = [submit(org, email=f"d{n}@example.com") for n in range(5)]
    queue.mark_changed(lead_ids=[lead.pk for lead in leads])
    ContactSync.objects.update(next_attempt_at=timezone.now())
    assert queue.due_by_organization() == [(org.pk, 2)]  # one request of 2 per tick: no need to count all 5


def test_a_repeat_submission_that_adds_an_email_or_consent_reaches_the_crm(org):
    from crmsync.subscriber import handle_events
    from swiftex.models import OutboxEvent

    lead = submit(org, phone="+14155550177", consent=False)
    before = OutboxEvent.objects.count()
    submit(org, phone="+14155550177", consent=False)  # nothing new: no event
    assert OutboxEvent.objects.count() == before
    submit(org, phone="+14155550177", email="late@example.com", consent=True)
    event = OutboxEvent.objects.get(event_type="contact.updated")
    assert event.payload == {"contact_id": lead.contact_id, "lead_id": lead.pk}

    handle_events([{"id": str(event.event_id), "type": event.event_type, "data": event.payload}])
    sync = ContactSync.objects.get(contact_id=lead.contact_id)
    assert sync.state == State.PENDING


def test_organizations_without_a_crm_queue_nothing(crm):
    org, key = org_with_key()
    response = post_json(api_client(key), "/api/v1/leads", {"email": "t@example.com", "source": "web"})
    assert queue.mark_changed(lead_ids=[response.json()["id"]]) == 0
    assert not ContactSync.objects.exists()


_TAKER = """
import os, sys, time, django
django.setup()
from swiftex import ratelimit
allowed, end = 0, time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    if ratelimit.take("crm:shared-test", rate_per_second=10, capacity=1).allowed:
        allowed += 1
    time.sleep(0.005)
print(allowed)
"""


def test_the_rate_bucket_is_shared_by_worker_processes():
    seconds = 3.0
    takers = [subprocess.Popen([sys.executable, "-c", _TAKER, str(seconds)], cwd=ROOT, env=child_env(),
                               stdout=subprocess.PIPE, text=True) for _ in range(2)]
    counts = [int(p.communicate(timeout=60)[0].strip()) for p in takers]
    # 10 a second between them (plus the one token a full bucket holds), not 10 each.
    assert sum(counts) <= 10 * seconds + 1 + 2, counts
    assert min(counts) > 0 and sum(counts) >= 10 * seconds * 0.6, counts


def test_the_signed_webhook_adapter_posts_batches_a_receiver_can_verify(crm, settings):
    org, key = org_with_key(crm_adapter="webhook", crm_webhook_url=f"{crm.url}/crm-webhook/acme",
                            crm_webhook_secret="whsec-test")
    org.api_key = key
    leads = [submit(org, email=f"w{n}@example.com", name="Wu") for n in range(3)]
    queue.mark_changed(lead_ids=[lead.pk for lead in leads])

    assert push.push_due(org.pk) == 3
    [delivery] = crm.crm_webhook_deliveries()
    headers = {k.lower(): v for k, v in delivery["headers"].items()}
    timestamp = headers[TIMESTAMP_HEADER.lower()]
    assert abs(int(timestamp) - time.time()) < 60
    assert headers[SIGNATURE_HEADER.lower()] == sign("whsec-test", timestamp, delivery["body"].encode())
    assert headers[SIGNATURE_HEADER.lower()] != sign("another-secret", timestamp, delivery["body"].encode())
    body = json.loads(delivery["body"])
    assert sorted(c["email"] for c in body["contacts"]) == ["w0@example.com", "w1@example.com", "w2@example.com"]
    assert body["delivery_id"] and all(c["version"] == 1 for c in body["contacts"])  # for the receiver's dedup
    assert set(ContactSync.objects.values_list("state", flat=True)) == {State.SYNCED}
    assert "whsec-test" not in delivery["body"]


def test_metrics_show_the_queue_and_the_pushes(org, crm, client):
    lead = submit(org, email="m@example.com")
    queue.mark_changed(lead_ids=[lead.pk])
    crm.configure(hubspot_always_429=True)
    push.push_due(org.pk)
    families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").content.decode())}
    by_state = {s.labels["state"]: s.value for s in families["swiftex_crm_sync_contacts"].samples}
    assert by_state["pending"] == 1
    assert families["swiftex_crm_sync_oldest_pending_age_seconds"].samples[0].value >= 0
    pushes = {s.labels["outcome"]: s.value for s in families["swiftex_crm_pushes_last_minute"].samples}
    assert pushes["rate_limited"] == 1 and pushes["ok"] == 0
    assert families["swiftex_crm_rate_limited_last_hour"].samples[0].value == 1


def test_a_webhook_url_must_be_https_outside_this_machine():
    from django.core.exceptions import ValidationError

    from leads.models import Organization

    with pytest.raises(ValidationError, match="https"):
        Organization(name="x", crm_adapter="webhook", crm_webhook_url="http://crm.example.com/in", crm_webhook_secret="s").clean()
    Organization(name="x", crm_adapter="webhook", crm_webhook_url="https://crm.example.com/in", crm_webhook_secret="s").clean()
