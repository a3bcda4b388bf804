"""Admin: sales-ops edit an organization's settings and credentials (secrets never render),
follow-up sequences, scheduled jobs, reps with their logins, API keys shown once, and the leads
list's actions (reassign, retry the CRM sync, resend a greeting only when it cannot double one).
Tenancy (one organization's admin against another's ids) is in tests/test_admin_tenancy.py."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
import responses
from django.conf import settings
from django.contrib import admin
from django.contrib.admin.utils import flatten_fieldsets
from django.contrib.auth.models import Permission, User
from django.utils import timezone

from conversations import services as conversation_services
from conversations import tasks as conversation_tasks
from conversations.models import Conversation, FollowUpSequence, FollowUpStep, Greeting, Message, ScheduledJob
from crmsync.models import ContactSync
from leads.admin import SECRET_FIELDS
from leads.models import ApiKey, Lead, LeadEvent, Organization
from routing.models import Assignment, Notification, Rep
from swiftex.models import OutboxEvent
from tests.factories import PROVIDER_CREDENTIALS, make_rep, org_with_providers
from tests.support import api_client, post_json
from tests.test_admin_tenancy import a_lead

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


def test_a_view_only_staff_user_sees_whether_a_credential_is_set_never_its_value(client):
    from django.contrib.auth.models import Permission

    from metaleads.models import MetaPage

    org, _ = org_with_providers(whatsapp_access_token="EAAG-super-secret-token", crm_webhook_secret="")
    page_row = MetaPage.objects.create(organization=org, page_id="123", name="Acme", access_token="EAAP-page-token")
    viewer = make_rep(org, "viewer", role=Rep.Role.MANAGER).user
    viewer.is_staff = True
    viewer.save()
    viewer.user_permissions.add(*Permission.objects.filter(codename__in=["view_organization", "view_metapage"]))
    client.force_login(viewer)

    page = client.get(f"/admin/leads/organization/{org.pk}/change/").content.decode()
    assert "Whatsapp access token" in page and "EAAG-super-secret-token" not in page and "test-twilio-auth-token" not in page
    assert ">set<" in page and ">not set<" in page  # the token is set, the CRM webhook secret is not
    assert "Remove credentials" not in page
    page = client.get(f"/admin/metaleads/metapage/{page_row.pk}/change/").content.decode()
    assert "Access token" in page and "EAAP-page-token" not in page


def test_an_organization_added_in_admin_starts_from_the_environments_defaults(admin_client, settings):
    settings.LEADS_DEFAULT_PHONE_REGION, settings.WHATSAPP_PHONE_NUMBER_ID = "BR", "100000000000009"
    settings.WHATSAPP_ACCESS_TOKEN, settings.TWILIO_AUTH_TOKEN, settings.HUBSPOT_ACCESS_TOKEN = "env-wa-token", "", "env-hs-token"
    page = admin_client.get("/admin/leads/organization/add/").content.decode()
    assert 'name="phone_region" value="BR"' in page and 'value="100000000000009"' in page
    assert "env-wa-token" not in page and "Leave empty to use the environment's WHATSAPP_ACCESS_TOKEN." in page

    form = {k: v for k, v in change_form(Organization(name="Newco", phone_region="BR", whatsapp_phone_number_id="100000000000009",
                                                      crm_adapter="hubspot")).items()
            if k not in ("created_at",)}
    response = admin_client.post("/admin/leads/organization/add/", {**form, "twilio_auth_token": "typed-token"})
    assert response.status_code == 302, response.content.decode()[:3000]
    org = Organization.objects.get(name="Newco")
    assert (org.phone_region, org.whatsapp_access_token, org.twilio_auth_token) == ("BR", "env-wa-token", "typed-token")
    assert (org.crm_adapter, org.hubspot_access_token) == ("hubspot", "env-hs-token")  # sync on, with the environment's token


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
    "leads/apikey", "leads/submission", "leads/organization", "crmsync/contactsync", "crmsync/crmpush", "routing/rep",
    "routing/team", "routing/routingrule", "routing/assignment", "routing/notification", "routing/rep/add", "routing/team/add",
    "routing/routingrule/add", "leads/apikey/add",
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


# --- Reps, API keys, notifications ---------------------------------------------------------------


def rep_form(org: Organization, **changes) -> dict:
    return {
        "username": "ana", "first_name": "Ana", "last_name": "Lima", "email": "ana@example.com",
        "password1": "correct-horse-battery", "password2": "correct-horse-battery", "organization": org.pk, "role": "rep",
        "max_open_leads": "5", "timezone": "", "working_hours_start": "09:00", "working_hours_end": "17:00",
        "working_days": "1,2,3,4,5", "out_of_office_until_0": "", "out_of_office_until_1": "", "email_notifications": "on",
        **changes,
    }


def test_creating_a_rep_creates_their_login_and_the_password_is_never_shown_back(admin_client):
    org, _ = org_with_providers()
    response = admin_client.post("/admin/routing/rep/add/", rep_form(org))
    assert response.status_code == 302, response.context["adminform"].form.errors
    rep = Rep.objects.select_related("user").get()
    assert (rep.organization, rep.max_open_leads, rep.email_notifications) == (org, 5, True)
    assert rep.user.check_password("correct-horse-battery") and not rep.user.is_staff
    assert (rep.user.get_full_name(), rep.user.email) == ("Ana Lima", "ana@example.com")
    page = admin_client.get(f"/admin/routing/rep/{rep.pk}/change/").content.decode()
    assert "correct-horse-battery" not in page and rep.user.password not in page
    listing = admin_client.get("/admin/routing/rep/").content.decode()
    assert "Ana Lima" in listing and "open leads" in listing


def test_a_taken_username_or_differing_passwords_are_refused_by_name(admin_client):
    org, _ = org_with_providers()
    User.objects.create_user("ana")
    response = admin_client.post("/admin/routing/rep/add/", rep_form(org, password2="other"))
    errors = response.context["adminform"].form.errors
    assert errors["username"] == ["The username 'ana' is taken; choose another."] and errors["password2"] == ["The two passwords differ."]
    assert not Rep.objects.exists()


def test_a_reps_new_password_is_set_and_an_empty_one_keeps_the_old(admin_client):
    org, _ = org_with_providers()
    rep = make_rep(org, "ana")
    form = {"first_name": "Ana", "last_name": "", "email": "", "login_enabled": "on", "new_password": "", "role": "rep",
            "max_open_leads": "0", "working_days": "1,2,3", "out_of_office_until_0": "", "out_of_office_until_1": ""}
    assert admin_client.post(f"/admin/routing/rep/{rep.pk}/change/", form).status_code == 302
    rep.user.refresh_from_db()
    assert rep.user.check_password("pw")
    assert admin_client.post(f"/admin/routing/rep/{rep.pk}/change/", {**form, "new_password": "a-new-long-password"}).status_code == 302
    rep.user.refresh_from_db()
    assert rep.user.check_password("a-new-long-password")


def test_an_api_key_is_shown_once_works_and_stops_working_when_revoked(admin_client):
    org, _ = org_with_providers()
    response = admin_client.post("/admin/leads/apikey/add/", {"organization": org.pk, "name": "website"})
    assert response.status_code == 200 and "no-store" in response["Cache-Control"]
    raw_key = response.context["raw_key"]
    api_key = ApiKey.objects.get(name="website")
    assert raw_key.startswith("swx_") and raw_key in response.content.decode()
    assert api_key.key_hash == ApiKey.hash(raw_key) and raw_key not in str(ApiKey.objects.filter(pk=api_key.pk).values().get())
    assert raw_key not in admin_client.get(f"/admin/leads/apikey/{api_key.pk}/change/").content.decode()
    assert raw_key not in admin_client.get("/admin/leads/apikey/").content.decode()

    lead = {"name": "Ana", "phone": "+14155550199", "source": "web"}
    assert post_json(api_client(raw_key), "/api/v1/leads", lead).status_code == 201  # and now cached by the web process
    page = admin_client.post("/admin/leads/apikey/", {"action": "revoke", "_selected_action": [api_key.pk]}, follow=True)
    assert "1 key(s) revoked" in page.content.decode()
    api_key.refresh_from_db()
    assert api_key.revoked_at is not None
    assert post_json(api_client(raw_key), "/api/v1/leads", {**lead, "phone": "+14155550198"}).status_code == 401


def test_a_partner_key_is_issued_with_its_source_pinned_for_good(admin_client):
    org, _ = org_with_providers()
    refused = admin_client.post("/admin/leads/apikey/add/", {"organization": org.pk, "name": "Acme", "source": "Acme Leads!"})
    assert "lower-case letters, digits" in refused.content.decode() and not ApiKey.objects.filter(name="Acme").exists()

    issued = admin_client.post("/admin/leads/apikey/add/", {"organization": org.pk, "name": "Acme", "source": "acme"})
    assert "recorded with source" in issued.content.decode()
    api_key = ApiKey.objects.get(name="Acme")
    admin_client.post(f"/admin/leads/apikey/{api_key.pk}/change/", {"organization": org.pk, "name": "Acme", "source": "other"})
    api_key.refresh_from_db()
    assert api_key.source == "acme"  # read-only once issued
    response = post_json(api_client(issued.context["raw_key"]), "/api/v1/leads", {"phone": "+14155550199"})
    assert Lead.objects.get(pk=response.json()["id"]).source == "acme"


def test_retry_email_requeues_only_failed_notifications(admin_client):
    org, _ = org_with_providers()
    rep = make_rep(org, "ana", email="ana@example.com")
    lead = a_lead(org)
    failed, sent = (Notification.objects.create(rep=rep, lead=lead, text="New lead", created_at=timezone.now(), email=state,
                                                email_error="SMTP down" if state == "failed" else "") for state in ("failed", "sent"))
    page = admin_client.post("/admin/routing/notification/", {"action": "retry_email", "_selected_action": [failed.pk, sent.pk]},
                             follow=True).content.decode()
    failed.refresh_from_db()
    sent.refresh_from_db()
    assert (failed.email, failed.email_error, sent.email) == ("pending", "", "sent")
    assert "1 e-mail(s) queued again" in page and "1 notification(s) skipped" in page


# --- Editing a lead --------------------------------------------------------------------------------


def lead_form(client, lead: Lead) -> dict:
    """What the lead's change page would post back untouched."""
    page = client.get(f"/admin/leads/lead/{lead.pk}/change/")
    form = page.context["adminform"].form
    data = {name: form[name].value() for name in form.fields} | {"routing": "{}"}
    inline = {f"{fs.formset.prefix}-{key}": value for fs in page.context["inline_admin_formsets"]
              for key, value in fs.formset.management_form.initial.items()}
    return {**data, **inline}


def lead_change(client, lead: Lead, data: dict | None = None, **changes):
    return client.post(f"/admin/leads/lead/{lead.pk}/change/", {**(data or lead_form(client, lead)), **changes})


def test_a_status_set_in_admin_follows_the_same_rules_and_effects_as_a_reps(admin_client):
    org, _ = org_with_providers()
    lead = a_lead(org)
    assert lead_change(admin_client, lead, status="won").status_code == 302
    lead.refresh_from_db()
    assert lead.status == "won" and lead.closed_at is not None
    change = LeadEvent.objects.get(lead=lead, kind="lead.status_changed")
    assert (change.data["from"], change.data["to"], change.data["by"]) == ("new", "won", "admin (admin)")
    event = OutboxEvent.objects.filter(event_type="lead.status_changed").latest("pk")
    assert event.payload == {"lead_id": lead.pk, "status": "won", "reason": "admin"}

    other = a_lead(org)
    assert lead_change(admin_client, other, status="qualified", status_seen="").status_code == 302  # a page drawn without it
    assert Lead.objects.get(pk=other.pk).status == "qualified"

    page = lead_change(admin_client, lead, status="new")  # closed leads stay closed, as on the rep pages
    assert page.status_code == 200 and "closed leads stay closed" in page.content.decode()
    lead.refresh_from_db()
    assert lead.status == "won"


def test_editing_a_leads_campaign_in_admin_writes_only_the_campaign(admin_client):
    org, _ = org_with_providers()
    lead = a_lead(org)
    page = admin_client.get(f"/admin/leads/lead/{lead.pk}/change/")
    assert "organization" not in page.context["adminform"].form.fields  # a lead never moves to another organization
    drawn = lead_form(admin_client, lead)
    Lead.objects.filter(pk=lead.pk).update(status="contacted")  # the greeting went out while the page was open
    response = lead_change(admin_client, lead, drawn, campaign="spring")
    assert response.status_code == 302
    lead.refresh_from_db()
    assert (lead.campaign, lead.status) == ("spring", "contacted")
    assert not LeadEvent.objects.filter(lead=lead, kind="lead.status_changed").exists()


# --- Lead actions --------------------------------------------------------------------------------


def lead_action(client, action: str, *leads: Lead, **extra) -> str:
    response = client.post("/admin/leads/lead/", {"action": action, "_selected_action": [lead.pk for lead in leads], **extra},
                           follow=True)
    assert response.status_code == 200
    return response.content.decode()


def test_reassign_asks_for_a_rep_of_the_leads_organization_then_moves_the_leads(admin_client):
    org, _ = org_with_providers()
    ana, bob = make_rep(org, "ana"), make_rep(org, "bob")
    other_org_rep = make_rep(org_with_providers()[0], "eve")
    held, unassigned, already = a_lead(org, rep=ana), a_lead(org), a_lead(org, rep=bob)

    choose = lead_action(admin_client, "reassign", held, unassigned, already)
    assert "Bob" in choose and "Ana" in choose and "Eve" not in choose and 'name="apply"' in choose
    refused = lead_action(admin_client, "reassign", held, apply="yes", rep=other_org_rep.pk)
    assert "Select a valid choice" in refused
    page = lead_action(admin_client, "reassign", held, unassigned, already, apply="yes", rep=bob.pk, reason="Ana is on leave")

    assert set(Assignment.objects.values_list("lead_id", "rep_id")) == {(held.pk, bob.pk), (unassigned.pk, bob.pk), (already.pk, bob.pk)}
    moved = LeadEvent.objects.get(lead=held, kind="lead.reassigned")
    assert moved.data | {"by": "admin"} == moved.data and moved.data["reason"] == "Ana is on leave" and moved.data["from"] == "Ana"
    assert Notification.objects.filter(rep=bob).count() == 2
    assert "2 lead(s) reassigned to Bob" in page and f"already held by Bob, left as they are: {already.pk}" in page


def test_reassign_refuses_leads_of_two_organizations_at_once(admin_client):
    page = lead_action(admin_client, "reassign", a_lead(org_with_providers()[0]), a_lead(org_with_providers()[0]))
    assert "belong to 2 organizations" in page


def test_retry_crm_sync_requeues_failed_contacts_and_says_what_it_left(admin_client):
    org, _ = org_with_providers()
    dead, synced, never = a_lead(org), a_lead(org), a_lead(org)
    for lead, state in ((dead, ContactSync.State.DEAD), (synced, ContactSync.State.SYNCED)):
        ContactSync.objects.create(organization=org, contact=lead.contact, state=state, attempts=8,
                                   next_attempt_at=timezone.now() + timedelta(days=1), changed_at=timezone.now())

    page = lead_action(admin_client, "retry_crm_sync", dead, synced, never)

    retried = ContactSync.objects.get(contact=dead.contact)
    assert (retried.state, retried.attempts) == ("pending", 0) and retried.next_attempt_at <= timezone.now()
    assert ContactSync.objects.get(contact=synced.contact).state == "synced"
    assert LeadEvent.objects.get(lead=dead, kind="crm.retried").data["by"] == "admin"
    assert not LeadEvent.objects.filter(lead__in=[synced, never], kind="crm.retried").exists()
    assert f"CRM sync queued again for 1 lead(s): {dead.pk}" in page
    assert f"lead(s) {synced.pk} is not failed or dead-lettered" in page and f"lead(s) {never.pk} were never queued" in page


def test_the_leads_list_filters_by_owner_source_greeting_and_capture_date(admin_client):
    org, _ = org_with_providers()
    ana = make_rep(org, "ana")
    mine, other = a_lead(org, rep=ana), a_lead(org)
    Lead.objects.filter(pk=other.pk).update(source="facebook", captured_at=timezone.now() - timedelta(days=40))

    def shown(**query) -> set[int]:
        return {lead.pk for lead in admin_client.get("/admin/leads/lead/", query).context["cl"].result_list}

    assert shown(owner=ana.pk) == {mine.pk}
    assert shown(owner="none") == {other.pk}
    assert shown(source="facebook") == {other.pk}
    assert shown(campaign="") == {mine.pk, other.pk}
    assert shown(greeting="none") == {mine.pk, other.pk}
    today = timezone.localtime().replace(hour=0, minute=0, second=0, microsecond=0)  # as the "Past 7 days" link has it
    assert shown(**{"captured_at__gte": str(today - timedelta(days=7)), "captured_at__lt": str(today + timedelta(days=1))}) == {mine.pk}
    assert shown(q=mine.contact.phone) == {mine.pk}


# --- Resend the greeting ---------------------------------------------------------------------------

WA_URL = f"{settings.WHATSAPP_API_URL}/{PROVIDER_CREDENTIALS['whatsapp_phone_number_id']}/messages"


@pytest.fixture
def enqueued(monkeypatch, settings) -> list[dict]:
    """First-touch tasks the resend queued (their kwargs), instead of RabbitMQ."""
    settings.OPENAI_API_KEY = ""  # the organization's fallback text, no model call
    calls: list[dict] = []
    monkeypatch.setattr(conversation_tasks.first_touch, "apply_async", lambda kwargs, **options: calls.append(kwargs))
    return calls


def a_greeting(lead: Lead, state: str, *messages: dict) -> Greeting:
    greeting = Greeting.objects.create(organization=lead.organization, lead=lead, state=state, text="Hi Ana")
    for fields in messages:
        conversation, _ = Conversation.objects.get_or_create(
            organization=lead.organization, contact=lead.contact, channel=fields["channel"])
        Message.objects.create(organization=lead.organization, conversation=conversation, lead=lead, greeting=greeting,
                               direction="outbound", body="Hi Ana", **fields)
    return greeting


WA_UNDELIVERABLE = {"channel": "whatsapp", "status": "failed", "error_code": "131026", "provider_message_id": "wamid.X"}
SMS_REFUSED = {"channel": "sms", "status": "failed", "error_code": "21610"}


def test_a_failed_greeting_is_sent_again_once_through_the_first_touch(admin_client, enqueued, django_capture_on_commit_callbacks):
    org, _ = org_with_providers()
    lead = a_lead(org)
    a_greeting(lead, Greeting.State.FAILED, WA_UNDELIVERABLE, SMS_REFUSED)

    with django_capture_on_commit_callbacks(execute=True):  # the task is queued only once the reset committed
        page = lead_action(admin_client, "resend_greeting", lead)

    assert f"Greeting queued again for 1 lead(s): {lead.pk}" in page
    assert not Greeting.objects.exists() and not Message.objects.exists()
    requested = LeadEvent.objects.get(lead=lead, kind="greeting.resend_requested").data
    assert requested["by"] == "admin" and requested["previous"]["state"] == "failed"
    assert [m["error_code"] for m in requested["previous"]["messages"]] == ["131026", "21610"]
    assert [call["lead_id"] for call in enqueued] == [lead.pk]
    with responses.RequestsMock(assert_all_requests_are_fired=True) as provider:
        provider.add(responses.POST, WA_URL, status=200, json={"messages": [{"id": "wamid.NEW"}]})
        conversation_services.first_touch(**enqueued[0])
        conversation_services.first_touch(event_id=str(uuid.uuid4()), lead_id=lead.pk)  # the original event, redelivered late
        assert len(provider.calls) == 1
    greeting = Greeting.objects.get(lead=lead)
    assert greeting.state == "done" and list(greeting.messages.values_list("provider_message_id", flat=True)) == ["wamid.NEW"]


def test_a_lead_never_greeted_or_skipped_is_queued(admin_client, enqueued, django_capture_on_commit_callbacks):
    org, _ = org_with_providers()
    never, skipped = a_lead(org), a_lead(org)
    a_greeting(skipped, Greeting.State.SKIPPED)
    with django_capture_on_commit_callbacks(execute=True):
        lead_action(admin_client, "resend_greeting", never, skipped)
    assert sorted(call["lead_id"] for call in enqueued) == [never.pk, skipped.pk]
    assert not Greeting.objects.exists()


@pytest.mark.parametrize("state, messages, lead_status, consent, why", [
    ("done", [{"channel": "whatsapp", "status": "accepted"}], "contacted", True, "its greeting is accepted by a provider"),
    ("sending", [{"channel": "whatsapp", "status": "sending"}], "new", True, "its greeting is sending"),
    ("failed", [WA_UNDELIVERABLE, {"channel": "sms", "status": "queued"}], "new", True, "its sms message is queued"),
    ("failed", [{**WA_UNDELIVERABLE, "error_code": "timeout"}], "new", True, "got no answer from the provider and may have arrived"),
    ("failed", [{**WA_UNDELIVERABLE, "delivered_at": timezone.now()}], "new", True, "reported its failed whatsapp message as sent"),
    ("failed", [WA_UNDELIVERABLE], "lost", True, "the lead is lost"),
    ("failed", [WA_UNDELIVERABLE], "new", False, "has not opted in"),
])
def test_a_greeting_that_may_still_reach_the_lead_is_never_resent(admin_client, enqueued, django_capture_on_commit_callbacks,
                                                                  state, messages, lead_status, consent, why):
    org, _ = org_with_providers()
    lead = a_lead(org, status=lead_status, consent=consent)
    greeting = a_greeting(lead, state, *messages)

    with django_capture_on_commit_callbacks(execute=True):
        page = lead_action(admin_client, "resend_greeting", lead)

    assert f"Not resent, " in page and why in page and f"lead(s) {lead.pk}" in page
    assert enqueued == [] and Greeting.objects.get().pk == greeting.pk and Message.objects.count() == len(messages)
    assert not LeadEvent.objects.filter(kind="greeting.resend_requested").exists()
