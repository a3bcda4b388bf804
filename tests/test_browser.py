"""Browser tests: real headless Chromium (Debian's, driven by Playwright) against the real stack.

A rep logs in, sees a new lead appear without reloading, opens its timeline and
replies; the reply reaches the fake WhatsApp. An admin creates a routing rule
and a follow-up sequence in Django admin. A manager opens the speed-to-lead
dashboard over a seeded week plus live leads that went through the pipeline. Screenshots of the pages are saved
under docs/screenshots/ (linked from README), so they show the current code.
"""

from __future__ import annotations

import datetime as dt
import random
import re

import pytest
import requests

from analytics import services as analytics
from analytics.models import LeadFact
from conversations.models import FollowUpSequence, FollowUpStep, Message
from leads.models import Lead
from routing.models import RoutingRule
from tests.factories import make_lead_history, make_rep, make_team, org_with_providers
from tests.support import ROOT, Stack, contact_writes, wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

SCREENSHOTS = ROOT / "docs" / "screenshots"
TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def stack(django_db_setup, django_db_blocker, fake_providers, tmp_path_factory):
    running = Stack(fake_providers, tmp_path_factory.mktemp("browser"), lanes=("conversations", "followups", "bulk"),
                    env={"REP_PAGES_POLL_SECONDS": "1"})
    yield running
    running.stop()


def shot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / name), full_page=True)


def log_in(page, base_url: str, username: str, password: str = "pw") -> None:
    page.goto(f"{base_url}/accounts/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("button[type=submit]")


def test_a_rep_sees_a_new_lead_appear_opens_its_timeline_and_replies(stack, fakes, browser):
    fakes.configure(webhook_url=stack.url)
    org, key = org_with_providers(name="Casa Verde Realty", quiet_hours_enabled=False)
    bruno = make_rep(org, "bruno")
    RoutingRule.objects.create(organization=org, name="Website leads", sources="website", team=make_team(org, "Inside sales", [bruno]))
    page = browser.new_page(viewport={"width": 1280, "height": 860})
    page.set_default_timeout(TIMEOUT_MS)

    log_in(page, stack.url, "bruno")
    page.wait_for_url(re.compile(r"/app/leads/"))
    assert "No leads here" in page.content()

    phone = "+14155550777"
    body = {"name": "Marta Sousa", "phone": phone, "source": "website", "campaign": "spring-open-house", "consent": True,
            "message": "Is the 2-bedroom on Elm Street still available?"}
    response = requests.post(f"{stack.url}/api/v1/leads", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert response.status_code == 201, response.text
    lead_id = response.json()["id"]

    page.wait_for_selector("text=Marta Sousa")  # no reload: the list refreshes itself
    wait_until(lambda: Lead.objects.filter(pk=lead_id, first_response_at__isnull=False).exists(), timeout=30, what="the greeting")
    shot(page, "rep-leads.png")

    page.click("text=Marta Sousa")
    page.wait_for_selector("text=Greeting written")
    contact_writes(stack.url, phone, "Yes please, can I visit on Saturday?")
    page.wait_for_selector("text=can I visit on Saturday")  # the lead's message arrives live, and opens the 24-hour window
    page.reload()
    page.fill("#body", "Hi Marta, Bruno here. Saturday at 11 works, see you at Elm Street!")
    page.click("#reply button[type=submit]")
    page.wait_for_selector("text=Message queued")

    def reply_sent():
        return [r for r in fakes.requests("whatsapp") if r["status"] == 200 and "Bruno here" in str(r["body"].get("text", {}).get("body", ""))]

    wait_until(reply_sent, timeout=30, what="the rep's reply at the fake WhatsApp")
    assert Message.objects.get(sent_by=bruno).channel == "whatsapp"
    page.wait_for_selector("text=by Bruno")
    page.wait_for_selector("#live .msg.outbound >> text=Bruno here")
    shot(page, "rep-lead.png")

    mobile = browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2)
    mobile.set_default_timeout(TIMEOUT_MS)
    log_in(mobile, stack.url, "bruno")
    mobile.goto(f"{stack.url}/app/leads/{lead_id}")
    mobile.wait_for_selector("text=Conversation")
    shot(mobile, "rep-lead-mobile.png")
    mobile.close()
    page.close()


def test_an_admin_creates_a_routing_rule_and_a_follow_up_sequence(stack, browser):
    from django.contrib.auth.models import User

    org, _ = org_with_providers(name="Casa Verde Realty")
    make_team(org, "Inside sales", [make_rep(org, "carla")])
    User.objects.create_superuser("admin", "admin@example.com", "pw")
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(TIMEOUT_MS)

    page.goto(f"{stack.url}/admin/login/")
    page.fill("#id_username", "admin")
    page.fill("#id_password", "pw")
    page.click("input[type=submit]")
    page.wait_for_selector("text=Site administration")

    page.goto(f"{stack.url}/admin/routing/routingrule/add/")
    page.select_option("#id_organization", label="Casa Verde Realty")
    page.fill("#id_name", "Spain by phone")
    page.fill("#id_countries", "ES")
    page.select_option("#id_team", label="Inside sales")
    page.click("input[name=_save]")
    page.wait_for_selector("text=was added successfully")
    rule = RoutingRule.objects.get(name="Spain by phone")
    assert (rule.organization, rule.countries, rule.team.name) == (org, "ES", "Inside sales")

    page.goto(f"{stack.url}/admin/conversations/followupsequence/add/")
    page.select_option("#id_organization", label="Casa Verde Realty")
    page.fill("#id_name", "Open-house nurture")
    page.fill("#id_steps-0-delay_minutes", "1440")
    page.fill("#id_steps-0-text", "Hi {first_name}, still thinking about the open house?")
    shot(page, "admin-follow-up-sequence.png")
    page.click("input[name=_save]")
    page.wait_for_selector("text=was added successfully")
    step = FollowUpStep.objects.get(sequence__name="Open-house nurture")
    assert step.delay_minutes == 1440 and FollowUpSequence.objects.get(name="Open-house nurture").organization == org
    page.close()


def test_a_manager_reads_speed_to_lead_over_a_seeded_week_and_live_leads(stack, fakes, browser):
    fakes.configure(webhook_url=stack.url)
    org, key = org_with_providers(name="Casa Verde Realty", quiet_hours_enabled=False, first_response_target_seconds=5)
    reps = [make_rep(org, name) for name in ("bruno", "carla", "diego")]
    make_rep(org, "olivia", role="manager")
    seed_week(org, reps)

    live = []
    for i in range(3):  # through the whole pipeline: API, relay, first touch, fake WhatsApp, receipts, bulk lane
        body = {"name": f"Live lead {i}", "phone": f"+1415555090{i}", "source": "website", "campaign": "spring-open-house", "consent": True}
        response = requests.post(f"{stack.url}/api/v1/leads", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=10)
        assert response.status_code == 201, response.text
        live.append(response.json()["id"])
    wait_until(lambda: LeadFact.objects.filter(lead_id__in=live, first_response_ms__isnull=False, delivered_at__isnull=False).count() == 3,
               timeout=45, what="the live leads' facts, greeted and delivered")

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(TIMEOUT_MS)
    log_in(page, stack.url, "olivia")
    page.wait_for_url(re.compile(r"/app/leads/"))
    page.click("text=Speed to lead")
    page.wait_for_selector("svg.chart")
    assert page.locator(".kpi strong").first.inner_text() == str(LeadFact.objects.filter(organization=org).count())
    assert page.locator("table.data caption", has_text="By rep").count() == 1
    shot(page, "analytics-dashboard.png")
    page.close()


def seed_week(org, reps) -> None:
    """A week of history, as the pipeline would have left it (consent off, so the running lanes greet none of it again)."""
    rng = random.Random(7)
    today = dt.datetime.now(dt.timezone.utc).replace(minute=0, second=0, microsecond=0)
    ids = []
    for n in range(220):
        at = today - dt.timedelta(hours=rng.randrange(0, 6 * 24), minutes=rng.randrange(60))  # inside the default 7 days
        answered = rng.random() > 0.04
        response_ms = int(rng.lognormvariate(7.0, 0.35)) + (rng.choice([0, 0, 0, 2500, 40_000]) if rng.random() < 0.1 else 0)
        ids.append(make_lead_history(
            org, f"+1415666{n:04d}", at=at, name=f"Seeded {n}", consent=False,
            response_ms=response_ms if answered else None, channel="sms" if rng.random() < 0.12 else "whatsapp",
            source=rng.choice(["website", "website", "google-ads", "partner"]), campaign=rng.choice(["spring-open-house", "", "retargeting"]),
            delivered=answered and rng.random() < 0.93, read=answered and rng.random() < 0.6, replied=answered and rng.random() < 0.35,
            qualified=answered and rng.random() < 0.12, rep=rng.choice(reps),
        ).pk)
    analytics.refresh(ids)
