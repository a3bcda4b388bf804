"""Admin: sales-ops edit an organization's greeting and credentials; secrets never render."""

from __future__ import annotations

import pytest

from leads.admin import SECRET_FIELDS
from leads.models import Organization
from tests.factories import org_with_providers

pytestmark = pytest.mark.django_db


def change_form(org: Organization, **changes) -> dict:
    data = {field.name: getattr(org, field.name) for field in Organization._meta.fields if field.editable and field.name != "id"}
    data = {name: ("on" if value is True else "" if value is False else value) for name, value in data.items()}
    for name in SECRET_FIELDS:
        data[name] = ""  # what the browser sends back: secrets are never rendered into the form
    return {**{k: v for k, v in data.items() if v != ""}, **changes}


def test_the_organization_page_never_shows_a_credential(admin_client):
    org, _ = org_with_providers(whatsapp_access_token="EAAG-super-secret-token")
    page = admin_client.get(f"/admin/leads/organization/{org.pk}/change/").content.decode()
    assert "EAAG-super-secret-token" not in page and "test-twilio-auth-token" not in page
    assert "Set — leave empty to keep it." in page


def test_saving_without_retyping_secrets_keeps_them_and_a_new_value_replaces_one(admin_client):
    org, _ = org_with_providers()
    response = admin_client.post(
        f"/admin/leads/organization/{org.pk}/change/", change_form(org, ai_model="gpt-4.1-mini", twilio_auth_token="rotated")
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    org.refresh_from_db()
    assert (org.ai_model, org.whatsapp_access_token, org.twilio_auth_token) == ("gpt-4.1-mini", "wa-token", "rotated")


def test_a_bad_fallback_template_is_refused_with_the_placeholder_named(admin_client):
    org, _ = org_with_providers()
    response = admin_client.post(f"/admin/leads/organization/{org.pk}/change/", change_form(org, greeting_fallback="Hi {frist_name}"))
    assert response.status_code == 200 and "{frist_name}" in response.content.decode()
    org.refresh_from_db()
    assert "{frist_name}" not in org.greeting_fallback


@pytest.mark.parametrize("page", ["conversations/greeting", "conversations/message", "conversations/webhookdelivery", "leads/lead"])
def test_the_first_touch_lists_render(admin_client, page):
    assert admin_client.get(f"/admin/{page}/").status_code == 200
