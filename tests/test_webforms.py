"""Web forms: the hosted page, its validation, spam and flood protection, UTM capture, consent,
and what admin hands out (Django test client against the real PostgreSQL and Redis)."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.test import Client
from django.utils.html import escapejs
from prometheus_client import REGISTRY

from leads.models import Contact, Lead, Submission
from tests.factories import PROVIDER_CREDENTIALS, make_rep, org_with_key, org_with_providers
from webforms.models import WebForm
from swiftex.client_address import client_ip

pytestmark = pytest.mark.django_db

VISITOR = "203.0.113.7"


@pytest.fixture
def form():
    org, _ = org_with_providers(name="Casa Verde Realty", phone_region="GB")
    return WebForm.objects.create(organization=org, title="Book a viewing", intro="Tell us when suits you.", campaign="")


def visitor(ip: str = VISITOR) -> Client:
    return Client(REMOTE_ADDR=ip)


def post(form, client: Client | None = None, **fields):
    data = {"name": "Ana Lima", "phone": "07400 123123", "email": "", "message": "Saturday morning?", **fields}
    return (client or visitor()).post(form.path, {k: v for k, v in data.items() if v is not None})


def rejected(reason: str) -> float:
    return REGISTRY.get_sample_value("swiftex_ingest_rejected_total", {"reason": reason}) or 0.0


def test_the_hosted_page_renders_an_accessible_form_that_works_without_javascript(form):
    response = visitor().get(form.path)
    assert response.status_code == 200
    html = response.content.decode()
    assert "Book a viewing" in html and "Tell us when suits you." in html and "Casa Verde Realty" in html
    assert f'<form method="post" action="{form.path}">' in html
    for name in ("name", "phone", "email", "message"):
        assert f'<label for="id_{name}">' in html and f'id="id_{name}" name="{name}"' in html
    assert re.search(r'id="id_name" name="name"[^>]*\brequired\b', html)
    assert re.search(r'id="id_phone" name="phone" type="tel"[^>]*\brequired\b', html)
    assert not re.search(r'id="id_email" name="email"[^>]*\brequired\b', html)
    assert "csrfmiddlewaretoken" not in html  # posted cross-site from embeds: no cookie-bound token
    assert response["Cache-Control"] == "no-store"


def test_the_page_may_be_framed_only_by_the_sites_the_form_lists(form):
    response = visitor().get(form.path)
    assert "X-Frame-Options" not in response
    assert response["Content-Security-Policy"].endswith("frame-ancestors *")
    form.allowed_origins = "https://www.casaverde.example\nhttps://promo.casaverde.example"
    form.save()
    policy = visitor().get(form.path)["Content-Security-Policy"]
    assert policy.endswith("frame-ancestors 'self' https://www.casaverde.example https://promo.casaverde.example")
    assert "default-src 'none'" in policy and "form-action 'self'" in policy
    assert Client().get("/admin/login/")["X-Frame-Options"] == "DENY"  # everything else stays unframeable


def test_a_valid_submission_stores_a_lead_in_the_organizations_region_and_redirects_to_the_thank_you_page(form):
    response = post(form, consent="yes")
    assert response.status_code == 303
    assert response["Location"] == f"{form.path}/thanks"
    lead = Lead.objects.get(organization=form.organization)
    assert (lead.contact.phone, lead.contact.name, lead.source) == ("+447400123123", "Ana Lima", "webform")
    assert Submission.objects.get(lead=lead).message == "Saturday morning?"
    thanks = visitor().get(response["Location"])
    assert thanks.status_code == 200 and "on its way" in thanks.content.decode()


def test_invalid_answers_come_back_with_each_error_on_its_field_and_the_values_kept(form):
    before = rejected("invalid")
    response = post(form, name="", phone="12", message="Keep me")
    assert response.status_code == 400
    html = response.content.decode()
    assert "<title>Error: Book a viewing" in html
    assert 'class="error-summary" role="alert"' in html
    assert '<a href="#id_name">Your name: Enter your name.</a>' in html
    assert re.search(r'<a href="#id_phone">Mobile phone: &#x27;12&#x27; is not a valid phone number', html)
    assert re.search(r'id="id_phone" name="phone" type="tel" value="12"[^>]*aria-invalid="true" aria-describedby="id_phone-hint id_phone-error"', html)
    assert 'id="id_phone-error"' in html
    assert ">Keep me</textarea>" in html
    assert 'id="id_email" name="email" type="email" value="" autocomplete="email" maxlength="254">' in html  # valid: no aria-invalid
    assert not Lead.objects.exists()
    assert rejected("invalid") == before + 1


def test_a_form_asking_for_phone_or_email_says_so_when_both_are_missing(form):
    form.phone_field = "optional"
    form.save()
    response = post(form, phone="", email="")
    assert response.status_code == 400
    assert "Either phone or email is required." in response.content.decode()


def test_consent_is_false_unless_the_visitor_ticks_the_box(form):
    html = visitor().get(form.path).content.decode()
    checkbox = re.search(r'<input id="id_consent"[^>]*>', html).group(0)
    assert 'type="checkbox"' in checkbox and "checked" not in checkbox  # never pre-ticked
    assert '<label for="id_consent">Yes, you may contact me' in html

    post(form, phone="07400 123001")
    post(form, phone="07400 123002", consent="yes")
    assert Contact.objects.get(phone="+447400123001").consent is False
    ticked = Contact.objects.get(phone="+447400123002")
    assert ticked.consent is True and ticked.consent_at is not None


def test_utm_tags_and_the_page_address_are_carried_through_hidden_inputs_into_the_leads_metadata(form):
    query = "utm_source=google&utm_medium=cpc&utm_campaign=spring-open-house&utm_term=2+bed&utm_content=ad-b"
    page = visitor().get(f"{form.path}?{query}", HTTP_REFERER="https://www.google.com/")
    html = page.content.decode()
    hidden = dict(re.findall(r'<input type="hidden" name="([a-z_]+)" value="([^"]*)">', html))
    assert hidden["utm_source"] == "google" and hidden["utm_term"] == "2 bed" and hidden["referrer"] == "https://www.google.com/"
    assert hidden["page_url"] == f"http://testserver{form.path}?{query.replace('&', '&amp;')}"

    posted = {name: value.replace("&amp;", "&") for name, value in hidden.items()}
    assert post(form, consent="yes", **posted).status_code == 303
    lead = Lead.objects.get()
    metadata = lead.routing["metadata"]
    assert {k: metadata[k] for k in ("utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content")} == {
        "utm_source": "google", "utm_medium": "cpc", "utm_campaign": "spring-open-house", "utm_term": "2 bed", "utm_content": "ad-b"}
    assert metadata["page_url"] == f"http://testserver{form.path}?{query}"
    assert metadata["referrer"] == "https://www.google.com/" and metadata["webform"] == form.slug
    assert lead.campaign == "spring-open-house"  # the form names none, so utm_campaign fills it
    assert Submission.objects.get().payload["metadata"] == metadata  # the raw payload keeps it too


def test_the_forms_own_campaign_wins_over_utm_campaign(form):
    form.campaign = "viewings-2026"
    form.save()
    post(form, utm_campaign="spring-open-house")
    lead = Lead.objects.get()
    assert lead.campaign == "viewings-2026" and lead.routing["metadata"]["utm_campaign"] == "spring-open-house"


def test_tracking_values_that_are_not_web_addresses_are_dropped(form):
    post(form, page_url="javascript:alert(1)", referrer="ftp://example.com/", utm_source="x" * 500)
    metadata = Lead.objects.get().routing["metadata"]
    assert "page_url" not in metadata and "referrer" not in metadata and metadata["utm_source"] == "x" * 200


def test_nul_characters_in_tracking_values_are_dropped_not_a_server_error(form):
    assert post(form, utm_source="a\x00b", page_url="https://example.com/\x00", consent="yes").status_code == 303
    metadata = Lead.objects.get().routing["metadata"]
    assert metadata["utm_source"] == "a b" and "page_url" not in metadata


def test_a_nul_character_in_an_answer_is_an_error_on_that_field(form):
    page = post(form, name="Ana\x00")
    assert page.status_code == 400 and "Null characters are not allowed." in page.content.decode()
    assert Lead.objects.count() == 0


def test_a_filled_honeypot_stores_nothing_and_sees_the_ordinary_thank_you(form):
    html = visitor().get(form.path).content.decode()
    trap = re.search(r'<div class="hp" aria-hidden="true">.*?</div>', html, re.S).group(0)
    assert 'tabindex="-1"' in trap and 'autocomplete="off"' in trap
    before = rejected("honeypot")

    response = post(form, company_website="https://cheap-pills.example")
    assert response.status_code == 303 and response["Location"] == f"{form.path}/thanks"
    assert not Lead.objects.exists() and not Contact.objects.exists() and not Submission.objects.exists()
    assert rejected("honeypot") == before + 1
    assert 'reason="honeypot"' in Client().get("/metrics").content.decode()


def test_too_many_submissions_from_one_ip_get_429_with_retry_after_and_store_nothing(form, settings):
    settings.WEBFORM_IP_RATE_PER_MINUTE = 1
    settings.WEBFORM_IP_BURST = 3
    for i in range(3):
        assert post(form, phone=f"07400 12310{i}").status_code == 303
    before = rejected("ip_rate_limited")

    response = post(form, phone="07400 123109", message="one too many")
    assert response.status_code == 429
    assert int(response["Retry-After"]) >= 1
    html = response.content.decode()
    assert "Too many submissions right now" in html and ">one too many</textarea>" in html  # nothing typed is lost
    assert Lead.objects.count() == 3 and not Contact.objects.filter(phone="+447400123109").exists()
    assert rejected("ip_rate_limited") == before + 1
    assert post(form, visitor("198.51.100.20"), phone="07400 123110").status_code == 303  # another visitor is not held back


def test_x_forwarded_for_is_read_only_behind_a_declared_proxy(rf, settings):
    request = rf.post("/f/x", REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR="6.6.6.6, 203.0.113.7")
    assert client_ip(request) == "10.0.0.2"  # anyone can write that header
    settings.WEBFORM_TRUSTED_PROXIES = 1
    assert client_ip(request) == "203.0.113.7"  # what our proxy appended, not what the client claimed
    settings.WEBFORM_TRUSTED_PROXIES = 2
    assert client_ip(request) == "6.6.6.6"


def test_the_organizations_ingest_limit_applies_to_its_forms(form):
    form.organization.ingest_rate_per_minute = 1
    form.organization.save()
    from leads.throttle import take_ingest_tokens

    while take_ingest_tokens(form.organization).allowed:  # spend the organization's burst through the API's bucket
        pass
    response = post(form)
    assert response.status_code == 429 and "Retry-After" in response
    assert not Lead.objects.exists()


@pytest.mark.parametrize("path", ["/f/{slug}", "/f/{slug}/thanks", "/f/{slug}/embed.js"])
def test_an_unknown_or_inactive_form_is_not_found(form, path):
    assert visitor().get(path.format(slug="no-such-form")).status_code == 404
    form.is_active = False
    form.save()
    response = visitor().get(path.format(slug=form.slug))
    assert response.status_code == 404
    assert post(form).status_code == 404 and not Lead.objects.exists()


def test_the_not_found_page_is_a_page_a_visitor_understands(form):
    response = visitor().get("/f/no-such-form")
    assert "This form is not available" in response.content.decode()


def test_no_secret_of_the_organization_is_ever_rendered(form):
    _, raw_key = org_with_key()
    pages = [visitor().get(form.path), post(form, phone="12"), visitor().get(f"{form.path}/thanks"), visitor().get(f"{form.path}/embed.js")]
    body = "".join(page.content.decode() for page in pages)
    for name, secret in PROVIDER_CREDENTIALS.items():
        if name != "twilio_from_number":  # the sending number is public by nature
            assert secret not in body, name
    assert raw_key not in body and "swx_" not in body


def test_the_embed_script_frames_the_hosted_page_with_the_host_pages_utm_tags(form):
    response = visitor().get(f"{form.path}/embed.js")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/javascript")
    script = response.content.decode()
    assert f'new URL("{escapejs(form.path)}", origin)' in script
    assert '"utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content"' in script
    assert "event.origin !== origin || event.source !== frame.contentWindow" in script  # resize messages are checked
    assert 'getAttribute("data-target")' in script


def test_an_embedded_page_keeps_its_embedded_look_through_errors_and_thanks(form):
    assert 'class="embedded"' in visitor().get(f"{form.path}?embed=1").content.decode()
    assert 'class="embedded"' in post(form, phone="12", embed="1").content.decode()
    response = post(form, embed="1")
    assert response["Location"] == f"{form.path}/thanks?embed=1"
    thanks = visitor().get(response["Location"])
    assert 'class="embedded"' in thanks.content.decode() and thanks["Content-Security-Policy"].endswith("frame-ancestors *")


def test_a_form_must_show_a_contact_field_and_list_only_real_origins():
    org, _ = org_with_key()
    with pytest.raises(ValidationError, match="Show phone or e-mail"):
        WebForm(organization=org, title="x", phone_field="hidden", email_field="hidden").full_clean()
    with pytest.raises(ValidationError, match="only contact field shown, so it must be required"):
        WebForm(organization=org, title="x", phone_field="optional", email_field="hidden").full_clean()
    with pytest.raises(ValidationError, match="is not an origin"):
        WebForm(organization=org, title="x", allowed_origins="https://ok.example\nwww.example.com/page").full_clean()
    with pytest.raises(ValidationError, match="lower case"):
        WebForm(organization=org, title="x", source="Webform").full_clean()
    WebForm(organization=org, title="x", allowed_origins="https://ok.example, https://*.example.org:8443").full_clean()


def test_slugs_are_random_and_unique():
    org, _ = org_with_key()
    slugs = {WebForm.objects.create(organization=org, title=f"Form {i}").slug for i in range(20)}
    assert len(slugs) == 20 and all(len(slug) == 16 for slug in slugs)


def test_the_admin_change_page_hands_out_the_hosted_address_and_the_snippet(form, settings):
    settings.PUBLIC_BASE_URL = "https://forms.swiftex.example"
    admin = Client()
    admin.force_login(User.objects.create_superuser("root", "root@example.com", "pw"))
    html = admin.get(f"/admin/webforms/webform/{form.pk}/change/").content.decode()
    assert f"https://forms.swiftex.example/f/{form.slug}</textarea>" in html
    assert f"&lt;script src=&quot;https://forms.swiftex.example/f/{form.slug}/embed.js&quot; async&gt;&lt;/script&gt;" in html


def test_an_organizations_admin_sees_only_its_own_forms(form):
    other_org, _ = org_with_key(name="Other Realty")
    theirs = WebForm.objects.create(organization=other_org, title="Their form")
    manager = make_rep(form.organization, "olivia", role="manager")
    manager.user.is_staff = True
    manager.user.save()
    from django.contrib.auth.models import Permission

    manager.user.user_permissions.add(*Permission.objects.filter(content_type__app_label="webforms"))
    admin = Client()
    admin.force_login(manager.user)
    listing = admin.get("/admin/webforms/webform/").content.decode()
    assert "Book a viewing" in listing and "Their form" not in listing
    assert admin.get(f"/admin/webforms/webform/{theirs.pk}/change/").status_code == 404


def test_a_form_is_created_in_admin_with_sensible_defaults():
    org, _ = org_with_key(name="Casa Verde Realty")
    admin = Client()
    admin.force_login(User.objects.create_superuser("root", "root@example.com", "pw"))
    assert admin.get("/admin/webforms/webform/add/").status_code == 200
    response = admin.post("/admin/webforms/webform/add/", {
        "organization": org.pk, "title": "Get a quote", "intro": "", "is_active": "on", "name_field": "required",
        "phone_field": "hidden", "email_field": "optional", "message_field": "optional",
        "consent_label": "Yes, WhatsApp me", "source": "webform", "campaign": "", "thank_you_text": "On its way.", "allowed_origins": "",
    })
    assert response.status_code == 200 and "only contact field shown, so it must be required" in response.content.decode()
    response = admin.post("/admin/webforms/webform/add/", {
        "organization": org.pk, "title": "Get a quote", "intro": "", "is_active": "on", "name_field": "required",
        "phone_field": "required", "email_field": "optional", "message_field": "optional",
        "consent_label": "Yes, WhatsApp me", "source": "webform", "campaign": "", "thank_you_text": "On its way.", "allowed_origins": "",
    })
    assert response.status_code == 302
    form = WebForm.objects.get(title="Get a quote")
    assert form.organization == org and form.is_active and len(form.slug) == 16
