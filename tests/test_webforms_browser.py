"""Web forms in a real browser: headless Chromium (Debian's, driven by Playwright) against the real stack.

With JavaScript off, a visitor opens the hosted page from a campaign link, fills it in and
reaches the thank-you page; the lead carries the campaign's UTM tags and gets its greeting at
the fake WhatsApp. With JavaScript on, another site's page embeds the form with the snippet;
the iframe appears, follows its content's height, and a submission inside it becomes a lead.
The hosted form's screenshot is saved as docs/screenshots/web-form.png.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from leads.models import Contact, Lead
from tests.factories import org_with_providers
from tests.support import ROOT, Stack, wait_until
from webforms.models import WebForm

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

SCREENSHOTS = ROOT / "docs" / "screenshots"
TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def stack(django_db_setup, django_db_blocker, fake_providers, tmp_path_factory):
    running = Stack(fake_providers, tmp_path_factory.mktemp("webforms-browser"))
    yield running
    running.stop()


@pytest.fixture
def host_site():
    """Another site (its own origin) whose page holds whatever HTML the test gives it."""
    pages: dict[str, bytes] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            body = pages.get(self.path.split("?")[0])
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.end_headers()
            self.wfile.write(body or b"not found")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], pages
    server.shutdown()
    server.server_close()


def greetings_to(fakes, phone: str) -> list[dict]:
    return [r for r in fakes.requests("whatsapp") if r["body"].get("to", "").lstrip("+") == phone.lstrip("+") and r["status"] == 200]


def test_without_javascript_a_visitor_from_a_campaign_link_sends_the_hosted_form_and_is_greeted(stack, fakes, browser):
    fakes.configure(webhook_url=stack.url)
    org, _ = org_with_providers(name="Casa Verde Realty", quiet_hours_enabled=False)
    form = WebForm.objects.create(
        organization=org, title="Book a viewing", email_field="optional",
        intro="Tell us which home you'd like to see and when suits you. We usually answer within a minute.",
    )
    context = browser.new_context(java_script_enabled=False, viewport={"width": 760, "height": 900})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)

    page.goto(f"{stack.url}{form.path}?utm_source=newsletter&utm_medium=email&utm_campaign=spring-open-house")
    page.fill("#id_name", "Marta Sousa")
    page.fill("#id_phone", "(415) 555-0188")
    page.fill("#id_email", "marta@example.com")
    page.fill("#id_message", "Is the 2-bedroom on Elm Street still available on Saturday?")
    page.check("#id_consent")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "web-form.png"), full_page=True)
    page.click("button[type=submit]")

    page.wait_for_url(f"{stack.url}{form.path}/thanks")
    assert "Our message is on its way" in page.inner_text("main")
    lead = Lead.objects.select_related("contact").get(organization=org)
    assert (lead.contact.phone, lead.contact.consent, lead.source, lead.campaign) == ("+14155550188", True, "webform", "spring-open-house")
    metadata = lead.routing["metadata"]
    assert (metadata["utm_source"], metadata["utm_medium"]) == ("newsletter", "email")
    assert metadata["page_url"].startswith(f"{stack.url}{form.path}?utm_source=newsletter")
    wait_until(lambda: greetings_to(fakes, "+14155550188"), timeout=30, what="the greeting at the fake WhatsApp")
    context.close()


def test_another_sites_page_embeds_the_form_and_a_submission_inside_the_frame_becomes_a_lead(stack, browser, host_site):
    org, _ = org_with_providers(name="Casa Verde Realty")
    form = WebForm.objects.create(organization=org, title="Ask about a home", phone_field="optional", email_field="optional")
    port, pages = host_site
    pages["/homes/elm-street"] = f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>12 Elm Street</title></head>
<body><h1>12 Elm Street</h1><p>Two bedrooms, a garden, and the park at the end of the road.</p>
<script src="{stack.url}{form.path}/embed.js" async></script>
<footer>Casa Verde Realty</footer></body></html>""".encode()
    context = browser.new_context(viewport={"width": 1000, "height": 900})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)

    landing = f"http://127.0.0.1:{port}/homes/elm-street?utm_source=facebook&utm_campaign=elm-street-launch&fbclid=xyz"
    page.goto(landing)
    page.wait_for_selector(f"iframe[data-swiftex-form='{form.slug}']")
    # The frame's page reported its height over postMessage, and the snippet applied it.
    page.wait_for_function("document.querySelector('iframe[data-swiftex-form]').style.height.endsWith('px')")
    frame = page.frame_locator("iframe[data-swiftex-form]")
    frame.locator("#id_name").fill("Jonas Berg")
    frame.locator("#id_email").fill("Jonas@Example.com")
    frame.locator("button[type=submit]").click()
    frame.locator("text=Our message is on its way").wait_for()

    lead = Lead.objects.select_related("contact").get(organization=org)
    assert (lead.contact.email, lead.contact.consent, lead.campaign) == ("jonas@example.com", False, "elm-street-launch")
    metadata = lead.routing["metadata"]
    assert metadata["utm_source"] == "facebook" and metadata["page_url"] == landing
    assert "fbclid" not in metadata  # only the utm_* tags and the page's address are taken
    assert not Contact.objects.filter(consent=True).exists()  # the box was left unticked
    context.close()
