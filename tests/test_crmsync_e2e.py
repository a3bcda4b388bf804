"""CRM sync through real processes: web, relay, the first-touch and bulk lanes, the scheduler,
RabbitMQ, Redis, PostgreSQL and the fake HubSpot. A sync worker is killed mid-batch and
RabbitMQ restarted; every contact must reach the CRM once, with its latest status."""

from __future__ import annotations

import requests

import pytest

from crmsync.models import ContactSync
from leads.models import Lead
from tests.factories import org_with_providers
from tests.support import Stack, rabbitmq, wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

LEADS = 40


@pytest.fixture
def stack(django_db_setup, django_db_blocker, fake_providers, fakes, tmp_path_factory):
    env = {"CRM_SYNC_LEASE_SECONDS": "10", "CRM_SYNC_GATHER_SECONDS": "0.5"}
    running = Stack(fake_providers, tmp_path_factory.mktemp("crmsync"), lanes=("bulk",), env=env)
    fakes.configure(webhook_url=running.url)
    yield running
    running.stop()


def test_a_sync_worker_killed_mid_batch_and_a_broker_restart_lose_and_duplicate_nothing(stack, fakes):
    org, key = org_with_providers(crm_adapter="hubspot", hubspot_access_token="hs-token", crm_requests_per_second=5)
    fakes.configure(hubspot_latency_ms=3000)  # a slow CRM: the first batch is surely in flight when the worker dies
    for n in range(LEADS):
        body = {"name": f"Lead {n}", "phone": f"+1415555{n:04d}", "source": "web", "consent": True}
        response = requests.post(f"{stack.url}/api/v1/leads", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=10)
        assert response.status_code == 201, response.text

    wait_until(lambda: ContactSync.objects.filter(state="in_flight").exists(), timeout=30, what="a batch in flight")
    stack.other("bulk").kill()
    rabbitmq("stop_app")
    rabbitmq("start_app")
    fakes.configure(hubspot_latency_ms=50)
    stack.replace_other("bulk")

    def all_synced_with_latest_status() -> bool:
        records = {c["idValue"]: c for c in fakes.hubspot()["contacts"]}
        return (
            len(records) == LEADS
            and all(r["properties"].get("swiftex_lead_status") == "contacted" for r in records.values())
            and ContactSync.objects.filter(organization=org, state="synced").count() == LEADS
        )

    wait_until(all_synced_with_latest_status, timeout=90, interval=0.5, what="every contact in the CRM with its latest status")
    crm = fakes.hubspot()
    assert sorted(c["idValue"] for c in crm["contacts"]) == sorted(f"+1415555{n:04d}" for n in range(LEADS))  # once each
    assert crm["stats"]["max_batch"] <= 100
    assert Lead.objects.filter(organization=org, status="contacted").count() == LEADS
    for sync in ContactSync.objects.filter(organization=org):
        assert sync.synced_version == sync.version and sync.crm_id
