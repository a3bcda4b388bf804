"""Browser tests: real headless Chromium (Debian's, driven by Playwright) against the real stack.

A rep logs in, sees a new lead appear without reloading, opens its timeline and
replies; the reply reaches the fake WhatsApp. An admin creates a routing rule
and a follow-up sequence in Django admin. Screenshots of the pages are saved
under docs/screenshots/ (linked from README), so they show the current code.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
import requests

from conversations.models import FollowUpSequence, FollowUpStep, Message
from leads.models import Lead
from routing.models import RoutingRule
from tests.factories import make_rep, make_team, org_with_providers
from tests.support import ROOT, Stack, contact_writes, wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

SCREENSHOTS = ROOT / "docs" / "screenshots"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Flags for a closed network: no background calls home that the sandbox would refuse.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
]
TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def stack(django_db_setup, django_db_blocker, fake_providers, tmp_path_factory):
    running = Stack(fake_providers, tmp_path_factory.mktemp("browser"), env={"REP_PAGES_POLL_SECONDS": "1"})
    yield running
    running.stop()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "Chromium is missing: `make browser` installs Debian's chromium package"
    # Playwright's sync API keeps an event loop in this thread; the ORM calls in these
    # tests are plain synchronous code that Django would otherwise refuse to run.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield launched
        launched.close()
    os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)


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
