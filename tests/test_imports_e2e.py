"""A CSV import through real processes (web, relay, first-touch and bulk lanes, scheduler, RabbitMQ,
PostgreSQL, the fake providers) while live leads keep arriving: every live lead is greeted once,
no imported lead is greeted unless the import says so, and a list that says so is greeted once each.
How fast live leads are greeted during an import is measured in bench/imports.py, not asserted here."""

from __future__ import annotations

import pytest
import requests

from conversations.models import Message
from imports import services
from imports.models import LeadImport, RowError
from leads.models import Lead, LeadEvent
from tests.factories import org_with_providers
from tests.support import Stack, wait_until
from tests.test_imports import csv_bytes, list_with_bad_rows

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

LIVE = 30


@pytest.fixture
def stack(django_db_setup, django_db_blocker, fake_providers, fakes, tmp_path_factory):
    env = {"IMPORT_ROWS_PER_SECOND": "1000", "IMPORT_CHUNK_ROWS": "100"}
    running = Stack(fake_providers, tmp_path_factory.mktemp("imports"), lanes=("conversations", "bulk"), env=env)
    fakes.configure(webhook_url=running.url)
    yield running
    running.stop()


def greeted(phone: str) -> int:
    return Message.objects.filter(lead__contact__phone=phone, direction="outbound", accepted_at__isnull=False).count()


def test_live_leads_are_greeted_once_each_while_a_list_imports_on_the_bulk_lane(stack, fakes):
    org, key = org_with_providers()
    raw, bad_rows = list_with_bad_rows(2_000)
    lead_import = services.upload(organization=org, file_name="expo.csv", raw=raw, source="expo")
    services.start(lead_import, LeadImport.Status.IMPORTING)

    wait_until(lambda: LeadImport.objects.get(pk=lead_import.pk).cursor > 0, timeout=60, what="the import under way")
    live = [f"+1212555{n:04d}" for n in range(LIVE)]
    for phone in live:
        response = requests.post(f"{stack.url}/api/v1/leads", json={"phone": phone, "source": "web", "consent": True},
                                 headers={"Authorization": f"Bearer {key}"}, timeout=10)
        assert response.status_code == 201, response.text
    still_importing = LeadImport.objects.get(pk=lead_import.pk).status == LeadImport.Status.IMPORTING

    wait_until(lambda: all(greeted(phone) for phone in live), timeout=60, what="every live lead greeted")
    wait_until(lambda: LeadImport.objects.get(pk=lead_import.pk).status == "done", timeout=120, interval=0.5, what="the import done")

    done = LeadImport.objects.get(pk=lead_import.pk)
    assert still_importing, "the live leads should have arrived during the import"
    assert (done.created_leads, done.invalid_rows) == (2_000 - len(bad_rows), len(bad_rows))
    assert set(RowError.objects.filter(lead_import=done).values_list("line", flat=True)) == bad_rows
    assert [greeted(phone) for phone in live] == [1] * LIVE
    assert not Message.objects.filter(lead__imported=True).exists()  # half the list opted in; none asked to be greeted
    assert Lead.objects.filter(organization=org, imported=True).count() == done.created_leads


def test_a_list_the_admin_chose_to_greet_is_greeted_once_each_on_the_bulk_lane(stack, fakes):
    org, _ = org_with_providers()
    phones = [f"+1646555{n:04d}" for n in range(12)]
    raw = csv_bytes([[f"P{n}", phone, "", "", "yes", ""] for n, phone in enumerate(phones)])
    lead_import = services.upload(organization=org, file_name="vip.csv", raw=raw, greet=True)
    services.start(lead_import, LeadImport.Status.IMPORTING)

    wait_until(lambda: all(greeted(phone) for phone in phones), timeout=60, interval=0.5, what="every listed lead greeted")
    assert [greeted(phone) for phone in phones] == [1] * len(phones)
    sent_to = [request["body"]["to"].lstrip("+") for request in fakes.requests("whatsapp") if request["status"] == 200]
    assert sorted(sent_to) == sorted(phone.lstrip("+") for phone in phones)
    started = LeadEvent.objects.filter(lead__organization=org, kind="first_touch.started").values_list("lead_id", flat=True)
    assert sorted(started) == sorted(Lead.objects.filter(organization=org).values_list("pk", flat=True))  # each lead's own
