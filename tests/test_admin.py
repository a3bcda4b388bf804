"""Admin: sales-ops edit an organization's settings and credentials (secrets never render),
follow-up sequences, and retry or cancel scheduled jobs."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib import admin
from django.contrib.admin.utils import flatten_fieldsets
from django.contrib.auth.models import Permission
from django.utils import timezone

from conversations.models import Conversation, FollowUpSequence, FollowUpStep, Message, ScheduledJob
from leads.admin import SECRET_FIELDS
from leads.models import Contact, Lead, Organization
from tests.factories import org_with_providers

pytestmark = pytest.mark.django_db


def change_form(org: Organization, **changes) -> dict:
    # value_from_object: a foreign key's id (the fallback owner), as a browser posts it.
    data = {field.name: field.value_from_object(org) for field in Organization._meta.fields if field.editable and field.name != "id"}
    data = {name: ("on" if value is True else "" if value is False or value is None else value) for name, value in data.items()}
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


@pytest.mark.parametrize("page", [
    "conversations/greeting", "conversations/message", "conversations/webhookdelivery", "leads/lead",
    "conversations/reply", "conversations/scheduledjob", "conversations/followupsequence", "leads/contact",
])
def test_the_lists_render(admin_client, page):
    assert admin_client.get(f"/admin/{page}/").status_code == 200


# --- Organization settings ------------------------------------------------------------------------


def test_every_organization_setting_is_in_exactly_one_fieldset():
    fields = flatten_fieldsets(admin.site._registry[Organization].fieldsets)
    editable = [f.name for f in Organization._meta.concrete_fields if f.editable and not f.auto_created]
    assert sorted(fields) == sorted([*editable, "clear_secrets"])  # sorted lists: a field listed twice shows up


def test_the_organization_page_shows_the_conversation_settings(admin_client):
    org, _ = org_with_providers()
    page = admin_client.get(f"/admin/leads/organization/{org.pk}/change/")
    assert page.status_code == 200
    html = page.content.decode()
    for name in ("reply_prompt", "reply_fallback", "reply_debounce_seconds", "reply_debounce_max_seconds", "opt_out_keywords",
                 "opt_out_confirmation", "quiet_hours_enabled", "business_hours_start", "business_hours_end", "business_days",
                 "inactivity_timeout_hours"):
        assert f'name="{name}"' in html, name
    for heading in ("Replies", "Follow-ups and business hours", "Opt-out", "Provider credentials"):
        assert heading in html


def test_business_hours_that_end_before_they_start_are_refused(admin_client):
    org, _ = org_with_providers()
    response = admin_client.post(
        f"/admin/leads/organization/{org.pk}/change/", change_form(org, business_hours_start="18:00", business_hours_end="09:00")
    )
    assert response.status_code == 200 and "Business hours must end after they start" in response.content.decode()


# --- Follow-up sequences and scheduled jobs ------------------------------------------------------


def test_the_sequence_add_page_has_the_steps_inline(admin_client):
    page = admin_client.get("/admin/conversations/followupsequence/add/")
    html = page.content.decode()
    assert page.status_code == 200 and 'name="steps-TOTAL_FORMS"' in html and 'name="steps-0-delay_minutes"' in html


def sequence_form(org: Organization, text: str) -> dict:
    return {
        "organization": org.pk, "name": "Nurture", "active": "on",
        "steps-TOTAL_FORMS": "1", "steps-INITIAL_FORMS": "0", "steps-MIN_NUM_FORMS": "0", "steps-MAX_NUM_FORMS": "1000",
        "steps-0-position": "1", "steps-0-delay_minutes": "1440", "steps-0-channel": "whatsapp", "steps-0-text": text,
        "steps-0-use_ai": "on", "steps-0-template_name": "", "steps-0-template_language": "",
    }


def test_a_sequence_is_saved_with_its_steps_and_a_bad_placeholder_is_refused(admin_client):
    org, _ = org_with_providers()
    refused = admin_client.post("/admin/conversations/followupsequence/add/", sequence_form(org, "Still there, {frist_name}?"))
    assert refused.status_code == 200 and "{frist_name}" in refused.content.decode()
    assert not FollowUpSequence.objects.exists()
    saved = admin_client.post("/admin/conversations/followupsequence/add/", sequence_form(org, "Still there, {first_name}?"))
    assert saved.status_code == 302, saved.context["adminform"].form.errors
    assert list(FollowUpStep.objects.values_list("sequence__name", "delay_minutes")) == [("Nurture", 1440)]


@pytest.fixture
def step_of():
    """`step_of(org, position)`: a step of the organization's sequence (a job is unique per lead and step)."""
    def make(org: Organization, position: int) -> FollowUpStep:
        sequence, _ = FollowUpSequence.objects.get_or_create(organization=org, name="Nurture")
        return FollowUpStep.objects.create(sequence=sequence, position=position, delay_minutes=60, text="Hi {first_name}")
    return make


def a_lead(org: Organization) -> Lead:
    contact = Contact.objects.create(organization=org, phone="+14155550123", consent=True, consent_at=timezone.now())
    return Lead.objects.create(organization=org, contact=contact, source="web", captured_at=timezone.now())


def a_job(lead: Lead, step: FollowUpStep | None, status: str, kind: str = ScheduledJob.Kind.FOLLOWUP) -> ScheduledJob:
    past = timezone.now() - timedelta(days=2)
    return ScheduledJob.objects.create(
        organization=lead.organization, lead=lead, kind=kind, step=step, due_at=past, status=status, reason="before", finished_at=past
    )


def act(client, action: str, *jobs: ScheduledJob) -> str:
    response = client.post("/admin/conversations/scheduledjob/", {"action": action, "_selected_action": [j.pk for j in jobs]}, follow=True)
    assert response.status_code == 200
    return response.content.decode()


def test_retry_now_requeues_a_failed_follow_up_but_never_one_whose_message_exists(admin_client, step_of):
    org, _ = org_with_providers()
    lead = a_lead(org)
    unsent = a_job(lead, step_of(org, 1), ScheduledJob.Status.FAILED)
    sent = a_job(lead, step_of(org, 2), ScheduledJob.Status.FAILED)
    conversation = Conversation.objects.create(organization=org, contact=lead.contact, channel="whatsapp")
    Message.objects.create(organization=org, conversation=conversation, lead=lead, scheduled_job=sent,
                           direction="outbound", channel="whatsapp", body="Hi", status=Message.Status.SENDING)
    done = a_job(lead, step_of(org, 3), ScheduledJob.Status.DONE)

    page = act(admin_client, "retry_now", unsent, sent, done)

    unsent.refresh_from_db()
    assert (unsent.status, unsent.reason, unsent.finished_at) == (ScheduledJob.Status.PENDING, "retried by admin", None)
    assert timezone.now() - unsent.due_at < timedelta(seconds=30)
    for job in (sent, done):
        before = job.status
        job.refresh_from_db()
        assert (job.status, job.reason) == (before, "before")
    assert f"a message was already created for job(s) {sent.pk}" in page
    assert "1 job(s) skipped" in page


def test_cancel_cancels_a_pending_job_and_leaves_a_running_one_to_its_worker(admin_client, step_of):
    org, _ = org_with_providers()
    lead = a_lead(org)
    pending = a_job(lead, step_of(org, 1), ScheduledJob.Status.PENDING)
    timeout = a_job(lead, None, ScheduledJob.Status.ENQUEUED, kind=ScheduledJob.Kind.INACTIVITY)
    running = a_job(lead, step_of(org, 2), ScheduledJob.Status.RUNNING)

    page = act(admin_client, "cancel", pending, timeout, running)

    for job in (pending, timeout):
        job.refresh_from_db()
        assert (job.status, job.reason) == (ScheduledJob.Status.CANCELLED, "cancelled by admin")
        assert timezone.now() - job.finished_at < timedelta(seconds=30)
    running.refresh_from_db()
    assert running.status == ScheduledJob.Status.RUNNING
    assert "2 job(s) cancelled." in page and "1 job(s) skipped" in page


def test_a_view_only_user_gets_neither_action(client, django_user_model):
    viewer = django_user_model.objects.create_user("viewer", password="x", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_scheduledjob"))
    client.force_login(viewer)
    html = client.get("/admin/conversations/scheduledjob/").content.decode()
    assert 'value="retry_now"' not in html and 'value="cancel"' not in html
